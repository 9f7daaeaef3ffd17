"""batchscore.score(...): predictions equal onnxruntime's own, matched by id,
across shard boundaries and batch sizes; row counts, order and the summary."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.errors import ExitStatus, ModelError, UsageError
from tests.helpers import assert_predictions, output_files, read_output, reference

SIZES = [5, 0, 8, 3]  # an empty shard in the middle; batches straddle every boundary


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_predictions_equal_onnxruntime_across_shards(data, model, batch_size):
    folder, table = data.shards("in", SIZES)
    summary = batchscore.score(folder, model, "out", batch_size=batch_size, quiet=True)

    assert_predictions(read_output("out"), table, reference(model, table))
    assert summary.status == "ok"
    assert summary.exit_code == 0
    assert (summary.rows_read, summary.rows_written) == (16, 16)
    assert (summary.shards_total, summary.shards_done, summary.shards_empty) == (4, 4, 1)
    assert summary.batches == math.ceil(16 / batch_size)
    assert summary.batch_size == batch_size
    assert summary.batch_size_source == "--batch-size"


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_each_shard_keeps_its_rows_in_order(data, model, batch_size):
    folder, table = data.shards("in", SIZES)
    batchscore.score(folder, model, "out", batch_size=batch_size, quiet=True)

    assert output_files("out") == [f"part-{i:03d}.parquet" for i in range(4)]
    start = 0
    for i, n in enumerate(SIZES):
        ids = pq.read_table(f"out/part-{i:03d}.parquet").column("id").to_pylist()
        assert ids == list(range(start, start + n))
        start += n


@pytest.mark.parametrize("batch_size", [1, 7, 10_000])
def test_single_file_output_holds_every_row_in_input_order(data, model, batch_size):
    folder, table = data.shards("in", SIZES)
    batchscore.score(folder, model, "all.parquet", batch_size=batch_size, quiet=True)

    out = pq.read_table("all.parquet")
    assert out.column("id").to_pylist() == list(range(16))
    assert_predictions(out, table, reference(model, table))


def test_default_batch_size_is_the_backends(scored):
    folder, table, model = scored
    summary = batchscore.score(folder, model, "out", quiet=True)
    assert (summary.batch_size, summary.batch_size_source) == (16384, "onnx default")
    assert summary.batches == 1


def test_inputs_may_be_path_objects_and_lists(data, model, tmp_path):
    a = data.write("a.parquet", data.table(4, 0))
    b = data.write("b.parquet", data.table(6, 4))
    summary = batchscore.score([Path(a), Path(b)], Path(model), tmp_path / "out", quiet=True)
    assert summary.rows_written == 10
    assert output_files(tmp_path / "out") == ["a.parquet", "b.parquet"]


def test_summary_records_the_run(scored):
    folder, table, model = scored
    summary = batchscore.score(folder, model, "out", quiet=True, run_id="nightly-1")
    assert summary.run_id == "nightly-1"
    assert summary.batchscore_version == batchscore.__version__
    assert summary.model == model
    assert summary.backend == "onnx"
    assert summary.device == "cpu"
    assert summary.output == "out"
    assert summary.features == {"features": ["f0", "f1", "f2"]}
    assert summary.features_chosen_by == "the 3 floating-point columns"
    assert summary.keep == ["id", "name", "ts", "count"]
    assert summary.output_schema == [
        "id: int64", "name: string", "ts: timestamp[us]", "count: int32", "score: float",
    ]
    assert summary.rows_in_dataset == 13
    assert [s["rows_written"] for s in summary.shards] == [5, 0, 8]
    assert set(summary.batch_latency_ms) == {"p50", "p95", "p99", "max"}
    assert summary.wall_seconds is not None and summary.wall_seconds >= 0


def test_errors_are_raised_with_their_exit_status(data, tmp_path):
    path = data.write("a.parquet", data.table(3))
    with pytest.raises(ModelError) as info:
        batchscore.score(path, tmp_path / "nope.onnx", "out", quiet=True)
    assert str(info.value) == f"model {tmp_path / 'nope.onnx'} does not exist: fix --model"
    assert info.value.exit_status == ExitStatus.USAGE
    assert not os.path.exists("out")


def test_unknown_option_is_a_usage_error(scored):
    folder, _, model = scored
    with pytest.raises(UsageError) as info:
        batchscore.score(folder, model, "out", colour="blue", size=3)
    assert str(info.value) == "unknown option(s): colour, size"


def test_env_mapping_is_read_but_not_os_environ(scored, monkeypatch):
    folder, _, model = scored
    monkeypatch.setenv("BATCHSCORE_BATCH_SIZE", "2")
    summary = batchscore.score(folder, model, "a", quiet=True)
    assert summary.batch_size == 16384  # env=None: the process environment is not read

    summary = batchscore.score(folder, model, "b", quiet=True, env={"BATCHSCORE_BATCH_SIZE": "3"})
    assert (summary.batch_size, summary.batches) == (3, 5)


def test_options_take_lists_or_comma_strings(scored):
    folder, table, model = scored
    a = batchscore.score(folder, model, "a.parquet", features=["f*"], keep=["id"], quiet=True)
    b = batchscore.score(folder, model, "b.parquet", features="f0,f1,f2", keep="id", quiet=True)
    assert a.features == b.features == {"features": ["f0", "f1", "f2"]}
    assert pq.read_table("a.parquet").equals(pq.read_table("b.parquet"))
    assert pq.read_table("a.parquet").column_names == ["id", "score"]


def test_dry_run_returns_the_plan_and_writes_nothing(scored, capsys):
    folder, _, model = scored
    summary = batchscore.score(folder, model, "out", dry_run=True, quiet=True)
    assert summary.status == "dry-run"
    assert summary.exit_code == 0
    assert summary.rows_written == 0
    assert not os.path.exists("out")
    assert "output schema:" in capsys.readouterr().err


def test_allow_empty_returns_an_empty_summary(model):
    summary = batchscore.score("nothing/*.parquet", model, "out", allow_empty=True, quiet=True)
    assert summary.status == "empty"
    assert summary.exit_code == 0
    assert summary.warnings == [
        "no input matches nothing/*.parquet; nothing to do (--allow-empty)"
    ]
    assert not os.path.exists("out")


def test_default_output_is_next_to_the_cwd(scored):
    folder, table, model = scored
    summary = batchscore.score(folder, model, quiet=True)
    assert summary.output == "shards-scored"
    assert output_files("shards-scored") == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    assert_predictions(read_output("shards-scored"), table, reference(model, table))


def test_a_second_run_scores_the_same(scored):
    folder, table, model = scored
    batchscore.score(folder, model, "one.parquet", quiet=True)
    batchscore.score(folder, model, "two.parquet", quiet=True, batch_size=2)
    one, two = pq.read_table("one.parquet"), pq.read_table("two.parquet")
    assert one.drop_columns(["score"]).equals(two.drop_columns(["score"]))
    assert_predictions(two, one, {"score": one.column("score").to_numpy()})


def test_progress_bar_goes_to_stderr_not_stdout(scored, capsys):
    folder, _, model = scored
    batchscore.score(folder, model, "out")  # not quiet: a tqdm bar
    out = capsys.readouterr()
    assert out.out == ""
