"""--report, the summary lines, JSON logs and the run id."""

from __future__ import annotations

import hashlib
import json
import os


import batchscore
from batchscore.report import RunSummary


def _report(path="r.json") -> dict:
    with open(path) as fh:
        return json.load(fh)


def test_report_holds_the_run(cli, scored):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--output", "out", "--report", "r.json", "--batch-size", "4",
            "--run-id", "rid-1", "--quiet")
    r = _report()
    assert r["status"] == "ok"
    assert r["exit_code"] == 0
    assert r["error"] is None
    assert r["run_id"] == "rid-1"
    assert r["model_sha256"] == hashlib.sha256(open(model, "rb").read()).hexdigest()
    assert r["batchscore_version"] == batchscore.__version__
    assert (r["rows_read"], r["rows_written"], r["rows_in_dataset"]) == (13, 13, 13)
    assert (r["shards_total"], r["shards_done"], r["shards_empty"]) == (3, 3, 1)
    assert (r["batch_size"], r["batch_size_source"], r["batches"]) == (4, "--batch-size", 4)
    assert set(r["batch_latency_ms"]) == {"p50", "p95", "p99", "max"}
    lat = r["batch_latency_ms"]
    assert 0 <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert len(r["batch_latencies_ms"]) == 4
    assert r["features"] == {"features": ["f0", "f1", "f2"]}
    assert r["output"] == "out"
    assert r["device"] == "cpu"
    assert [s["output"] for s in r["shards"]] == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    assert r["wall_seconds"] >= 0
    assert not [f for f in os.listdir(".") if f.startswith(".")]


def test_report_of_a_dry_run(cli, scored):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--dry-run", "--report", "r.json")
    r = _report()
    assert (r["status"], r["exit_code"], r["rows_written"]) == ("dry-run", 0, 0)
    assert r["output_schema"][-1] == "score: float"


def test_report_of_an_empty_run(cli, model):
    cli.run("nothing/*.csv", "--model", model, "--allow-empty", "--report", "r.json")
    r = _report()
    assert (r["status"], r["exit_code"], r["shards_total"]) == ("empty", 0, 0)


def test_report_that_cannot_be_written_is_a_warning(cli, scored):
    folder, _, model = scored
    open("file", "w").close()
    res = cli.run(folder, "--model", model, "--output", "out", "--report", "file/r.json")
    assert "batchscore: warning: cannot write --report file/r.json: Not a directory" in res.stderr.splitlines()


def test_run_id_is_recorded_everywhere(cli, scored):
    import pyarrow.parquet as pq

    folder, _, model = scored
    cli.run(folder, "--model", model, "--output", "out", "--run-id", "2026-12-04-nightly", "--report", "r.json",
            "--quiet")
    assert _report()["run_id"] == "2026-12-04-nightly"
    assert json.load(open("out/_batchscore_manifest.json"))["run_id"] == "2026-12-04-nightly"
    meta = json.loads(pq.read_schema("out/part-000.parquet").metadata[b"batchscore"])
    assert meta["run_id"] == "2026-12-04-nightly"


def test_json_logs_are_one_object_a_line_with_fields(cli, scored):
    folder, _, model = scored
    res = cli.run(folder, "--model", model, "--output", "out", "--log-format", "json")
    records = [json.loads(line) for line in res.stderr.splitlines()]
    assert [r["level"] for r in records] == ["info"] * len(records)
    assert records[0]["msg"].startswith("device: cpu (")
    assert records[-1]["summary"]["batchscore_version"] == batchscore.__version__
    assert "batch_latencies_ms" not in records[-1]["summary"]
    assert all(r["ts"].endswith("Z") for r in records)


def test_summary_rows():
    s = RunSummary(run_id="r", batchscore_version="0", status="ok", rows_read=10, rows_written=10,
                   shards_total=2, shards_done=2, batch_size=4, batch_size_source="--batch-size", batches=3,
                   device="cpu", backend="onnx", threads=2, features={"x": ["a", "b"]},
                   features_chosen_by="--features", output="out")
    s.started_at = 0.0
    s.record_latency(0.001)
    s.record_latency(0.003)
    s.finish()
    rows = dict(s.rows())
    assert rows["status"] == "ok"
    assert rows["shards"] == "2/2"
    assert rows["batches"] == "3 of 4 rows (--batch-size)"
    assert rows["features"] == "a, b (--features)"
    assert rows["batch latency p50/p95/p99"] == "2.0 / 2.9 / 3.0 ms"
    assert s.batch_latency_ms == {"p50": 2.0, "p95": 2.9, "p99": 2.98, "max": 3.0}


def test_quiet_hides_warnings_too(cli, data, models):
    model = models.linear(batch=4)
    path = data.write("a.parquet", data.table(5))
    res = cli.run(path, "--model", model, "--output", "out", "--batch-size", "3", "--quiet")
    assert res.stderr == ""
