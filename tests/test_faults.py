"""Bad rows and bad shards on real files (issue 5): for each fault, the exact
message, the exit code, what is written, and the row accounting

    rows read = rows written + rows skipped + rows quarantined + rows filtered

in the returned summary, the printed summary and the JSON report. Quarantine
contents are tested in test_quarantine.py, the lock in test_lock.py, signals in
test_signals.py and random shapes in test_property.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

import batchscore
from batchscore.backends.onnx import OnnxBackend
from batchscore.errors import BatchscoreError, ExitStatus
from tests.helpers import (
    Models, _const, _vi, all_files, assert_predictions, output_files, read_output, reference,
)

CORRUPT = "(the file is corrupt, truncated or not of that format; fix or remove it, or set --input-format)"
ROOT = Path(__file__).resolve().parent.parent


# -- builders ------------------------------------------------------------------------------------
def with_values(table: pa.Table, column: str, values) -> pa.Table:
    """``table`` with ``column`` replaced by ``values`` (same type)."""
    i = table.schema.get_field_index(column)
    return table.set_column(i, column, pa.array(values, table.schema.field(i).type))


def poisoned(data, n: int, start: int, column: str, bad: dict[int, float | None]) -> pa.Table:
    """``n`` rows from id ``start`` whose ``column`` holds ``bad[row]`` at the given rows."""
    t = data.table(n, start)
    values = t.column(column).to_pylist()
    for row, v in bad.items():
        values[row] = v
    return with_values(t, column, values)


def truncate(path: str) -> None:
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[: len(raw) // 2])


def corrupt_row_group(path: str, index: int) -> None:
    """Overwrite every column chunk of one row group with 0xFF; the footer stays
    intact, so the file opens and the earlier row groups read."""
    meta = pq.read_metadata(path)
    rg = meta.row_group(index)
    raw = bytearray(open(path, "rb").read())
    for c in range(rg.num_columns):
        col = rg.column(c)
        start = col.dictionary_page_offset or col.data_page_offset
        raw[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    open(path, "wb").write(bytes(raw))


def pyarrow_error(path: str) -> str:
    """pyarrow's own words for a file whose footer is broken, as batchscore prints them."""
    with pytest.raises(Exception) as info:
        pq.read_metadata(path)
    return " ".join(str(info.value).split())


def edit_csv_cell(path: str, line: int, column: str, value: str) -> None:
    """Set one cell of a CSV file; ``line`` counts from 1 (the header)."""
    lines = Path(path).read_text().splitlines()
    header = [h.strip('"') for h in lines[0].split(",")]
    cells = lines[line - 1].split(",")
    cells[header.index(column)] = value
    lines[line - 1] = ",".join(cells)
    Path(path).write_text("\n".join(lines) + "\n")


def reciprocal_model(models: Models) -> str:
    """``score`` float [N,1] = sum(1 / features): infinite for a row with a 0 feature."""
    nodes = [
        helper.make_node("Div", ["one", "features"], ["inv"]),
        helper.make_node("ReduceSum", ["inv", "axes"], ["score"], keepdims=1),
    ]
    return models.save(
        "reciprocal.onnx", nodes,
        [_vi("features", TensorProto.FLOAT, [None, 3])], [_vi("score", TensorProto.FLOAT, [None, 1])],
        [_const("one", np.array(1.0, dtype=np.float32)), _const("axes", np.array([1], dtype=np.int64))],
    )


def nan_tolerant_model(models: Models) -> str:
    """Like the linear model, but reads NaN and infinity as 0 (as tree models read NaN as missing)."""
    w, b = Models.weights(3, 1)
    nodes = [
        helper.make_node("IsNaN", ["features"], ["nan"]),
        helper.make_node("IsInf", ["features"], ["inf"]),
        helper.make_node("Or", ["nan", "inf"], ["missing"]),
        helper.make_node("Where", ["missing", "zero", "features"], ["clean"]),
        helper.make_node("MatMul", ["clean", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["score"]),
    ]
    return models.save(
        "nan_tolerant.onnx", nodes,
        [_vi("features", TensorProto.FLOAT, [None, 3])], [_vi("score", TensorProto.FLOAT, [None, 1])],
        [_const("W", w), _const("B", b), _const("zero", np.array(0.0, dtype=np.float32))],
    )


# -- checks ----------------------------------------------------------------------------------------
ACCOUNT = ("rows_read", "rows_written", "rows_skipped", "rows_quarantined", "rows_filtered")


def accounts(summary) -> dict[str, int]:
    """The accounting fields of a summary (a RunSummary or the JSON report), checked to add up."""
    get = summary.get if isinstance(summary, dict) else lambda k: getattr(summary, k)
    got = {k: get(k) or 0 for k in ACCOUNT}
    assert got["rows_read"] == got["rows_written"] + got["rows_skipped"] + got["rows_quarantined"] + got["rows_filtered"], got
    shards = get("shards")
    for k in ACCOUNT:  # the per-shard rows add up to the totals
        assert sum(s[k] for s in shards) == got[k], (k, shards)
    return got


def report(path: str = "r.json") -> dict:
    return json.load(open(path))


def run(cli, *args):
    """``batchscore run ARGS --report r.json``: the result, with no traceback."""
    res = cli("run", *map(str, args), "--report", "r.json")
    assert res.exception is None, res.exception
    assert "Traceback" not in res.stderr, res.stderr
    return res


def no_leftovers(out: str) -> None:
    """No temporary file and no _SUCCESS: nothing half-written looks complete."""
    files = all_files(out) if os.path.isdir(out) else []
    assert [f for f in files if os.path.basename(f).startswith(".")] == []
    assert "_SUCCESS" not in files


# -- shard-level faults ------------------------------------------------------------------------------
def test_truncated_shard_with_fail_stops_naming_the_file(cli, model, data):
    folder, _ = data.shards("in", [4, 4, 4])
    bad = os.path.join(folder, "part-001.parquet")
    truncate(bad)
    assert cli.fails(folder, "--model", model, "--output", "out", code=2) == (
        f"cannot read {bad} as parquet: {pyarrow_error(bad)} {CORRUPT}"
    )
    assert not os.path.exists("out")


@pytest.mark.parametrize("mode", ["skip", "quarantine"])
def test_truncated_shard_is_listed_and_the_run_goes_on(cli, model, data, mode):
    folder, table = data.shards("in", [4, 4, 4])
    bad = os.path.join(folder, "part-001.parquet")
    truncate(bad)
    why = f"cannot read {bad} as parquet: {pyarrow_error(bad)} {CORRUPT}"
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", mode)
    assert res.exit_code == 3, res.stderr
    assert f"batchscore: warning: skipped shard {bad}: {why}" in res.stderr.splitlines()
    assert "batchscore: shards failed: 1 (see the report)" in res.stderr.splitlines()
    rep = report()
    assert rep["status"] == "partial" and rep["exit_code"] == 3
    assert rep["shards_failed"] == [{"path": bad, "error": why}]
    assert accounts(rep) == {"rows_read": 8, "rows_written": 8, "rows_skipped": 0, "rows_quarantined": 0, "rows_filtered": 0}
    assert output_files("out") == ["part-000.parquet", "part-002.parquet"]
    good = pa.concat_tables([table.slice(0, 4), table.slice(8, 4)])
    assert_predictions(read_output("out"), good, reference(model, good))
    assert os.path.exists("out/_SUCCESS")


def test_unreadable_shard_is_listed(cli, model, data):
    # A dangling link: the file is listed but cannot be opened (chmod does not stop root).
    folder, table = data.shards("in", [3, 3])
    gone = os.path.join(folder, "part-002.parquet")
    os.symlink(os.path.join(folder, "nowhere.parquet"), gone)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip")
    assert res.exit_code == 3, res.stderr
    [failed] = report()["shards_failed"]
    assert failed["path"] == gone
    assert failed["error"].startswith(f"cannot read {gone} as parquet: ")
    assert failed["error"].endswith(CORRUPT)
    assert output_files("out") == ["part-000.parquet", "part-001.parquet"]
    msg = cli.fails(folder, "--model", model, "--output", "out2", code=2)
    assert msg == failed["error"]


def test_every_shard_failing_is_an_error_even_with_skip(cli, model, data):
    folder, _ = data.shards("in", [4, 4])
    for name in ("part-000.parquet", "part-001.parquet"):
        truncate(os.path.join(folder, name))
    first = os.path.join(folder, "part-000.parquet")
    msg = cli.fails(folder, "--model", model, "--output", "out", "--on-error", "skip", code=2)
    assert msg == f"every input shard failed (2); the first: cannot read {first} as parquet: {pyarrow_error(first)} {CORRUPT}"
    assert not os.path.exists("out")


def _two_row_groups_second_corrupt(data, null_at: int | None = None) -> tuple[str, pa.Table, str]:
    """part-000 (5 rows), part-001 (20 rows in 2 row groups, the second corrupt; with
    ``null_at``, a null f0 in that row of the first), part-002 (6 rows).
    Returns (folder, the rows of the good shards, part-001's path)."""
    folder, table = data.shards("in", [5])
    middle = data.table(20, 5) if null_at is None else poisoned(data, 20, 5, "f0", {null_at: None})
    bad = data.write("in/part-001.parquet", middle, row_group_size=10, compression="none", use_dictionary=False)
    corrupt_row_group(bad, 1)
    data.write("in/part-002.parquet", data.table(6, 25))
    return folder, pa.concat_tables([table, data.table(6, 25)]), bad


def test_a_shard_failing_part_way_with_fail_publishes_nothing_of_it(cli, model, data):
    folder, _, bad = _two_row_groups_second_corrupt(data)
    msg = cli.fails(folder, "--model", model, "--output", "out", "--batch-size", "3", code=2)
    assert msg.startswith(f"cannot read {bad} as parquet: ")
    assert msg.endswith(CORRUPT)
    # The shard before it may or may not have committed when the run stopped (decoding
    # runs ahead); the bad shard never appears, and nothing half-written is left.
    assert set(output_files("out")) <= {"part-000.parquet"}
    no_leftovers("out")


@pytest.mark.parametrize("mode", ["skip", "quarantine"])
def test_a_shard_failing_part_way_is_rolled_back_and_the_run_goes_on(cli, model, data, mode):
    # Rows of its first row group reach the writer before the second one fails to decode.
    folder, good, bad = _two_row_groups_second_corrupt(data)
    res = run(cli, folder, "--model", model, "--output", "out", "--batch-size", "3", "--on-error", mode)
    assert res.exit_code == 3, res.stderr
    rep = report()
    [failed] = rep["shards_failed"]
    assert failed["path"] == bad and failed["error"].startswith(f"cannot read {bad} as parquet: ")
    assert output_files("out") == ["part-000.parquet", "part-002.parquet"]
    assert_predictions(read_output("out"), good, reference(model, good))
    assert accounts(rep) == {"rows_read": 11, "rows_written": 11, "rows_skipped": 0, "rows_quarantined": 0, "rows_filtered": 0}
    assert [f for f in all_files("out") if os.path.basename(f).startswith(".")] == []
    manifest = json.load(open("out/_batchscore_manifest.json"))
    assert sorted(manifest["shards"]) == ["part-000.parquet", "part-002.parquet"]


def test_error_messages_are_printable(cli, model, data):
    folder, _, bad = _two_row_groups_second_corrupt(data)
    msg = cli.fails(folder, "--model", model, "--output", "out", "--batch-size", "3", code=2)
    assert msg.isprintable(), repr(msg)


def test_a_shard_failing_part_way_into_a_single_file_fails_the_run(cli, model, data):
    # A single .parquet file is all-or-nothing: rows already in it cannot be taken back.
    folder, _, bad = _two_row_groups_second_corrupt(data)
    assert cli.fails(folder, "--model", model, "--output", "all.parquet", "--batch-size", "3",
                     "--on-error", "skip", code=2) == (
        f"shard {bad} failed after some of its rows were written to the single file all.parquet, "
        "which is all-or-nothing: write to a directory to skip bad shards"
    )
    assert os.listdir(".") == []  # no output, no temporary file, no lock


def test_schema_drift_missing_column_with_fail(cli, model, data):
    data.write("in/a.parquet", data.table(3, 0))
    b = data.write("in/b.parquet", data.table(3, 3).drop_columns(["f1"]))
    assert cli.fails(str(data.root / "in"), "--model", model, "--features", "f0,f1,f2", "--output", "out", code=2) == (
        f"shard {b} lacks column(s) f1 that other shards have (schema drift): fix the file, or leave it out"
    )
    assert not os.path.exists("out")


@pytest.mark.parametrize("mode", ["skip", "quarantine"])
def test_schema_drift_missing_column_is_listed(cli, model, data, mode):
    a = data.table(3, 0)
    data.write("in/a.parquet", a)
    b = data.write("in/b.parquet", data.table(3, 3).drop_columns(["f1"]))
    c = data.table(4, 6)
    data.write("in/c.parquet", c)
    res = run(cli, data.root / "in", "--model", model, "--features", "f0,f1,f2", "--output", "out", "--on-error", mode)
    assert res.exit_code == 3, res.stderr
    assert report()["shards_failed"] == [{
        "path": b, "error": f"shard {b} lacks column(s) f1 that other shards have (schema drift): fix the file, or leave it out",
    }]
    assert output_files("out") == ["a.parquet", "c.parquet"]
    good = pa.concat_tables([a, c])
    assert_predictions(read_output("out"), good, reference(model, good))
    assert accounts(report())["rows_written"] == 7


def test_schema_drift_changed_type_with_fail(cli, model, data):
    a = data.write("in/a.parquet", data.table(3, 0))
    t = data.table(3, 3)
    b = data.write("in/b.parquet", t.set_column(5, "f1", pa.array(["1", "2", "x"])))
    assert cli.fails(str(data.root / "in"), "--model", model, "--output", "out", code=2) == (
        f"shards disagree on column 'f1': {a} has double, {b} has string; "
        "make the files agree or score them in separate runs"
    )


@pytest.mark.parametrize("mode", ["skip", "quarantine"])
def test_schema_drift_changed_type_is_listed(cli, model, data, mode):
    a = data.write("in/a.parquet", data.table(3, 0))
    t = data.table(3, 3)
    b = data.write("in/b.parquet", t.set_column(5, "f1", pa.array(["1", "2", "x"])))
    data.write("in/c.parquet", data.table(2, 6))
    res = run(cli, data.root / "in", "--model", model, "--output", "out", "--on-error", mode)
    assert res.exit_code == 3, res.stderr
    assert report()["shards_failed"] == [{
        "path": b,
        "error": f"shards disagree on column 'f1': {a} has double, {b} has string; "
                 "make the files agree or score them in separate runs",
    }]
    assert output_files("out") == ["a.parquet", "c.parquet"]
    assert accounts(report())["rows_written"] == 5


def test_empty_shards_are_not_faults(cli, model, data):
    folder, table = data.shards("in", [3, 0, 2], fmt="csv")
    data.path("in/part-003.csv").write_bytes(b"")  # no header at all
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip")
    assert res.exit_code == 0, res.stderr
    rep = report()
    assert rep["status"] == "ok" and rep["shards_failed"] == []
    assert accounts(rep)["rows_written"] == 5
    assert output_files("out") == [f"part-00{i}.parquet" for i in range(4)]
    assert_predictions(read_output("out"), table, reference(model, table))


# -- row-level errors: nulls, NaN, infinity ------------------------------------------------------------
def test_nan_in_a_feature_with_fail(cli, model, data):
    path = data.write("a.parquet", poisoned(data, 6, 0, "f2", {2: float("nan"), 4: float("-inf")}))
    assert cli.fails(path, "--model", model, "--output", "out", code=2) == (
        f"{path}: NaN or infinity in column 'f2' at row 2 (2 bad row(s) in this part of the file): "
        "fix the data, or pass --on-error skip|quarantine (or --allow-nan)"
    )
    no_leftovers("out")


def test_null_in_a_later_read_batch_names_its_row_in_the_file(cli, model, data):
    # Row numbers count from the start of the file, not of the read batch (row groups of 4).
    path = data.write("a.parquet", poisoned(data, 12, 0, "f0", {9: None}), row_group_size=4)
    assert cli.fails(path, "--model", model, "--output", "out", code=2) == (
        f"{path}: null in column 'f0' at row 9 (1 bad row(s) in this part of the file): "
        "fix the data, or pass --on-error skip|quarantine"
    )


def test_skip_counts_bad_rows_and_scores_the_rest(cli, model, data):
    folder, _ = data.shards("in", [5])
    t1 = poisoned(data, 6, 5, "f1", {0: None, 3: float("nan")})
    t2 = poisoned(data, 4, 11, "f0", {3: float("inf")})
    data.write("in/part-001.parquet", t1)
    data.write("in/part-002.parquet", t2)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip", "--batch-size", "4")
    assert res.exit_code == 3, res.stderr
    lines = res.stderr.splitlines()
    assert "batchscore: rows skipped (bad): 3" in lines
    assert lines[-1] == "batchscore: warning: finished with 3 bad row(s) skipped and 0 failed shard(s) (exit 3)"
    rep = report()
    assert rep["status"] == "partial" and rep["exit_code"] == 3
    assert accounts(rep) == {"rows_read": 15, "rows_written": 12, "rows_skipped": 3, "rows_quarantined": 0, "rows_filtered": 0}
    assert [(s["output"], s["rows_skipped"]) for s in rep["shards"]] == [
        ("part-000.parquet", 0), ("part-001.parquet", 2), ("part-002.parquet", 1)]
    out = read_output("out")
    bad_ids = {5, 8, 14}
    source = pa.concat_tables([data.table(5, 0), t1, t2])
    good = source.filter(pa.array([i not in bad_ids for i in source.column("id").to_pylist()]))
    assert_predictions(out, good, reference(model, good))
    assert not os.path.exists("out.quarantine")


def test_allow_nan_passes_nan_and_infinity_to_the_model(cli, models, data):
    model = nan_tolerant_model(models)
    t = poisoned(data, 6, 0, "f2", {1: float("nan"), 4: float("-inf")})
    path = data.write("a.parquet", t)
    res = run(cli, path, "--model", model, "--output", "out", "--allow-nan")
    assert res.exit_code == 0, res.stderr
    assert accounts(report())["rows_written"] == 6
    assert_predictions(read_output("out"), t, reference(model, t))


def test_allow_nan_keeps_nan_cells_of_a_csv(cli, models, data):
    model = nan_tolerant_model(models)
    t = poisoned(data, 4, 0, "f2", {1: float("nan")})
    path = data.write("a.csv", t, "csv")
    assert ",nan\n" in open(path).read()
    res = run(cli, path, "--model", model, "--output", "out", "--allow-nan")
    assert res.exit_code == 0, res.stderr
    assert_predictions(read_output("out"), t, reference(model, t))


def test_allow_nan_still_refuses_nulls(cli, models, data):
    model = nan_tolerant_model(models)
    path = data.write("a.parquet", poisoned(data, 4, 0, "f2", {1: float("nan"), 2: None}))
    assert cli.fails(path, "--model", model, "--output", "out", "--allow-nan", code=2) == (
        f"{path}: null in column 'f2' at row 2 (1 bad row(s) in this part of the file): "
        "fix the data, or pass --on-error skip|quarantine"
    )


def test_allow_nan_into_a_model_that_returns_nan_is_a_bad_output(cli, model, data):
    # --allow-nan lets NaN into the model; a NaN prediction is still an error.
    path = data.write("a.parquet", poisoned(data, 4, 0, "f0", {1: float("nan")}))
    assert cli.fails(path, "--model", model, "--output", "out", "--allow-nan", code=2) == (
        "model output 'score' is NaN or infinite for 1 row(s) (row 1 of a 4-row batch): "
        "check the model and its inputs, or pass --on-error skip|quarantine"
    )
    no_leftovers("out")


# -- row-level errors: non-finite model outputs --------------------------------------------------------
def test_non_finite_model_output_with_fail(cli, models, data):
    model = reciprocal_model(models)
    path = data.write("a.parquet", poisoned(data, 5, 0, "f1", {3: 0.0}))
    assert cli.fails(path, "--model", model, "--output", "out", code=2) == (
        "model output 'score' is NaN or infinite for 1 row(s) (row 3 of a 5-row batch): "
        "check the model and its inputs, or pass --on-error skip|quarantine"
    )
    no_leftovers("out")


def test_non_finite_model_output_with_skip(cli, models, data):
    model = reciprocal_model(models)
    folder, _ = data.shards("in", [3])
    t = poisoned(data, 7, 3, "f1", {0: 0.0, 6: 0.0})
    data.write("in/part-001.parquet", t)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip", "--batch-size", "4")
    assert res.exit_code == 3, res.stderr
    rep = report()
    assert accounts(rep) == {"rows_read": 10, "rows_written": 8, "rows_skipped": 2, "rows_quarantined": 0, "rows_filtered": 0}
    assert [s["rows_skipped"] for s in rep["shards"]] == [0, 2]
    source = pa.concat_tables([data.table(3, 0), t])
    good = source.filter(pa.array([i not in (3, 9) for i in source.column("id").to_pylist()]))
    assert_predictions(read_output("out"), good, reference(model, good))
    assert np.isfinite(read_output("out").column("score").to_numpy()).all()


# -- row-level errors: cells that do not parse -----------------------------------------------------------
def _csv_with_bad_cell(data) -> tuple[str, str, pa.Table]:
    """Two CSV shards; ``abc`` in column f1 of part-001.csv, line 4 (its third row, id 7)."""
    folder, table = data.shards("in", [5, 6], fmt="csv")
    bad = os.path.join(folder, "part-001.csv")
    edit_csv_cell(bad, 4, "f1", "abc")
    good = table.filter(pa.array([i != 7 for i in table.column("id").to_pylist()]))
    return folder, bad, good


def test_csv_cell_that_does_not_parse_with_fail(cli, model, data):
    folder, bad, _ = _csv_with_bad_cell(data)
    msg = cli.fails(folder, "--model", model, "--output", "out", code=2)
    assert bad in msg and "'abc'" in msg and "f1" in msg, msg
    assert re.search(r"\b(line 4|row 2)\b", msg), msg
    no_leftovers("out")


def test_csv_cell_that_does_not_parse_with_skip(cli, model, data):
    folder, bad, good = _csv_with_bad_cell(data)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip")
    assert res.exit_code == 3, res.stderr
    rep = report()
    assert rep["shards_failed"] == []
    assert accounts(rep) == {"rows_read": 11, "rows_written": 10, "rows_skipped": 1, "rows_quarantined": 0, "rows_filtered": 0}
    assert_predictions(read_output("out"), good, reference(model, good))


def test_csv_cell_that_does_not_parse_after_the_type_is_inferred(cli, model, data):
    # Past the first block pyarrow infers types from, the column is already double.
    path = data.write("big.csv", data.table(60_000), "csv")
    edit_csv_cell(path, 50_002, "f1", "abc")
    msg = cli.fails(path, "--model", model, "--output", "out", code=2)
    assert msg.startswith(f"cannot read {path} as csv: ") or msg.startswith(f"{path}: "), msg
    assert "'abc'" in msg
    res = run(cli, path, "--model", model, "--output", "out2", "--on-error", "skip")
    assert res.exit_code == 3, res.stderr
    assert accounts(report()) == {"rows_read": 60_000, "rows_written": 59_999, "rows_skipped": 1,
                                  "rows_quarantined": 0, "rows_filtered": 0}
    assert 50_000 not in set(read_output("out2").column("id").to_pylist())


def test_ndjson_value_of_the_wrong_type_with_skip(cli, model, data):
    folder, table = data.shards("in", [4, 5], fmt="ndjson")
    bad = os.path.join(folder, "part-001.ndjson")
    rows = [json.loads(line) for line in open(bad)]
    rows[2]["f0"] = "abc"
    Path(bad).write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip")
    assert res.exit_code == 3, res.stderr
    assert report()["shards_failed"] == []
    assert accounts(report())["rows_skipped"] == 1
    good = table.filter(pa.array([i != 6 for i in table.column("id").to_pylist()]))
    assert_predictions(read_output("out"), good, reference(model, good))


# -- --max-errors and --max-error-rate ---------------------------------------------------------------------
def _bad_dataset(data) -> str:
    """3 shards of 10 rows; shard 1 has 3 null f0 values."""
    folder, _ = data.shards("in", [10])
    data.write("in/part-001.parquet", poisoned(data, 10, 10, "f0", {1: None, 5: None, 8: None}))
    data.write("in/part-002.parquet", data.table(10, 20))
    return folder


def test_max_errors_exceeded_exits_1(cli, model, data):
    folder = _bad_dataset(data)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip", "--max-errors", "2")
    assert res.exit_code == 1, res.stderr
    assert res.error == "3 bad rows, more than --max-errors 2: fix the data, or raise the limit; the run stopped here"
    rep = report()
    assert rep["status"] == "failed" and rep["exit_code"] == 1 and rep["error"] == res.error
    assert "part-001.parquet" not in output_files("out")
    no_leftovers("out")


def test_max_errors_reached_but_not_exceeded_finishes(cli, model, data):
    folder = _bad_dataset(data)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "quarantine", "--max-errors", "3")
    assert res.exit_code == 3, res.stderr
    assert accounts(report())["rows_quarantined"] == 3


def test_max_error_rate_exceeded_exits_1(cli, model, data):
    folder = _bad_dataset(data)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip", "--max-error-rate", "0.1")
    assert res.exit_code == 1, res.stderr
    assert res.error == (
        "3 of 20 rows read were bad (15.00%), more than --max-error-rate 0.1: fix the data, or raise the limit"
    )
    assert report()["exit_code"] == 1
    no_leftovers("out")


def test_max_error_rate_not_exceeded_finishes(cli, model, data):
    folder = _bad_dataset(data)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip", "--max-error-rate", "0.15")
    assert res.exit_code == 3, res.stderr
    assert accounts(report()) == {"rows_read": 30, "rows_written": 27, "rows_skipped": 3, "rows_quarantined": 0, "rows_filtered": 0}


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-errors", "-1"], "--max-errors must be 0 or more, got -1"),
        (["--max-error-rate", "1.5"], "--max-error-rate must be a fraction between 0 and 1, got 1.5"),
        (["--on-error", "ignore"], "--on-error 'ignore' is not one of: fail, skip, quarantine"),
        (["--quarantine", "q"], "--quarantine is only used with --on-error quarantine: add it, or drop --quarantine"),
    ],
)
def test_bad_error_flags_are_usage_errors(cli, scored, flags, message):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, *flags, code=2) == message


# -- accounting ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_accounting_with_where_and_bad_rows(cli, model, data, fmt):
    # Parquet filters in the scan (pushdown), CSV in memory: both count the same.
    t = poisoned(data, 10, 0, "f2", {1: None, 2: None, 7: None})
    path = data.write(f"a.{'csv' if fmt == 'csv' else 'parquet'}", t, fmt)
    res = run(cli, path, "--model", model, "--output", "out", "--on-error", "skip", "--where", "id >= 2")
    assert res.exit_code == 3, res.stderr
    assert accounts(report()) == {"rows_read": 10, "rows_written": 6, "rows_skipped": 2, "rows_quarantined": 0, "rows_filtered": 2}
    lines = res.stderr.splitlines()
    for line in ("rows read: 10", "rows written: 6", "rows filtered by --where: 2", "rows skipped (bad): 2"):
        assert f"batchscore: {line}" in lines
    assert sorted(read_output("out").column("id").to_pylist()) == [3, 4, 5, 6, 8, 9]


def test_api_summary_holds_the_same_accounting(model, data):
    folder = _bad_dataset(data)
    summary = batchscore.score(folder, model, "out", on_error="skip", quiet=True)
    assert summary.exit_code == 3 and summary.status == "partial"
    assert accounts(summary) == {"rows_read": 30, "rows_written": 27, "rows_skipped": 3, "rows_quarantined": 0, "rows_filtered": 0}


def test_resumed_run_counts_only_its_shards_and_skipped_shards_apart(cli, model, data, monkeypatch):
    folder = _bad_dataset(data)
    calls = {"n": 0}
    original = OnnxBackend.predict

    def predict(self, feeds):  # Ctrl-C on the third batch: shards 0 and 1 are committed
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, feeds)

    monkeypatch.setattr(OnnxBackend, "predict", predict)
    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip", "--batch-size", "10")
    assert res.exit_code == 130, res.stderr
    first = report()
    assert first["status"] == "interrupted"
    assert accounts(first) == {"rows_read": 20, "rows_written": 17, "rows_skipped": 3, "rows_quarantined": 0, "rows_filtered": 0}
    monkeypatch.setattr(OnnxBackend, "predict", original)

    res = run(cli, folder, "--model", model, "--output", "out", "--on-error", "skip", "--resume")
    assert res.exit_code == 0, res.stderr  # the bad rows were in the first run's shards
    second = report()
    assert second["shards_skipped"] == 2
    assert "batchscore: shards already committed: 2 (skipped by --resume)" in res.stderr.splitlines()
    assert accounts(second) == {"rows_read": 10, "rows_written": 10, "rows_skipped": 0, "rows_quarantined": 0, "rows_filtered": 0}
    assert len(read_output("out")) == 27


# -- exit codes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [ExitStatus.SUCCESS, ExitStatus.RETRYABLE, ExitStatus.USAGE, ExitStatus.PARTIAL,
                                    ExitStatus.INTERNAL])
def test_each_exit_code_from_a_real_run(cli, model, data, monkeypatch, status):
    # 4 (locked) is in test_lock.py, 130 (interrupted) in test_signals.py.
    folder = _bad_dataset(data)
    flags = {
        ExitStatus.SUCCESS: ["--where", "id < 10"],
        ExitStatus.RETRYABLE: ["--on-error", "skip", "--max-errors", "0"],
        ExitStatus.USAGE: [],
        ExitStatus.PARTIAL: ["--on-error", "skip"],
        ExitStatus.INTERNAL: ["--where", "id < 10"],
    }[status]
    if status == ExitStatus.INTERNAL:
        monkeypatch.setattr(OnnxBackend, "predict", lambda self, feeds: 1 / 0)
    res = cli("run", folder, "--model", model, "--output", "out", *flags, "--report", "r.json")
    assert res.exit_code == int(status), res.stderr
    assert ("Traceback" in res.stderr) == (status == ExitStatus.INTERNAL)  # only bugs show one
    assert report()["exit_code"] == int(status)


def test_the_error_catalogue_lists_every_exit_code_and_error_class():
    from batchscore import errors

    doc = (ROOT / "docs" / "errors.md").read_text()
    for status in ExitStatus:
        assert re.search(rf"^\| {int(status)} \| `{status.name}` \|", doc, re.M), f"exit code {int(status)}"
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, BatchscoreError)]
    for cls in classes:
        assert f"`{cls.__name__}`" in doc, cls.__name__
