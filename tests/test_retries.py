"""--retries (a run that fails with a retryable error is rerun, resuming) and
--timeout (a hung model call ends the run with exit 1 instead of hanging)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq

import batchscore
from tests.helpers import assert_predictions, read_output, reference


def _fail_once_on_write(monkeypatch):
    original = pq.ParquetWriter.write_table
    calls = {"n": 0}

    def write_table(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard's rows: the first shard is committed by then
            raise OSError(errno.EIO, "Input/output error")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", write_table)
    return calls


def test_a_failed_write_is_retried_and_resumes_to_the_clean_result(data, model, monkeypatch):
    folder, table = data.shards("in", [4, 5, 6])
    calls = _fail_once_on_write(monkeypatch)
    summary = batchscore.score(folder, model, "out", batch_size=4, retries=2, quiet=True)
    assert calls["n"] >= 3
    assert summary.exit_code == 0 and summary.status == "ok"
    assert summary.shards_skipped == 1  # the shard committed before the failure was not redone
    assert_predictions(read_output("out"), table, reference(model, table))
    assert os.path.exists("out/_SUCCESS")


def test_without_retries_the_same_failure_exits_1(cli, data, model, monkeypatch):
    folder, _ = data.shards("in", [4, 5, 6])
    _fail_once_on_write(monkeypatch)
    msg = cli.fails(folder, "--model", model, "--output", "out", "--batch-size", "4", code=1)
    assert msg == "cannot write output out: Input/output error: choose another --output or fix its permissions"
    assert not os.path.exists("out/_SUCCESS")


def test_errors_a_retry_cannot_fix_are_not_retried(cli, data, model):
    folder, _ = data.shards("in", [3])
    assert cli.fails(folder, "--model", model, "--features", "nope", "--retries", "3", code=2).startswith(
        "--features: no column matches nope"
    )


def test_retries_and_timeout_are_validated(cli, data, model):
    folder, _ = data.shards("in", [3])
    assert cli.fails(folder, "--model", model, "--retries", "-1", code=2) == "--retries must be 0 or more, got -1"
    assert cli.fails(folder, "--model", model, "--timeout", "0", code=2) == (
        "--timeout must be a positive number of seconds, got 0.0"
    )


def test_a_hung_model_call_times_out_with_exit_1(tmp_path, data, model):
    # A real subprocess: the watchdog ends the process, as it must for a call stuck in native code.
    folder, _ = data.shards("in", [3, 3])
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        import batchscore.backends.onnx as onnx_backend
        original = onnx_backend.OnnxBackend.predict
        def hang(self, feeds):
            time.sleep(60)  # stands for a model call that never returns
            return original(self, feeds)
        onnx_backend.OnnxBackend.predict = hang
        from batchscore.cli import main
        sys.argv = ["batchscore"] + sys.argv[1:]
        main()
    """))
    report = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(script), "run", folder, "--model", model, "--output", "out", "--timeout", "1",
         "--report", str(report), "--quiet"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line == (
        "batchscore: error: the model call on batch 1 did not finish within --timeout 1 s; the run stopped "
        "(committed shards are kept): check the model or the output, then rerun with --resume"
    )
    rep = json.loads(report.read_text())
    assert (rep["status"], rep["exit_code"]) == ("failed", 1)
    assert not os.path.exists("out/_SUCCESS")
