"""Planning: --where (filtering, pushed into the Parquet/CSV scan), --keep,
the batch size a model's fixed batch dimension forces, and --dry-run."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.job import build_job
from batchscore.plan import default_output, make_plan
from tests.helpers import Data, assert_predictions, read_output, reference

WHERE = "id >= 5 and name = 'x'"


def _expected_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.and_(pc.greater_equal(table["id"], 5), pc.equal(table["name"], "x")))


@pytest.mark.parametrize("fmt", Data.FORMATS)
def test_where_scores_only_matching_rows(data, model, fmt):
    folder, table = data.shards("in", [6, 0, 9], fmt)
    summary = batchscore.score(folder, model, "out", where=WHERE, batch_size=2, quiet=True)
    want = _expected_rows(table)
    out = read_output("out")
    assert out.column("id").to_pylist() == want.column("id").to_pylist() == [6, 9, 12]
    assert_predictions(out, want, reference(model, want))
    # Accounting: every row read is written or filtered by --where.
    assert (summary.rows_read, summary.rows_written, summary.rows_filtered) == (15, 3, 12)
    assert summary.where == WHERE


def test_where_reports_filtered_rows_when_counts_are_known(data, model):
    folder, _ = data.shards("in", [6, 9])
    summary = batchscore.score(folder, model, "out", where=WHERE, quiet=True)
    assert (summary.rows_in_dataset, summary.rows_read, summary.rows_written, summary.rows_filtered) == (15, 15, 3, 12)


def test_where_on_a_column_that_is_neither_feature_nor_kept(data, model):
    folder, table = data.shards("in", [10])
    batchscore.score(folder, model, "out.parquet", where="count = 2", keep="id", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.column_names == ["id", "score"]
    assert out.column("id").to_pylist() == [2, 7]


def test_where_matching_nothing_writes_empty_shards(data, model):
    folder, _ = data.shards("in", [3, 4])
    summary = batchscore.score(folder, model, "out", where="id > 1000", quiet=True)
    assert summary.rows_written == 0
    assert [pq.read_table(f"out/part-00{i}.parquet").num_rows for i in (0, 1)] == [0, 0]


# Formats with statistics get the predicate pushed into polars' scan; text
# formats are filtered in memory so that filtered rows can be counted exactly.
@pytest.mark.parametrize("fmt, scan", [("parquet", "Parquet SCAN"), ("ipc_file", "Ipc SCAN")])
def test_where_is_pushed_into_the_scan(data, model, fmt, scan, monkeypatch):
    folder, _ = data.shards("in", [6], fmt)
    plans: list[str] = []
    original = pl.LazyFrame.collect_batches

    def spy(self, *args, **kwargs):
        plans.append(self.explain())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pl.LazyFrame, "collect_batches", spy)
    batchscore.score(folder, model, "out", where=WHERE, quiet=True)
    assert len(plans) == 1
    lines = [line.strip() for line in plans[0].splitlines()]
    at = next(i for i, line in enumerate(lines) if line.startswith(scan))
    assert any(line.startswith("SELECTION:") for line in lines[at:]), plans[0]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson", "ipc_file"])
def test_where_compares_timestamps_with_iso_strings(data, model, fmt):
    folder, table = data.shards("in", [8, 8], fmt)  # ts: 2026-12-01 + 6 h per id
    batchscore.score(folder, model, "out", where="ts >= '2026-12-03'", quiet=True)
    want = table.filter(pc.greater_equal(table["ts"], pa.scalar(dt.datetime(2026, 12, 3), pa.timestamp("us"))))
    out = read_output("out")
    assert out.column("id").to_pylist() == list(range(8, 16))
    assert_predictions(out, want, reference(model, want))


def test_where_with_a_typed_timestamp_literal(data, model):
    folder, table = data.shards("in", [8, 8])
    batchscore.score(folder, model, "out", where="ts >= TIMESTAMP '2026-12-03 00:00:00'", quiet=True)
    assert read_output("out").column("id").to_pylist() == list(range(8, 16))


# -- a fixed batch dimension ----------------------------------------------------------------------
def test_fixed_batch_model_pads_the_last_batch(data, models):
    model = models.linear(batch=4, k=2, shape="matrix")
    t = data.table(10)
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", quiet=True)
    assert (summary.batch_size, summary.batch_size_source, summary.batches) == (4, "fixed by the model", 3)
    out = pq.read_table("out.parquet")
    assert out.num_rows == 10
    assert out.column("id").to_pylist() == list(range(10))
    assert_predictions(out, t, reference(model, t))


def test_fixed_batch_overrides_batch_size_with_a_warning(data, models):
    model = models.linear(batch=4)
    folder, table = data.shards("in", [3, 0, 6])
    summary = batchscore.score(folder, model, "out", batch_size=3, quiet=True)
    assert summary.batch_size == 4
    assert summary.warnings == ["--batch-size 3 ignored: the model's batch dimension is fixed at 4"]
    assert_predictions(read_output("out"), table, reference(model, table))


# -- make_plan directly -------------------------------------------------------------------------------
def test_plan_reads_only_the_columns_it_needs(data, model, tmp_path):
    folder, _ = data.shards("in", [3])
    job = build_job({"inputs": [folder], "model": model, "keep": "id", "where": "count > 1"}, cwd=tmp_path)
    plan = make_plan(job)
    try:
        assert plan.read_columns == ["id", "count", "f0", "f1", "f2"]
        assert plan.stream_columns == ["id", "f0", "f1", "f2"]
        assert plan.output_schema.names == ["id", "score"]
        assert plan.prediction_names == ["score"]
    finally:
        plan.backend.close()


def test_plan_job_key_changes_with_what_decides_the_result(data, model, tmp_path):
    folder, _ = data.shards("in", [3])
    keys = []
    for extra in ({}, {}, {"where": "id > 0"}, {"keep": "id"}, {"features": "f2,f1,f0"}):
        plan = make_plan(build_job({"inputs": [folder], "model": model, **extra}, cwd=tmp_path))
        keys.append(plan.job_key)
        plan.backend.close()
    assert keys[0] == keys[1]
    assert len(set(keys)) == 4


@pytest.mark.parametrize(
    "arg, want",
    [
        ("data/transactions", "transactions-scored"),
        ("data/transactions/", "transactions-scored"),
        ("data/day=*/*.parquet", "data-scored"),
    ],
)
def test_default_output_names(arg, want):
    assert default_output(arg) == want


def test_default_output_of_a_file(tmp_path):
    (tmp_path / "march.2026.csv").write_text("a\n1\n")
    assert default_output(str(tmp_path / "march.2026.csv")) == "march-scored"
