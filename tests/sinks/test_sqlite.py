"""The SQLite sink: URLs, the table built from the output schema, rows equal
to the Parquet output, types, --if-exists, --upsert-key, --publish at-end,
the ledger, table names as identifiers, and its one-line errors."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import sys

import numpy as np
import pyarrow as pa
import pytest

import batchscore
from batchscore.errors import BatchscoreError
from batchscore.sinks.database import json_text
from tests.helpers import Data, read_output, reference


def rows(path: str, sql: str, params: tuple = ()) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def ddl(path: str, table: str) -> str:
    return rows(path, "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))[0][0]


def iso(ts: dt.datetime) -> str:
    return ts.isoformat(timespec="microseconds")


def test_predictions_equal_the_parquet_output_row_for_row(scored):
    folder, table, model = scored
    batchscore.score(folder, model, "out", quiet=True)
    summary = batchscore.score(folder, model, "sqlite:///scores.db", table="preds", quiet=True)
    assert summary.status == "ok" and summary.rows_written == 13
    assert summary.output == "sqlite:///scores.db"
    assert ddl("scores.db", "preds") == (
        'CREATE TABLE "preds" ("id" INTEGER, "name" TEXT, "ts" TEXT, "count" INTEGER, "score" REAL)'
    )
    want = read_output("out").sort_by("id").to_pylist()
    got = rows("scores.db", 'SELECT id, name, ts, "count", score FROM preds ORDER BY id')
    assert len(got) == len(want) == 13
    for g, w in zip(got, want):
        assert g[:2] == (w["id"], w["name"])
        assert g[2] == iso(w["ts"])
        assert g[3] == w["count"]
        assert np.float32(g[4]) == np.float32(w["score"]) and g[4] == float(np.float32(w["score"]))


def test_relative_and_absolute_urls(scored, tmp_path):
    folder, _, model = scored
    batchscore.score(folder, model, "sqlite:///sub/dir/rel.db", table="t", quiet=True)
    assert rows("sub/dir/rel.db", "SELECT count(*) FROM t") == [(13,)]
    absolute = tmp_path / "abs" / "x.db"
    batchscore.score(folder, model, f"sqlite:///{absolute}", table="t", quiet=True)  # four slashes
    assert rows(str(absolute), "SELECT count(*) FROM t") == [(13,)]


def test_types_round_trip(data, models):
    t = Data.table(7).append_column("b", pa.array([True, False, None, True, False, True, None]))
    t = t.append_column("d", pa.array([dt.date(2026, 1, i + 1) for i in range(7)]))
    t = t.append_column("tz", pa.array([dt.datetime(2026, 1, 1, 12, 30, i) for i in range(7)], pa.timestamp("us", "UTC")))
    t = t.append_column("blob", pa.array([bytes([i, 0, 255]) for i in range(7)]))
    t = t.append_column("small", pa.array(range(7), pa.int8()))
    data.write("in/part-0.parquet", t)
    model = models.classifier()
    batchscore.score(data.root / "in", model, "sqlite:///t.db", table="preds", quiet=True)
    assert ddl("t.db", "preds") == (
        'CREATE TABLE "preds" ("id" INTEGER, "name" TEXT, "ts" TEXT, "count" INTEGER, "b" INTEGER, "d" TEXT, '
        '"tz" TEXT, "blob" BLOB, "small" INTEGER, "probabilities" TEXT, "label" INTEGER, "positive" INTEGER)'
    )
    got = rows("t.db", "SELECT b, d, tz, blob, small, probabilities, label, positive FROM preds ORDER BY id")
    ref = reference(model, t)
    for i, (b, d, tz, blob, small, probs, label, positive) in enumerate(got):
        assert b == (None if t["b"][i].as_py() is None else int(t["b"][i].as_py()))
        assert d == f"2026-01-{i + 1:02d}"
        assert tz == f"2026-01-01T12:30:{i:02d}.000000Z"
        assert blob == bytes([i, 0, 255]) and small == i
        # Lists are JSON arrays whose numbers read back as the very same float32 values.
        assert np.array_equal(np.array(json.loads(probs), dtype=np.float32), ref["probabilities"][i])
        assert label == int(ref["label"][i]) and positive == int(ref["positive"][i])


def test_json_text_of_lists():
    arr = pa.array([[0.1, float("nan")], None, [None, float("inf"), -float("inf")], []], pa.list_(pa.float32()))
    assert json_text(arr).to_pylist() == ["[0.1,NaN]", None, "[null,Infinity,-Infinity]", "[]"]
    nested = pa.array([[[1, 2], [3, 4]], None], pa.list_(pa.list_(pa.int64(), 2), 2))
    assert json_text(nested).to_pylist() == ["[[1,2],[3,4]]", None]
    assert json_text(nested.slice(1)).to_pylist() == [None]
    strings = pa.array([['a"b', "c\\"], None], pa.list_(pa.string()))
    assert [json.loads(v) if v else v for v in json_text(strings).to_pylist()] == [['a"b', "c\\"], None]


def test_the_table_exists_with_if_exists_fail(cli, scored):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds", "-q")
    assert cli.fails(folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds", code=2) == (
        "table preds already exists in sqlite:///s.db: pass --overwrite to replace it, --if-exists append to "
        "add rows, or --resume to finish an interrupted run"
    )
    assert rows("s.db", "SELECT count(*) FROM preds") == [(13,)]


def test_replace_append_and_resume(scored):
    folder, _, model = scored
    url = "sqlite:///s.db"
    batchscore.score(folder, model, url, table="preds", quiet=True)
    batchscore.score(folder, model, url, table="preds", if_exists="append", quiet=True)
    assert rows("s.db", "SELECT count(*), count(DISTINCT id) FROM preds") == [(26, 13)]
    batchscore.score(folder, model, url, table="preds", if_exists="replace", quiet=True)
    assert rows("s.db", "SELECT count(*), count(DISTINCT id) FROM preds") == [(13, 13)]
    assert rows("s.db", "SELECT count(*) FROM batchscore_runs WHERE dest = 'preds'") == [(1,)]
    summary = batchscore.score(folder, model, url, table="preds", if_exists="resume", quiet=True)
    assert (summary.shards_skipped, summary.rows_written) == (3, 0)
    assert rows("s.db", "SELECT count(*) FROM preds") == [(13,)]


def test_resume_on_an_empty_destination_simply_runs(scored):
    folder, _, model = scored
    summary = batchscore.score(folder, model, "sqlite:///new.db", table="preds", if_exists="resume", quiet=True)
    assert (summary.shards_skipped, summary.rows_written) == (0, 13)


def test_the_ledger_records_each_shard(scored):
    folder, _, model = scored
    summary = batchscore.score(folder, model, "sqlite:///s.db", table="preds", quiet=True, run_id="r1")
    assert rows("s.db", "SELECT value FROM batchscore_meta WHERE name = 'ledger_version'") == [("1",)]
    runs = rows("s.db", "SELECT dest, run_id, mode, publish, status, finished_at >= started_at FROM batchscore_runs")
    assert runs == [("preds", "r1", "fail", "per-shard", "complete", 1)]
    shards = rows("s.db", "SELECT shard, source, rows, run_id, attempt, length(shard_key), job_key FROM batchscore_shards ORDER BY shard")
    assert [s[:5] for s in shards] == [
        ("part-000.parquet", f"{folder}/part-000.parquet", 5, "r1", "r1"),
        ("part-001.parquet", f"{folder}/part-001.parquet", 0, "r1", "r1"),
        ("part-002.parquet", f"{folder}/part-002.parquet", 8, "r1", "r1"),
    ]
    assert {s[5] for s in shards} == {64} and len({s[6] for s in shards}) == 1
    assert summary.shards_done == 3


def test_a_changed_input_is_refused_by_resume(cli, data, scored):
    folder, _, model = scored
    url = "sqlite:///s.db"
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "-q")
    data.write("shards/part-002.parquet", Data.table(8, 5, seed=99))
    msg = cli.fails(folder, "--model", model, "--output", url, "--table", "preds", "--resume", code=2)
    assert msg.startswith(f"input {folder}/part-002.parquet changed after run ")
    assert msg.endswith(
        "to table preds in sqlite:///s.db at " + msg.split(" at ")[-1].split(": ")[0]
        + ": those predictions are stale; pass --overwrite to score everything again, or restore the file"
    )
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "--overwrite", "-q")
    assert rows("s.db", "SELECT count(*) FROM preds") == [(13,)]


def test_resume_refuses_another_jobs_table(cli, models, scored):
    folder, _, model = scored
    url = "sqlite:///s.db"
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "-q")
    other = models.linear(name="other.onnx", output="score", batch=None, shape="vector")
    msg = cli.fails(folder, "--model", other, "--output", url, "--table", "preds", "--resume", code=2)
    assert msg.startswith("output table preds in sqlite:///s.db was last written by run ")
    assert msg.endswith(
        "a different job (the model, features, --keep, --where or output columns differ): --resume would mix "
        "the two; pass --overwrite to start over, or --if-exists append to add this job's rows"
    )


def test_resume_refuses_a_table_batchscore_did_not_write(cli, scored):
    folder, _, model = scored
    rows("s.db", 'CREATE TABLE preds (id INTEGER, name TEXT, ts TEXT, "count" INTEGER, score REAL)')
    con = sqlite3.connect("s.db")
    con.execute("INSERT INTO preds VALUES (1, 'a', 'b', 2, 0.5)")
    con.commit()
    con.close()
    assert cli.fails(folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds", "--resume", code=2) == (
        "output table preds in sqlite:///s.db holds rows that no batchscore run recorded, so --resume cannot tell "
        "what is done: pass --if-exists append to add to it, or --overwrite to replace it"
    )


def test_append_into_an_existing_compatible_table(scored):
    folder, table, model = scored
    # The user's own table: other column order, other type spellings.
    rows("s.db", 'CREATE TABLE preds (score DOUBLE, "count" BIGINT, ts VARCHAR(40), name TEXT, id INT)')
    batchscore.score(folder, model, "sqlite:///s.db", table="preds", if_exists="append", quiet=True)
    got = rows("s.db", 'SELECT id, "count" FROM preds ORDER BY id')
    assert got == [(i, i % 5) for i in range(13)]


def test_existing_table_whose_columns_do_not_match(cli, scored):
    folder, _, model = scored
    rows("s.db", "CREATE TABLE preds (id INTEGER, name BLOB, ts TEXT, extra TEXT, score REAL)")
    assert cli.fails(folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds",
                     "--if-exists", "append", code=2) == (
        "table preds exists and its columns do not match the output: it lacks output column(s) count; it has "
        "column(s) extra that the output does not; column name is BLOB but the output's is TEXT; pass --overwrite "
        "to replace it, or choose another --table"
    )


def test_upsert_key_makes_reruns_idempotent(data, model):
    folder, first = data.shards("in", [4, 6])
    url = "sqlite:///s.db"
    batchscore.score(folder, model, url, table="preds", upsert_key=["id"], quiet=True)
    assert "PRIMARY KEY" in ddl("s.db", "preds")
    # The same ids with new features, plus one new row, and a key twice in one shard: the last row wins.
    changed = Data.table(10, 0, seed=5)
    data.write("in/part-000.parquet", changed.slice(0, 4))
    data.write("in/part-001.parquet", pa.concat_tables([changed.slice(4, 6), Data.table(1, 10, seed=6),
                                                        Data.table(1, 3, seed=7)]))
    batchscore.score(folder, model, url, table="preds", upsert_key=["id"], if_exists="append", quiet=True)
    got = rows("s.db", "SELECT id, score FROM preds ORDER BY id")
    assert [g[0] for g in got] == list(range(11))
    final = pa.concat_tables([changed.slice(0, 3), Data.table(1, 3, seed=7), changed.slice(4, 6), Data.table(1, 10, seed=6)])
    want = reference(model, final)["score"][:, 0]
    assert [np.float32(g[1]) for g in got] == list(want)


def test_upsert_key_errors(cli, scored):
    folder, _, model = scored
    url = "sqlite:///s.db"
    assert cli.fails(folder, "--model", model, "--output", url, "--table", "p", "--upsert-key", "uid", code=2) == (
        "--upsert-key uid: no output column uid; the output has id, name, ts, count, score "
        "(key columns must be kept: see --keep)"
    )
    cli.run(folder, "--model", model, "--output", url, "--table", "p", "-q")
    assert cli.fails(folder, "--model", model, "--output", url, "--table", "p", "--upsert-key", "id",
                     "--if-exists", "append", code=2) == (
        "--upsert-key id: table p has no unique index on exactly those columns; create one "
        '(CREATE UNIQUE INDEX ON "p" ("id")) or pass --overwrite'
    )


def test_publish_at_end(scored):
    folder, _, model = scored
    url = "sqlite:///s.db"
    batchscore.score(folder, model, url, table="preds", publish="at-end", quiet=True)
    batchscore.score(folder, model, url, table="preds", publish="at-end", if_exists="replace", quiet=True)
    names = [n for (n,) in rows("s.db", "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    assert names == ["batchscore_meta", "batchscore_runs", "batchscore_shards", "preds"]
    assert rows("s.db", "SELECT count(*) FROM preds") == [(13,)]
    assert rows("s.db", "SELECT publish, status FROM batchscore_runs") == [("at-end", "complete")]
    batchscore.score(folder, model, url, table="preds", publish="at-end", if_exists="append", quiet=True)
    assert rows("s.db", "SELECT count(*) FROM preds") == [(26,)]


def test_table_names_are_identifiers_not_sql(scored):
    folder, _, model = scored
    url = "sqlite:///s.db"
    for name in ['We"ird; DROP TABLE x; --', "Preds", "main.other"]:
        batchscore.score(folder, model, url, table=name, quiet=True)
    names = {n for (n,) in rows("s.db", "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {'We"ird; DROP TABLE x; --', "Preds", "other"} <= names  # the case as given
    # SQLite matches names regardless of ASCII case: "preds" is the table "Preds".
    with pytest.raises(BatchscoreError, match="table preds already exists"):
        batchscore.score(folder, model, url, table="preds", quiet=True)
    summary = batchscore.score(folder, model, url, table="PREDS", if_exists="resume", quiet=True)
    assert summary.shards_skipped == 3


@pytest.mark.parametrize(
    "table, message",
    [
        ("a.b.c", "--table 'a.b.c' has 3 dot-separated parts: give NAME or SCHEMA.NAME (names with dots are not supported)"),
        ("a.", "--table 'a.' has an empty part: give NAME or SCHEMA.NAME"),
        (".a", "--table '.a' has an empty part: give NAME or SCHEMA.NAME"),
        ("bad\x00name", "--table 'bad\\x00name' holds a NUL byte: table names cannot"),
        ("analytics.t", "--table analytics.t: SQLite has no schema 'analytics'; give a plain table name"),
        ("batchscore_runs", "--table 'batchscore_runs': batchscore_runs is batchscore's own bookkeeping table; choose another name"),
    ],
)
def test_bad_table_names(scored, table, message):
    folder, _, model = scored
    with pytest.raises(BatchscoreError) as info:
        batchscore.score(folder, model, "sqlite:///s.db", table=table, quiet=True)
    assert str(info.value) == message and info.value.exit_status == 2
    assert not os.path.exists("s.db")


@pytest.mark.parametrize(
    "output, table, message",
    [
        ("sqlite:///s.db", None, "--output sqlite:///s.db is a SQLite database: name the table with --table NAME"),
        ("sqlite://", "t", "--output sqlite://: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"),
        ("sqlite:///", "t", "--output sqlite:///: an in-memory database vanishes when the run ends; name a file, e.g. sqlite:///scores.db"),
        ("sqlite:///x.db?mode=ro", "t", "--output sqlite:///x.db?mode=ro: SQLite URL options (?...) are not supported; give just the file"),
        ("out", "t", "--table names a database table, but --output out is Parquet: write to sqlite:///FILE.db or postgresql://USER@HOST/DB, or leave out --table"),
        ("mysql://u:pw@h/db", "t", "--output mysql://...: unknown destination scheme 'mysql'; use a path (Parquet), sqlite:///FILE.db or postgresql://USER@HOST/DB"),
    ],
)
def test_bad_outputs(cli, scored, output, table, message):
    folder, _, model = scored
    args = [folder, "--model", model, "--output", output] + (["--table", table] if table else [])
    assert cli.fails(*args, code=2) == message


def test_missing_driver_names_the_extra(cli, scored, monkeypatch):
    folder, _, model = scored
    monkeypatch.setitem(sys.modules, "adbc_driver_sqlite", None)
    monkeypatch.setitem(sys.modules, "adbc_driver_sqlite.dbapi", None)
    assert cli.fails(folder, "--model", model, "--output", "sqlite:///s.db", "--table", "t", code=2) == (
        "the SQLite driver (adbc-driver-sqlite) is not installed: pip install 'batchscore[sqlite]'"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_a_read_only_database_is_a_usage_error(cli, scored):
    folder, _, model = scored
    rows("ro.db", "CREATE TABLE x (a)")
    os.chmod("ro.db", 0o444)
    msg = cli.fails(folder, "--model", model, "--output", "sqlite:///ro.db", "--table", "t", code=2)
    assert msg.startswith("permission denied writing ro.db: ")


def _with_a_null_feature(data) -> str:
    t = Data.table(6)
    f0 = t.column("f0").to_pylist()
    f0[2] = None
    data.write("bad/part-000.parquet", t.set_column(t.schema.get_field_index("f0"), "f0", pa.array(f0)))
    data.write("bad/part-001.parquet", Data.table(4, 6))
    return str(data.root / "bad")


def test_a_run_that_fails_before_any_commit_leaves_no_table(cli, data, model):
    folder = _with_a_null_feature(data)
    cli.fails(folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds", code=2)
    assert rows("s.db", "SELECT count(*) FROM sqlite_master WHERE name = 'preds'") == [(0,)]
    assert rows("s.db", "SELECT count(*) FROM batchscore_runs") == [(0,)]
    # So a plain rerun (here skipping the bad row) is not refused by --if-exists fail.
    res = cli("run", folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds", "--on-error", "skip", "-q")
    assert res.exit_code == 3, res.stderr
    assert rows("s.db", "SELECT count(*) FROM preds") == [(9,)]


def test_quarantine_goes_to_the_output_file_or_another(cli, data, model):
    folder = _with_a_null_feature(data)
    res = cli("run", folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds",
              "--on-error", "quarantine", "-q")
    assert res.exit_code == 3, res.stderr
    assert rows("s.db", "SELECT count(*) FROM preds") == [(9,)]
    assert rows("s.db", "SELECT id, reason FROM preds_quarantine") == [(2, "null in column 'f0'")]
    assert sorted(rows("s.db", "SELECT dest, status FROM batchscore_runs")) == [
        ("preds", "complete"), ("preds_quarantine", "complete")]
    assert rows("s.db", "SELECT dest, shard, rows FROM batchscore_shards WHERE dest = 'preds_quarantine'") == [
        ("preds_quarantine", "part-000.parquet", 1)]
    res = cli("run", folder, "--model", model, "--output", "sqlite:///s.db", "--table", "preds",
              "--on-error", "quarantine", "--quarantine", "sqlite:///s-quarantine.db", "--overwrite", "-q")
    assert res.exit_code == 3, res.stderr
    assert rows("s.db", "SELECT count(*) FROM preds") == [(9,)]
    assert rows("s-quarantine.db", "SELECT id FROM preds_quarantine") == [(2,)]
