"""The streaming engine: the Rebatcher, a property test over random shard and
batch sizes, interrupts (SIGINT/SIGTERM) and failures in the stages."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscore
from batchscore.backends.onnx import OnnxBackend
from batchscore.pipeline import Rebatcher
from tests.helpers import Data, Models, all_files, assert_predictions, output_files, read_output, reference


def _ids(*values: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array(values, pa.int64())], names=["id"])


def _flat(items) -> list[tuple[list[tuple[int, list[int]]], int, list[int]]]:
    return [([(s, b.column(0).to_pylist()) for s, b in parts], rows, ends) for parts, rows, ends in items]


# -- Rebatcher --------------------------------------------------------------------------------
def test_rebatcher_cuts_fixed_batches_across_shards():
    rb = Rebatcher(3)
    got = []
    got += _flat(rb.end_shard(0))  # an empty first shard ends at once
    got += _flat(rb.add(1, _ids(0, 1)))
    got += _flat(rb.end_shard(1))
    got += _flat(rb.end_shard(2))  # empty, after rows still buffered
    got += _flat(rb.add(3, _ids(2, 3, 4, 5)))
    got += _flat(rb.end_shard(3))
    got += _flat(rb.add(4, _ids(6)))
    got += _flat(rb.end_shard(4))
    got += _flat(rb.flush())
    assert got == [
        ([], 0, [0]),
        ([(1, [0, 1]), (3, [2])], 3, [1, 2]),
        ([(3, [3, 4, 5])], 3, []),
        ([], 0, [3]),
        ([(4, [6])], 1, [4]),
    ]


def test_rebatcher_splits_a_large_piece():
    rb = Rebatcher(2)
    got = _flat(rb.add(0, _ids(*range(5)))) + _flat(rb.end_shard(0)) + _flat(rb.flush())
    assert got == [
        ([(0, [0, 1])], 2, []),
        ([(0, [2, 3])], 2, []),
        ([(0, [4])], 1, [0]),
    ]


def test_rebatcher_flush_of_nothing_yields_nothing():
    rb = Rebatcher(4)
    assert list(rb.flush()) == []
    assert _flat(rb.add(0, _ids())) == []


@settings(max_examples=200, deadline=None)
@given(
    shards=st.lists(st.lists(st.integers(0, 6), max_size=4), min_size=1, max_size=6),
    size=st.integers(1, 9),
)
def test_rebatcher_property(shards, size):
    """Rows come out once, in order, in batches of exactly ``size`` (the last may be
    short); each shard's end is reported once, in order, with or after its last row."""
    rb = Rebatcher(size)
    items, expected, next_id = [], [], 0
    for shard, pieces in enumerate(shards):
        for n in pieces:
            batch = _ids(*range(next_id, next_id + n))
            expected += [(shard, i) for i in range(next_id, next_id + n)]
            next_id += n
            items += _flat(rb.add(shard, batch))
        items += _flat(rb.end_shard(shard))
    items += _flat(rb.flush())

    rows = [(s, i) for parts, _, _ in items for s, ids in parts for i in ids]
    assert rows == expected
    sized = [rows_n for _, rows_n, _ in items if rows_n]
    assert all(n == size for n in sized[:-1])
    assert all(n == sum(len(ids) for _, ids in parts) for parts, n, _ in items)
    ends = [s for _, _, e in items for s in e]
    assert ends == list(range(len(shards)))
    seen_rows = 0
    for parts, n, e in items:  # a shard ends only once all its rows were handed out
        seen_rows += n
        for s in e:
            assert all(sh != s for sh, _ in rows[seen_rows:])


# -- end to end, random shapes -------------------------------------------------------------------
@pytest.fixture(scope="module")
def module_model(tmp_path_factory) -> str:
    return Models(tmp_path_factory.mktemp("models")).linear(k=2, shape="matrix")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    batch_size=st.integers(1, 30),
    row_group=st.integers(1, 8),
)
def test_every_row_once_with_its_prediction(module_model, sizes, batch_size, row_group):
    with tempfile.TemporaryDirectory() as tmp:
        data = Data(Path(tmp) / "data")
        folder, table = data.shards("in", sizes, row_group_size=row_group)
        out = Path(tmp) / "out"
        summary = batchscore.score(folder, module_model, out, batch_size=batch_size, quiet=True)

        assert summary.rows_written == sum(sizes)
        assert output_files(out) == [f"part-{i:03d}.parquet" for i in range(len(sizes))]
        start = 0
        for i, n in enumerate(sizes):
            ids = pq.read_table(out / f"part-{i:03d}.parquet").column("id").to_pylist()
            assert ids == list(range(start, start + n))
            start += n
        if sum(sizes):
            assert_predictions(read_output(out), table, reference(module_model, table))


def test_large_batches_across_many_row_groups(data, model):
    folder, table = data.shards("in", [3000, 1, 2500], row_group_size=700)
    summary = batchscore.score(folder, model, "out", batch_size=1024, prefetch=1, quiet=True)
    assert summary.batches == 6
    assert_predictions(read_output("out"), table, reference(model, table))


# -- interrupts and failures ---------------------------------------------------------------------
def _fail_on_call(monkeypatch, n: int, exc: BaseException):
    original = OnnxBackend.predict
    calls = {"n": 0}

    def predict(self, feeds):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return original(self, feeds)

    monkeypatch.setattr(OnnxBackend, "predict", predict)


def test_interrupt_keeps_committed_shards_and_writes_no_success(cli, data, model, monkeypatch):
    folder, _ = data.shards("in", [4, 4, 4])
    _fail_on_call(monkeypatch, 2, KeyboardInterrupt())
    assert cli.fails(folder, "--model", model, "--output", "out", "--batch-size", "4", code=130) == (
        "interrupted after 1 of 3 shards; committed shards are kept: rerun with --resume to finish"
    )
    assert all_files("out") == ["_batchscore_manifest.json", "part-000.parquet"]
    manifest = json.load(open("out/_batchscore_manifest.json"))
    assert manifest["complete"] is False
    assert list(manifest["shards"]) == ["part-000.parquet"]
    assert pq.read_table("out/part-000.parquet").column("id").to_pylist() == [0, 1, 2, 3]


def test_interrupt_of_a_single_file_output_leaves_nothing(cli, data, model, monkeypatch):
    folder, _ = data.shards("in", [4, 4])
    _fail_on_call(monkeypatch, 2, KeyboardInterrupt())
    cli.fails(folder, "--model", model, "--output", "all.parquet", "--batch-size", "4", code=130)
    assert os.listdir(".") == []


def test_sigterm_stops_the_run_with_130(data, model):
    folder, _ = data.shards("in", [4, 4, 4])
    script = (
        "import os, signal, sys\n"
        "from batchscore.backends.onnx import OnnxBackend\n"
        "original, calls = OnnxBackend.predict, []\n"
        "def predict(self, feeds):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return original(self, feeds)\n"
        "OnnxBackend.predict = predict\n"
        "from batchscore.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, "run", folder, "--model", model, "--output", "out", "--batch-size", "4"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "batchscore: error: interrupted after 1 of 3 shards; committed shards are kept: rerun with --resume to finish"
    )
    assert not os.path.exists("out/_SUCCESS")
    assert [f for f in all_files("out") if os.path.basename(f).startswith(".")] == []


def test_a_model_error_mid_run_is_reported_and_publishes_nothing(cli, data, model, monkeypatch):
    folder, _ = data.shards("in", [4, 4])
    _fail_on_call(monkeypatch, 2, RuntimeError("the runtime fell over"))
    res = cli("run", folder, "--model", model, "--output", "out", "--batch-size", "4")
    assert res.exit_code == 70
    assert res.stderr.splitlines()[-1] == (
        "batchscore: error: internal error (a bug, please report it): RuntimeError: the runtime fell over"
    )
    assert not os.path.exists("out/_SUCCESS")


def test_disk_full_while_writing_exits_1(cli, data, model, monkeypatch):
    folder, _ = data.shards("in", [4, 4])
    original = pq.ParquetWriter.write_table  # the sink writes buffered row groups with write_table
    calls = {"n": 0}

    def write_table(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    assert cli.fails(folder, "--model", model, "--output", "out", "--batch-size", "4", code=1) == (
        "cannot write output out: No space left on device: choose another --output or fix its permissions"
    )
    assert not os.path.exists("out/_SUCCESS")
    assert [f for f in all_files("out") if os.path.basename(f).startswith(".")] == []


def test_a_reader_error_in_a_later_shard_stops_the_run(cli, data, model):
    folder, _ = data.shards("in", [4])
    t = data.table(4, 4)
    t = t.set_column(t.schema.get_field_index("f2"), "f2", pa.array([1.0, None, None, 2.0]))
    bad = data.write("in/part-001.parquet", t)
    assert cli.fails(folder, "--model", model, "--output", "out", "--batch-size", "2", code=2) == (
        f"{bad}: null in column 'f2' at row 1 (2 bad row(s) in this part of the file): "
        "fix the data, or pass --on-error skip|quarantine"
    )
    assert "part-001.parquet" not in os.listdir("out")
    assert not os.path.exists("out/_SUCCESS")


def test_prefetch_one_and_tiny_batches(data, model):
    folder, table = data.shards("in", [7, 0, 5])
    batchscore.score(folder, model, "out", batch_size=1, prefetch=1, quiet=True)
    assert_predictions(read_output("out"), table, reference(model, table))


def test_threads_budget_is_recorded(scored):
    folder, _, model = scored
    summary = batchscore.score(folder, model, "out", threads=1, quiet=True)
    assert summary.threads == 1
    assert np.isfinite(summary.batch_latency_ms["p99"])
