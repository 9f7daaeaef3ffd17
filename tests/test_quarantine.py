"""--on-error quarantine (issue 5): the offending rows, with all their original
columns plus ``reason`` and ``shard``, go to --quarantine DEST: by default a
sibling ``<OUT>.quarantine/`` Parquet dataset for file outputs and a
``<table>_quarantine`` table for databases, never inside the output itself.
"""

from __future__ import annotations

import math
import os
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchscore
from tests.helpers import all_files, assert_predictions, output_files, read_output, reference
from tests.test_faults import (
    _two_row_groups_second_corrupt, accounts, edit_csv_cell, poisoned, reciprocal_model, report, run,
)

NAN, INF = float("nan"), float("inf")
COLUMNS = ["id", "name", "ts", "count", "f0", "f1", "f2", "reason", "shard"]


@pytest.fixture
def bad_shards(data):
    """part-000 clean (4 rows); part-001 with a null in f1 (id 5) and a NaN in f0 (id 7);
    part-002 with an infinity in f2 (id 11). Returns (folder, all rows, bad ids)."""
    folder, _ = data.shards("in", [4])
    t1 = poisoned(data, 5, 4, "f1", {1: None})
    f0 = t1.column("f0").to_pylist()
    f0[3] = NAN
    t1 = t1.set_column(4, "f0", pa.array(f0))
    t2 = poisoned(data, 3, 9, "f2", {2: -INF})
    data.write("in/part-001.parquet", t1)
    data.write("in/part-002.parquet", t2)
    return folder, pa.concat_tables([data.table(4, 0), t1, t2]), [5, 7, 11]


def rows_by_id(table: pa.Table) -> dict[int, dict]:
    return {r["id"]: r for r in table.to_pylist()}


def same_value(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def assert_quarantined(q: pa.Table, source: pa.Table, expected: dict[int, tuple[str, str]]) -> None:
    """``q`` holds exactly the ``expected`` ids ({id: (reason, shard)}), each with its source row."""
    assert q.column_names == COLUMNS
    assert q.schema.remove_metadata().field("ts").type == source.schema.field("ts").type
    got = rows_by_id(q)
    assert sorted(got) == sorted(expected)
    src = rows_by_id(source)
    for i, (reason, shard) in expected.items():
        row = got[i]
        assert (row["reason"], row["shard"]) == (reason, shard), row
        for c in source.column_names:
            assert same_value(row[c], src[i][c]), (i, c, row[c], src[i][c])


def test_default_quarantine_is_a_sibling_dataset(cli, model, bad_shards):
    folder, source, bad = bad_shards
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine", "--batch-size", "2")
    assert res.exit_code == 3, res.stderr
    lines = res.stderr.splitlines()
    assert "batchscore: rows quarantined: 3 -> out.quarantine" in lines
    assert lines[-1] == "batchscore: warning: finished with 3 bad row(s) quarantined and 0 failed shard(s) (exit 3)"
    rep = report()
    assert rep["quarantine"] == "out.quarantine"
    assert accounts(rep) == {"rows_read": 12, "rows_written": 9, "rows_skipped": 0, "rows_quarantined": 3, "rows_filtered": 0}
    assert [s["rows_quarantined"] for s in rep["shards"]] == [0, 2, 1]

    # Nothing of the quarantine inside the output; the output holds the good rows.
    assert all_files("out") == ["_SUCCESS", "_batchscore_manifest.json"] + [f"part-00{i}.parquet" for i in range(3)]
    good = source.filter(pa.array([i not in bad for i in source.column("id").to_pylist()]))
    assert_predictions(read_output("out"), good, reference(model, good))

    # The quarantine mirrors the shards that had bad rows, with every original column.
    assert output_files("out.quarantine") == ["part-001.parquet", "part-002.parquet"]
    assert os.path.exists("out.quarantine/_SUCCESS")
    p1, p2 = (os.path.join(folder, f"part-00{i}.parquet") for i in (1, 2))
    assert_quarantined(read_output("out.quarantine"), source, {
        5: ("null in column 'f1'", p1), 7: ("NaN or infinity in column 'f0'", p1),
        11: ("NaN or infinity in column 'f2'", p2),
    })


def test_single_file_output_quarantines_beside_it(cli, model, bad_shards):
    folder, source, _ = bad_shards
    res = run(cli, folder, "--model", model, "--output", "all.parquet", "--on-error", "quarantine")
    assert res.exit_code == 3, res.stderr
    assert report()["quarantine"] == "all.quarantine"
    assert sorted(read_output("all.quarantine").column("id").to_pylist()) == [5, 7, 11]
    assert len(pq.read_table("all.parquet")) == 9


@pytest.mark.parametrize("dest", ["elsewhere/bad", "bad.parquet"])
def test_explicit_quarantine_destination(cli, model, bad_shards, dest):
    folder, source, _ = bad_shards
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine", "--quarantine", dest)
    assert res.exit_code == 3, res.stderr
    assert report()["quarantine"] == dest
    assert not os.path.exists("out.quarantine")
    q = read_output(dest)
    assert sorted(q.column("id").to_pylist()) == [5, 7, 11]
    assert q.column_names == COLUMNS


def test_quarantine_reasons_for_model_outputs(cli, models, data):
    model = reciprocal_model(models)
    t = poisoned(data, 6, 0, "f0", {2: 0.0, 5: 0.0})
    path = data.write("in/a.parquet", t)
    res = run(cli, path, "--model", model, "--output", "out", "--on-error", "quarantine", "--batch-size", "4")
    assert res.exit_code == 3, res.stderr
    assert_quarantined(read_output("out.quarantine"), t, {
        2: ("model output 'score' is NaN or infinite", path), 5: ("model output 'score' is NaN or infinite", path),
    })
    assert sorted(read_output("out").column("id").to_pylist()) == [0, 1, 3, 4]


def test_each_row_gets_its_own_reason_when_a_column_mixes_null_and_nan(cli, model, data):
    t = poisoned(data, 4, 0, "f1", {1: None, 2: NAN})
    path = data.write("a.parquet", t)
    assert run(cli, path, "--model", model, "--output", "out", "--on-error", "quarantine").exit_code == 3
    reasons = {r["id"]: r["reason"] for r in read_output("out.quarantine").to_pylist()}
    assert reasons == {1: "null in column 'f1'", 2: "NaN or infinity in column 'f1'"}


def test_a_row_bad_in_two_columns_is_quarantined_once(cli, model, data):
    t = poisoned(data, 3, 0, "f0", {1: None}).set_column(6, "f2", pa.array([1.0, NAN, 2.0]))
    path = data.write("a.parquet", t)
    assert run(cli, path, "--model", model, "--output", "out", "--on-error", "quarantine").exit_code == 3
    q = read_output("out.quarantine")
    assert q.column("id").to_pylist() == [1]
    assert q.column("reason").to_pylist() == ["null in column 'f0'"]
    assert accounts(report())["rows_quarantined"] == 1


def test_hive_partitions_are_kept_in_the_quarantine_paths(cli, model, data):
    t = poisoned(data, 4, 0, "f2", {3: None})
    data.write("in/day=1/part-0.parquet", data.table(3, 100))
    data.write("in/day=2/part-0.parquet", t)
    res = run(cli, data.root / "in", "--model", model, "--output", "out", "--on-error", "quarantine")
    assert res.exit_code == 3, res.stderr
    assert output_files("out.quarantine") == ["day=2/part-0.parquet"]
    q = pq.read_table("out.quarantine", partitioning="hive")
    assert q.column("id").to_pylist() == [3]
    assert q.column("day").to_pylist() == [2]


def test_quarantine_with_where_keeps_only_rows_that_pass(cli, model, data):
    t = poisoned(data, 8, 0, "f0", {1: None, 6: None})
    path = data.write("a.parquet", t)
    res = run(cli, path, "--model", model, "--output", "out", "--on-error", "quarantine", "--where", "id >= 4")
    assert res.exit_code == 3, res.stderr
    assert read_output("out.quarantine").column("id").to_pylist() == [6]
    assert accounts(report()) == {"rows_read": 8, "rows_written": 3, "rows_skipped": 0, "rows_quarantined": 1, "rows_filtered": 4}


def test_a_shard_failing_part_way_leaves_none_of_its_rows_in_the_quarantine(cli, model, data):
    # The failing shard's bad row is in its readable first row group; a good shard has one too.
    folder, good, bad = _two_row_groups_second_corrupt(data, null_at=2)
    data.write("in/part-000.parquet", poisoned(data, 5, 0, "f0", {4: None}))
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine", "--batch-size", "3")
    assert res.exit_code == 3, res.stderr
    assert [f["path"] for f in report()["shards_failed"]] == [bad]
    assert output_files("out.quarantine") == ["part-000.parquet"]
    assert read_output("out.quarantine").column("id").to_pylist() == [4]
    assert [f for f in all_files("out.quarantine") if os.path.basename(f).startswith(".")] == []


def test_overwrite_replaces_the_quarantine_too(cli, model, bad_shards, data):
    folder, _, _ = bad_shards
    assert run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine").exit_code == 3
    data.write("in/part-002.parquet", data.table(3, 9))  # fixed
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine", "--overwrite")
    assert res.exit_code == 3, res.stderr
    assert sorted(read_output("out.quarantine").column("id").to_pylist()) == [5, 7]


def test_a_run_without_bad_rows_quarantines_nothing(cli, scored):
    folder, table, model = scored
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine")
    assert res.exit_code == 0, res.stderr
    assert report()["rows_quarantined"] == 0
    assert not os.path.isdir("out.quarantine") or output_files("out.quarantine") == []


def test_api_quarantine(model, bad_shards):
    folder, _, _ = bad_shards
    summary = batchscore.score(folder, model, "out", on_error="quarantine", quarantine="q", quiet=True)
    assert (summary.exit_code, summary.status, summary.quarantine) == (3, "partial", "q")
    assert summary.rows_quarantined == 3
    assert sorted(read_output("q").column("id").to_pylist()) == [5, 7, 11]


# -- never inside the output ------------------------------------------------------------------------------
@pytest.mark.parametrize("dest", ["out/bad", "out"])
def test_quarantine_inside_the_output_is_refused(cli, model, bad_shards, dest):
    folder, _, _ = bad_shards
    msg = cli.fails(folder, "--model", model, "--output", "out", "--on-error", "quarantine", "--quarantine", dest,
                    code=2)
    assert "--quarantine" in msg, msg
    assert not os.path.exists("out")


# -- databases ------------------------------------------------------------------------------------------------
def sqlite_rows(path: str, sql: str) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def sqlite_table(path: str, table: str) -> pa.Table:
    con = sqlite3.connect(path)
    try:
        cur = con.execute(f'SELECT * FROM "{table}"')
        names = [d[0] for d in cur.description]
        return pa.Table.from_pylist([dict(zip(names, r)) for r in cur.fetchall()])
    finally:
        con.close()


def test_sqlite_output_quarantines_to_a_sibling_table(cli, model, bad_shards):
    folder, source, bad = bad_shards
    res = run(cli, folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds",
              "--on-error", "quarantine", "--batch-size", "2")
    assert res.exit_code == 3, res.stderr
    rep = report()
    assert rep["quarantine"] == "sqlite:///scores.db"  # table preds_quarantine
    assert accounts(rep) == {"rows_read": 12, "rows_written": 9, "rows_skipped": 0, "rows_quarantined": 3, "rows_filtered": 0}
    assert [r[1] for r in sqlite_rows("scores.db", 'PRAGMA table_info("preds_quarantine")')] == COLUMNS
    shards = [os.path.join(folder, f"part-00{i}.parquet") for i in range(3)]
    got = sqlite_rows("scores.db", 'SELECT id, reason, shard, f0 IS NULL, f1 IS NULL FROM "preds_quarantine" ORDER BY id')
    # SQLite stores NaN as NULL; the infinity stays.
    assert got == [(5, "null in column 'f1'", shards[1], 0, 1), (7, "NaN or infinity in column 'f0'", shards[1], 1, 0),
                   (11, "NaN or infinity in column 'f2'", shards[2], 0, 0)]
    assert sqlite_rows("scores.db", 'SELECT f2 FROM "preds_quarantine" WHERE id = 11') == [(-INF,)]
    q = sqlite_table("scores.db", "preds_quarantine")
    src = rows_by_id(source)
    for row in q.to_pylist():  # every original column kept
        for c in ("name", "count", "f2"):
            assert same_value(row[c], src[row["id"]][c]), (row, c)
    ids = [i for (i,) in sqlite_rows("scores.db", 'SELECT id FROM "preds" ORDER BY id')]
    assert ids == [i for i in range(12) if i not in bad]
    # Both tables' runs are complete; each shard with bad rows is recorded for both, once.
    assert sorted(sqlite_rows("scores.db", "SELECT dest, status FROM batchscore_runs")) == [
        ("preds", "complete"), ("preds_quarantine", "complete")]
    assert sorted(sqlite_rows("scores.db", "SELECT dest, shard, rows FROM batchscore_shards")) == [
        ("preds", "part-000.parquet", 4), ("preds", "part-001.parquet", 3), ("preds", "part-002.parquet", 2),
        ("preds_quarantine", "part-001.parquet", 2), ("preds_quarantine", "part-002.parquet", 1)]


def test_sqlite_quarantine_in_the_output_file_resumes_and_overwrites(cli, model, bad_shards, data):
    folder, _, _ = bad_shards
    args = [folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds", "--on-error", "quarantine"]
    assert run(cli, *args).exit_code == 3
    # --resume: nothing left to do, nothing written twice.
    res = run(cli, *args, "--resume")
    assert res.exit_code == 0, res.stderr
    assert report()["shards_skipped"] == 3
    assert sqlite_rows("scores.db", 'SELECT id FROM "preds_quarantine" ORDER BY id') == [(5,), (7,), (11,)]
    assert sqlite_rows("scores.db", 'SELECT count(*) FROM "preds"') == [(9,)]
    # --overwrite replaces both tables.
    data.write("in/part-002.parquet", data.table(3, 9))  # fixed
    assert run(cli, *args, "--overwrite").exit_code == 3
    assert sqlite_rows("scores.db", 'SELECT id FROM "preds_quarantine" ORDER BY id') == [(5,), (7,)]
    assert sqlite_rows("scores.db", 'SELECT count(*) FROM "preds"') == [(10,)]
    assert sqlite_rows("scores.db", "SELECT dest, count(*) FROM batchscore_shards GROUP BY dest ORDER BY dest") == [
        ("preds", 3), ("preds_quarantine", 1)]


@pytest.mark.parametrize("publish", ["per-shard", "at-end"])
def test_sqlite_quarantine_rows_past_the_buffer_wait_in_a_temporary_table(cli, model, data, monkeypatch, publish):
    """A guest moves its rows to a temporary table once it holds guest_buffer_bytes (here: every
    batch); a shard failing part-way takes them back with its own."""
    from batchscore.sinks.database import DatabaseSink

    monkeypatch.setattr(DatabaseSink, "guest_buffer_bytes", 1)
    folder, good, bad = _two_row_groups_second_corrupt(data, null_at=2)
    data.write("in/part-000.parquet", poisoned(data, 5, 0, "f0", {1: None, 4: None}))
    res = run(cli, folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds",
              "--on-error", "quarantine", "--batch-size", "1", "--publish", publish)
    assert res.exit_code == 3, res.stderr
    assert [f["path"] for f in report()["shards_failed"]] == [bad]
    assert sqlite_rows("scores.db", 'SELECT id FROM "preds_quarantine" ORDER BY id') == [(1,), (4,)]
    assert sqlite_rows("scores.db", 'SELECT id FROM "preds" ORDER BY id') == [
        (i,) for i in [0, 2, 3] + list(range(25, 31))]
    assert sqlite_rows("scores.db", "SELECT name FROM sqlite_master WHERE name LIKE 'batchscore_stage%'") == []


@pytest.mark.parametrize("buffer", ["held", "spilled"])
def test_a_sqlite_quarantine_shard_already_recorded_is_not_written_twice(cli, model, bad_shards, monkeypatch, buffer):
    """The guest's ledger record comes first: a copy of a shard another writer already
    quarantined is discarded (also once its rows wait in its temporary table)."""
    from batchscore.sinks.database import DatabaseSink

    if buffer != "held":
        monkeypatch.setattr(DatabaseSink, "guest_buffer_bytes", 1)
    folder, _, _ = bad_shards
    args = [folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds", "--on-error", "quarantine",
            "--batch-size", "1"]
    assert run(cli, *args).exit_code == 3
    # As if part-001's predictions and their record were lost, but not its quarantined rows.
    con = sqlite3.connect("scores.db")
    con.execute("DELETE FROM preds WHERE id IN (4, 6, 8)")
    con.execute("DELETE FROM batchscore_shards WHERE dest = 'preds' AND shard = 'part-001.parquet'")
    con.commit()
    con.close()
    res = run(cli, *args, "--resume")
    assert res.exit_code == 3, res.stderr
    assert (f"batchscore: warning: shard {os.path.join(folder, 'part-001.parquet')} was committed to table "
            "preds_quarantine in sqlite:///scores.db by another writer of run") in res.stderr
    assert sqlite_rows("scores.db", 'SELECT id FROM "preds_quarantine" ORDER BY id') == [(5,), (7,), (11,)]
    assert sqlite_rows("scores.db", 'SELECT id FROM "preds" ORDER BY id') == [(i,) for i in (0, 1, 2, 3, 4, 6, 8, 9, 10)]
    assert sqlite_rows("scores.db", "SELECT dest, count(*) FROM batchscore_shards GROUP BY dest ORDER BY dest") == [
        ("preds", 3), ("preds_quarantine", 2)]


def test_sqlite_quarantine_in_the_output_file_is_dropped_when_nothing_commits(cli, model, data):
    """A run failing before any commit leaves neither table (nor their ledger runs) behind."""
    t = poisoned(data, 4, 0, "f0", {1: None})
    data.write("in/part-000.parquet", t)
    data.write("in/part-001.parquet", data.table(3, 4))
    msg = cli.fails(str(data.root / "in"), "--model", model, "--output", "sqlite:///scores.db",
                    "--table", "preds", "--on-error", "quarantine", "--max-errors", "0", code=1)
    assert msg.startswith("1 bad rows, more than --max-errors 0"), msg
    assert sqlite_rows("scores.db", "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name") == [
        ("batchscore_meta",), ("batchscore_runs",), ("batchscore_shards",)]
    assert sqlite_rows("scores.db", "SELECT count(*) FROM batchscore_runs") == [(0,)]


def test_sqlite_output_quarantines_to_another_database_file(cli, model, bad_shards):
    folder, _, _ = bad_shards
    res = run(cli, folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds",
              "--on-error", "quarantine", "--quarantine", "sqlite:///bad.db")
    assert res.exit_code == 3, res.stderr
    con = sqlite3.connect("bad.db")
    try:
        got = con.execute('SELECT id, shard FROM "preds_quarantine" ORDER BY id').fetchall()
    finally:
        con.close()
    assert [i for i, _ in got] == [5, 7, 11]
    con = sqlite3.connect("scores.db")
    assert con.execute('SELECT count(*) FROM "preds"').fetchone()[0] == 9
    con.close()


def test_sqlite_output_with_a_directory_quarantine(cli, model, bad_shards):
    folder, _, _ = bad_shards
    res = run(cli, folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds",
              "--on-error", "quarantine", "--quarantine", "bad")
    assert res.exit_code == 3, res.stderr
    assert sorted(read_output("bad").column("id").to_pylist()) == [5, 7, 11]


def test_file_output_with_a_database_quarantine(cli, model, bad_shards):
    folder, _, _ = bad_shards
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine",
              "--quarantine", "sqlite:///bad.db")
    assert res.exit_code == 3 or (res.exit_code == 2 and "--quarantine" in res.error), res.stderr


# -- cells that do not parse --------------------------------------------------------------------------------------
def test_csv_cell_that_does_not_parse_is_quarantined_with_its_value(cli, model, data):
    folder, table = data.shards("in", [5, 6], fmt="csv")
    bad = os.path.join(folder, "part-001.csv")
    edit_csv_cell(bad, 4, "f1", "abc")  # id 7
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine")
    assert res.exit_code == 3, res.stderr
    assert report()["shards_failed"] == []
    [row] = read_output("out.quarantine").to_pylist()
    assert (row["id"], row["shard"]) == (7, bad)
    assert "'abc'" in row["reason"] and "f1" in row["reason"], row["reason"]
    assert len(read_output("out")) == 10


def test_ndjson_line_that_is_not_json_is_quarantined(cli, model, data):
    folder, table = data.shards("in", [4], fmt="ndjson")
    path = os.path.join(folder, "part-000.ndjson")
    lines = open(path).read().splitlines()
    lines.insert(2, "{this is not json")
    open(path, "w").write("\n".join(lines) + "\n")
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine")
    assert res.exit_code == 3, res.stderr
    [row] = read_output("out.quarantine").to_pylist()
    assert row["reason"].startswith("line 3 is not a JSON object"), row["reason"]
    assert row["shard"] == path
    assert sorted(read_output("out").column("id").to_pylist()) == [0, 1, 2, 3]
    assert accounts(report()) == {"rows_read": 5, "rows_written": 4, "rows_skipped": 0, "rows_quarantined": 1, "rows_filtered": 0}
