"""SIGTERM and SIGINT on a real run (issue 5).

``python -m batchscore run`` runs as a subprocess (--batch-size 1 keeps it
going for seconds); the signal lands before the first shard commits or after
a few have. The run must exit 130 within a few seconds, leave nothing
half-written looking complete (every visible file recorded in the manifest,
no temporary file, no _SUCCESS), say "interrupted" in --report, release its
lock, and a ``--resume`` run must finish to exactly a clean run's output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.lock import lock_path
from tests.helpers import all_files, assert_predictions, column_numpy, output_files, read_output, reference

SHARDS = 10
ROWS = 300  # per shard: about 0.3 s each at --batch-size 1


def manifest(out: str) -> dict:
    try:
        return json.load(open(os.path.join(out, "_batchscore_manifest.json")))
    except (OSError, ValueError):
        return {"shards": {}}


def writing(out: str) -> bool:
    """The writer has started the first shard's file: scoring is under way."""
    return any(f.startswith(".") and ".tmp-" in f for f in os.listdir(out)) if os.path.isdir(out) else False


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "batchscore", "run", *map(str, args), "--batch-size", "1", "--quiet", "--report", "r.json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def interrupt(proc: subprocess.Popen, sig: int, ready, timeout: float = 60.0) -> tuple[float, str]:
    """Send ``sig`` once ``ready()``; returns (seconds from the signal to the exit, stderr)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the signal: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.005)
    proc.send_signal(sig)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=60)
    return time.monotonic() - t0, err


def assert_nothing_half_written(out: str, rows: int = ROWS) -> list[str]:
    """Every visible file is a committed shard; returns them."""
    files = all_files(out)
    assert "_SUCCESS" not in files
    assert [f for f in files if os.path.basename(f).startswith(".")] == [], files
    m = manifest(out)
    assert m["complete"] is False
    assert sorted(m["shards"]) == output_files(out)
    for name, rec in m["shards"].items():  # each committed file holds all its rows
        assert pq.read_metadata(os.path.join(out, name)).num_rows == rec["rows"] == rows
    return output_files(out)


def assert_same_output(out: str, clean: str) -> None:
    """Same files, same rows in the same order, the same predictions (to float tolerance:
    batch sizes differ) and the same columns as a clean run."""
    assert output_files(out) == output_files(clean)
    for name in output_files(clean):
        got, want = pq.read_table(os.path.join(out, name)), pq.read_table(os.path.join(clean, name))
        assert got.schema.remove_metadata() == want.schema.remove_metadata()
        assert got.drop_columns(["score"]).equals(want.drop_columns(["score"])), name
        np.testing.assert_allclose(column_numpy(got.column("score")), column_numpy(want.column("score")), rtol=1e-6)
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    assert manifest(out)["complete"] is True


@pytest.fixture
def job(data, model):
    folder, table = data.shards("in", [ROWS] * SHARDS)
    batchscore.score(folder, model, "clean", quiet=True)
    return folder, table, model


POINTS = {
    # The first shard's file is being written: nothing is committed yet.
    "before-first-commit": lambda: writing("out") and not manifest("out")["shards"],
    "after-3-commits": lambda: len(manifest("out")["shards"]) >= 3,
}


# (SIGTERM after commits and SIGINT during a resume are in the tests below.)
@pytest.mark.parametrize("sig, point", [(signal.SIGTERM, "before-first-commit"), (signal.SIGINT, "after-3-commits")],
                         ids=["SIGTERM-before-first-commit", "SIGINT-after-3-commits"])
def test_a_signal_stops_the_run_cleanly_and_resume_finishes_it(job, sig, point):
    folder, table, model = job
    proc = start(folder, "--model", model, "--output", "out")
    took, err = interrupt(proc, sig, POINTS[point])

    assert proc.returncode == 130, err
    assert took < 5.0, f"took {took:.1f} s to stop"
    done = assert_nothing_half_written("out")
    if point == "before-first-commit":
        assert len(done) < SHARDS  # the signal cannot have waited for the end
    else:
        assert 3 <= len(done) < SHARDS
    assert err.splitlines()[-1] == (
        f"batchscore: error: interrupted after {len(done)} of {SHARDS} shards; committed shards are kept: "
        "rerun with --resume to finish"
    )
    report = json.load(open("r.json"))
    assert (report["status"], report["exit_code"]) == ("interrupted", 130)
    assert report["shards_done"] == len(done)
    assert report["rows_read"] == report["rows_written"] == ROWS * len(done)
    assert not os.path.exists(lock_path("out"))

    summary = batchscore.score(folder, model, "out", if_exists="resume", quiet=True)
    assert (summary.status, summary.exit_code) == ("ok", 0)
    assert summary.shards_skipped == len(done)
    assert summary.rows_read == summary.rows_written == ROWS * (SHARDS - len(done))
    assert_same_output("out", "clean")
    assert_predictions(read_output("out"), table, reference(model, table))


def test_a_resume_can_itself_be_interrupted_and_resumed(job):
    folder, _, model = job
    first = start(folder, "--model", model, "--output", "out")
    interrupt(first, signal.SIGTERM, lambda: len(manifest("out")["shards"]) >= 2)
    assert first.returncode == 130
    before = len(manifest("out")["shards"])

    second = start(folder, "--model", model, "--output", "out", "--resume")
    _, err = interrupt(second, signal.SIGINT, lambda: len(manifest("out")["shards"]) >= before + 2)
    assert second.returncode == 130, err
    assert json.load(open("r.json"))["shards_skipped"] == before
    assert_nothing_half_written("out")

    batchscore.score(folder, model, "out", if_exists="resume", quiet=True)
    assert_same_output("out", "clean")


def test_a_signal_during_a_quarantine_run_then_resume_quarantines_each_bad_row_once(data, model):
    # Every shard holds one null f0; each input id ends up exactly once: scored or quarantined.
    for i in range(SHARDS):
        t = data.table(ROWS, i * ROWS)
        f0 = t.column("f0").to_pylist()
        f0[i * 7] = None
        data.write(f"in/part-{i:03d}.parquet", t.set_column(4, "f0", pa.array(f0, pa.float64())))
    folder = str(data.root / "in")
    proc = start(folder, "--model", model, "--output", "out", "--on-error", "quarantine")
    _, err = interrupt(proc, signal.SIGTERM, lambda: len(manifest("out")["shards"]) >= 3)
    assert proc.returncode == 130, err
    done = assert_nothing_half_written("out", rows=ROWS - 1)
    assert len(done) >= 3
    assert [f for f in all_files("out.quarantine") if os.path.basename(f).startswith(".")] == []
    assert not os.path.exists("out.quarantine/_SUCCESS")

    summary = batchscore.score(folder, model, "out", on_error="quarantine", if_exists="resume", quiet=True)
    assert summary.exit_code == 3
    out, q = read_output("out"), read_output("out.quarantine")
    assert sorted(q.column("id").to_pylist()) == [i * ROWS + i * 7 for i in range(SHARDS)]
    ids = out.column("id").to_pylist() + q.column("id").to_pylist()
    assert sorted(ids) == list(range(SHARDS * ROWS))
    assert set(q.column("reason").to_pylist()) == {"null in column 'f0'"}
