"""The PostgreSQL sink against a real server started by the tests (tests/pg.py):
rows equal to the Parquet output, types, schemas and quoted names,
--if-exists, --upsert-key, --publish at-end, credentials that are never shown,
and its one-line errors with their exit codes."""

from __future__ import annotations

import datetime as dt
import json
import sys

import numpy as np
import pyarrow as pa
import pytest

import batchscore
from batchscore.errors import BatchscoreError
from batchscore.sinks.postgres import mask_url
from tests import pg
from tests.helpers import Data, read_output, reference


def test_predictions_equal_the_parquet_output_row_for_row(scored, postgres, pg_db):
    folder, table, model = scored
    batchscore.score(folder, model, "out", quiet=True)
    summary = batchscore.score(folder, model, postgres.url(pg_db), table="preds", quiet=True)
    assert summary.rows_written == 13
    got = postgres.table("preds", pg_db)
    want = read_output("out").sort_by("id")
    assert got.schema.names == want.schema.names
    assert [f.type for f in got.schema] == [f.type for f in want.schema]  # int64, string, timestamp, int32, float
    assert got.to_pylist() == want.to_pylist()
    types = postgres.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'preds' ORDER BY ordinal_position",
        pg_db,
    )
    assert types == [("id", "bigint"), ("name", "text"), ("ts", "timestamp without time zone"),
                     ("count", "integer"), ("score", "real")]


def test_types_round_trip(data, models, postgres, pg_db):
    t = Data.table(6).append_column("b", pa.array([True, False, None, True, False, True]))
    t = t.append_column("d", pa.array([dt.date(2026, 1, i + 1) for i in range(6)]))
    t = t.append_column("tz", pa.array([dt.datetime(2026, 1, 1, 12, 30, i) for i in range(6)], pa.timestamp("us", "UTC")))
    t = t.append_column("blob", pa.array([bytes([i, 0, 255]) for i in range(6)]))
    t = t.append_column("small", pa.array(range(6), pa.int8()))
    data.write("in/part-0.parquet", t)
    model = models.classifier()
    batchscore.score(data.root / "in", model, postgres.url(pg_db), table="preds", quiet=True)
    types = postgres.query(
        "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
        "JOIN pg_attribute a ON a.attrelid = 'preds'::regclass AND a.attname = c.column_name "
        "WHERE table_name = 'preds' ORDER BY ordinal_position",
        pg_db,
    )
    assert [ty for _, ty in types][4:] == [
        "boolean", "date", "timestamp with time zone", "bytea", "smallint", "real[]", "bigint", "boolean",
    ]
    got = postgres.table("preds", pg_db)
    ref = reference(model, t)
    assert got.column("b").to_pylist() == t.column("b").to_pylist()
    assert got.column("d").to_pylist() == t.column("d").to_pylist()
    assert got.column("tz").to_pylist() == t.column("tz").to_pylist()
    assert got.column("blob").to_pylist() == t.column("blob").to_pylist()
    assert got.column("small").to_pylist() == list(range(6))
    probs = np.array(got.column("probabilities").to_pylist(), dtype=np.float32)
    assert np.array_equal(probs, ref["probabilities"])  # arrays of real: the very same float32 values
    assert got.column("label").to_pylist() == ref["label"].tolist()
    assert got.column("positive").to_pylist() == ref["positive"].tolist()


def test_schema_qualified_names_keep_their_case(scored, postgres, pg_db):
    folder, _, model = scored
    postgres.execute('CREATE SCHEMA "Analytics"', pg_db)
    batchscore.score(folder, model, postgres.url(pg_db), table="Analytics.Scores", quiet=True)
    batchscore.score(folder, model, postgres.url(pg_db), table="Analytics.scores", quiet=True)
    assert postgres.query('SELECT count(*) FROM "Analytics"."Scores"', pg_db) == [(13,)]
    assert postgres.query('SELECT count(*) FROM "Analytics".scores', pg_db) == [(13,)]
    # The ledger lives next to the table, in its schema.
    assert postgres.query('SELECT dest FROM "Analytics".batchscore_runs ORDER BY dest', pg_db) == [
        ("Analytics.Scores",), ("Analytics.scores",)
    ]


def test_names_are_never_executed(scored, postgres, pg_db):
    folder, _, model = scored
    postgres.execute("CREATE TABLE victim (x int)", pg_db)
    name = 'x"; DROP TABLE victim; --'
    batchscore.score(folder, model, postgres.url(pg_db), table=name, quiet=True)
    assert postgres.query('SELECT count(*) FROM "x""; DROP TABLE victim; --"', pg_db) == [(13,)]
    assert postgres.query("SELECT count(*) FROM victim", pg_db) == [(0,)]


def test_a_missing_schema_is_a_usage_error(cli, scored, postgres, pg_db):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--output", postgres.url(pg_db), "--table", "nope.t", code=2) == (
        f"--table nope.t: schema 'nope' does not exist in database {pg_db}: create it (CREATE SCHEMA \"nope\") "
        "or fix --table"
    )


def test_if_exists_modes(cli, scored, postgres, pg_db):
    folder, _, model = scored
    url = postgres.url(pg_db)
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "-q")
    assert cli.fails(folder, "--model", model, "--output", url, "--table", "preds", code=2) == (
        f"table preds already exists in {url}: pass --overwrite to replace it, --if-exists append to add rows, "
        "or --resume to finish an interrupted run"
    )
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "--if-exists", "append", "-q")
    assert postgres.query("SELECT count(*), count(DISTINCT id) FROM preds", pg_db) == [(26, 13)]
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "--overwrite", "-q")
    assert postgres.query("SELECT count(*), count(DISTINCT id) FROM preds", pg_db) == [(13, 13)]
    summary = batchscore.score(folder, model, url, table="preds", if_exists="resume", quiet=True)
    assert (summary.shards_skipped, summary.rows_written) == (3, 0)
    assert postgres.query("SELECT count(*) FROM batchscore_shards", pg_db) == [(3,)]


def test_existing_table_whose_columns_do_not_match(cli, scored, postgres, pg_db):
    folder, _, model = scored
    postgres.execute("CREATE TABLE preds (id integer, name text, ts timestamptz, count integer, score real)", pg_db)
    assert cli.fails(folder, "--model", model, "--output", postgres.url(pg_db), "--table", "preds",
                     "--if-exists", "append", code=2) == (
        "table preds exists and its columns do not match the output: column id is integer but the output's is "
        "bigint; column ts is timestamp with time zone but the output's is timestamp without time zone; "
        "pass --overwrite to replace it, or choose another --table"
    )


def test_append_widens_into_an_existing_table(scored, postgres, pg_db):
    folder, table, model = scored
    postgres.execute(
        "CREATE TABLE preds (score double precision, count bigint, ts timestamp, name varchar(10), id bigint)", pg_db
    )
    batchscore.score(folder, model, postgres.url(pg_db), table="preds", if_exists="append", quiet=True)
    got = postgres.table("preds", pg_db)
    want = reference(model, table)["score"][:, 0]
    assert got.column("score").type == pa.float64()
    assert got.column("score").to_pylist() == [float(v) for v in want]
    assert got.column("count").to_pylist() == [i % 5 for i in range(13)]


def test_upsert_key(data, model, postgres, pg_db):
    folder, _ = data.shards("in", [4, 6])
    url = postgres.url(pg_db)
    batchscore.score(folder, model, url, table="preds", upsert_key=["id"], quiet=True)
    changed = Data.table(10, 0, seed=5)
    data.write("in/part-000.parquet", changed.slice(0, 4))
    data.write("in/part-001.parquet", pa.concat_tables([changed.slice(4, 6), Data.table(1, 10, seed=6),
                                                        Data.table(1, 3, seed=7)]))
    for _ in range(2):  # idempotent: twice is once
        batchscore.score(folder, model, url, table="preds", upsert_key="id", if_exists="append", quiet=True)
    got = postgres.table("preds", pg_db)
    assert got.column("id").to_pylist() == list(range(11))
    final = pa.concat_tables([changed.slice(0, 3), Data.table(1, 3, seed=7), changed.slice(4, 6), Data.table(1, 10, seed=6)])
    assert got.column("score").to_pylist() == reference(model, final)["score"][:, 0].tolist()
    assert postgres.query("SELECT indexname FROM pg_indexes WHERE tablename = 'preds'", pg_db) == [("preds_pkey",)]


def test_publish_at_end_with_upsert(scored, postgres, pg_db):
    folder, _, model = scored
    url = postgres.url(pg_db)
    for mode in ("fail", "replace", "append"):
        batchscore.score(folder, model, url, table="preds", publish="at-end", upsert_key=["id"], if_exists=mode, quiet=True)
    assert postgres.query("SELECT count(*) FROM preds", pg_db) == [(13,)]
    tables = postgres.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", pg_db)
    assert tables == [("batchscore_meta",), ("batchscore_runs",), ("batchscore_shards",), ("preds",)]
    assert postgres.query("SELECT indexname FROM pg_indexes WHERE tablename = 'preds'", pg_db) == [("preds_pkey",)]
    assert postgres.query("SELECT mode, status FROM batchscore_runs ORDER BY started_at", pg_db) == [
        ("replace", "complete"), ("append", "complete"),
    ]


# -- credentials and errors ------------------------------------------------------------------
def _alice_db(postgres, pg_db) -> None:
    postgres.execute(f"GRANT CREATE ON SCHEMA public TO {pg.ALICE}", pg_db)


def test_a_password_is_masked_everywhere(cli, scored, postgres, pg_db, tmp_path):
    folder, _, model = scored
    _alice_db(postgres, pg_db)
    url = postgres.url(pg_db, user=pg.ALICE, password=pg.ALICE_PASSWORD, tcp=True)
    secret = url.split(":")[2].split("@")[0]  # as it appears in the URL (percent-encoded)
    report = tmp_path / "report.json"
    res = cli.run(folder, "--model", model, "--output", url, "--table", "preds", "--report", report)
    masked = f"postgresql://{pg.ALICE}:***@127.0.0.1:{postgres.port}/{pg_db}"
    assert json.load(open(report))["output"] == masked
    assert f"output: {masked}" in res.stderr
    for text in (res.stderr, res.stdout, report.read_text()):
        assert secret not in text and pg.ALICE_PASSWORD not in text
    res = cli("run", folder, "--model", model, "--output", url, "--table", "preds", "--dry-run")
    assert res.exit_code == 0 and f"output: {masked}" in res.stderr and secret not in res.stderr
    # A failure names the table and masks the password too.
    msg = cli.fails(folder, "--model", model, "--output", url, "--table", "preds", "--report", report, code=2)
    assert masked in msg and secret not in report.read_text()


def test_mask_url():
    assert mask_url("postgresql://u:p%40ss@h:5/db?sslmode=require") == "postgresql://u:***@h:5/db?sslmode=require"
    assert mask_url("postgresql://u@h/db?password=x&sslmode=require") == "postgresql://u@h/db?password=***&sslmode=require"
    assert mask_url("postgresql:///db?host=/tmp") == "postgresql:///db?host=/tmp"


def test_password_from_pgpassword_and_from_the_environment(cli, scored, postgres, pg_db):
    folder, _, model = scored
    _alice_db(postgres, pg_db)
    bare = postgres.url(pg_db, user=pg.ALICE, tcp=True)
    cli.run(folder, "--model", model, "--output", bare, "--table", "a", "-q", env={"PGPASSWORD": pg.ALICE_PASSWORD})
    full = postgres.url(pg_db, user=pg.ALICE, password=pg.ALICE_PASSWORD, tcp=True)
    cli.run(folder, "--model", model, "--table", "b", "-q", env={"BATCHSCORE_OUTPUT": full})
    assert postgres.query("SELECT count(*) FROM a UNION ALL SELECT count(*) FROM b", pg_db) == [(13,), (13,)]


def test_authentication_failure(cli, scored, postgres, pg_db):
    folder, _, model = scored
    url = postgres.url(pg_db, user=pg.ALICE, password="wrong-pw", tcp=True)
    msg = cli.fails(folder, "--model", model, "--output", url, "--table", "t", code=2)
    assert msg == (
        f"cannot log in to PostgreSQL at 127.0.0.1:{postgres.port} as {pg.ALICE}: password authentication "
        f'failed for user "{pg.ALICE}": check the user and the password (in --output, PGPASSWORD or ~/.pgpass)'
    )
    assert "wrong-pw" not in msg


def test_server_unreachable(cli, scored):
    folder, _, model = scored
    port = pg._free_port()  # nothing listens there
    msg = cli.fails(folder, "--model", model, "--output", f"postgresql://bob:hunter2@127.0.0.1:{port}/db",
                    "--table", "t", code=1)
    assert msg == (
        f"cannot connect to PostgreSQL at 127.0.0.1:{port}: Connection refused (is the server running and "
        f"reachable? --output postgresql://bob:***@127.0.0.1:{port}/db)"
    )


def test_missing_database(cli, scored, postgres):
    folder, _, model = scored
    msg = cli.fails(folder, "--model", model, "--output", postgres.url("nodb", tcp=True), "--table", "t", code=2)
    assert msg == f"database nodb does not exist on PostgreSQL at 127.0.0.1:{postgres.port}: create it, or fix --output"


def test_permission_denied(cli, scored, postgres, pg_db):
    folder, _, model = scored
    url = postgres.url(pg_db, user=pg.ALICE, password=pg.ALICE_PASSWORD, tcp=True)
    msg = cli.fails(folder, "--model", model, "--output", url, "--table", "t", code=2)
    masked = postgres.url(pg_db, user=pg.ALICE, password="***", tcp=True).replace("%2A%2A%2A", "***")
    assert msg == (
        f"permission denied writing table t in {masked}: permission denied for schema public: grant the user "
        "CREATE on the schema and INSERT on the table, or choose another --table"
    )


def test_missing_driver_names_the_extra(cli, scored, monkeypatch):
    folder, _, model = scored
    monkeypatch.setitem(sys.modules, "adbc_driver_postgresql", None)
    monkeypatch.setitem(sys.modules, "adbc_driver_postgresql.dbapi", None)
    assert cli.fails(folder, "--model", model, "--output", "postgresql://u@h/db", "--table", "t", code=2) == (
        "the PostgreSQL driver (adbc-driver-postgresql) is not installed: pip install 'batchscore[postgres]'"
    )


def test_a_name_too_long_for_postgresql(scored):
    folder, _, model = scored
    with pytest.raises(BatchscoreError) as info:
        batchscore.score(folder, model, "postgresql://u@h/db", table="x" * 64, quiet=True)
    assert str(info.value) == f"--table {'x' * 64!r}: {'x' * 64!r} is 64 bytes; the database keeps only 63"
