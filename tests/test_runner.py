"""The model stage: out-of-memory back-off (a batch that does not fit is halved
and retried, no row lost or repeated), model replicas (``--device gpu:all``) and
``--batch-size auto``.

Out-of-memory errors here are real: onnxruntime on the CPU with its memory arena
capped at 4 MiB (tests/plugins/smallmem_backend.py) fails a big batch with its
own BFCArena error, as it does on a GPU.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from onnx import TensorProto, helper, numpy_helper

import batchscore
from batchscore.autobatch import probe_batch_size
from batchscore.backends import ENTRY_POINT_GROUP, Device, looks_like_out_of_memory
from batchscore.devices import Gpu
from batchscore.errors import ExitStatus, ModelError
from batchscore.runner import ModelRunner, map_in_order
from tests.helpers import read_output
from tests.plugins.smallmem_backend import SmallMemoryBackend

HIDDEN = 256  # 1 KiB of activations a row: ~2,000 rows fill the 4 MiB arena


@pytest.fixture
def wide_model(tmp_path) -> str:
    """x float[N,3] → relu(x·W1) float[N,256] → ·W2 → y float[N,1]."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(3, HIDDEN)).astype(np.float32)
    w2 = rng.normal(size=(HIDDEN, 1)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "wide.onnx"
    path.write_bytes(m.SerializeToString())
    return str(path)


def reference(model: str, x: np.ndarray) -> np.ndarray:
    """onnxruntime's own output, uncapped, in one call."""
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


@pytest.fixture
def smallmem(tmp_path, monkeypatch):
    """Register the capped-memory backend through the entry-point group, as pip would."""
    site = tmp_path / "site"
    info = site / "smallmem_dist-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: smallmem-dist\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nsmallmem = tests.plugins.smallmem_backend:SmallMemoryBackend\n"
    )
    monkeypatch.syspath_prepend(str(site))
    SmallMemoryBackend.calls = []
    return SmallMemoryBackend


def rows_table(n: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(start)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return pa.table({"id": np.arange(start, start + n, dtype=np.int64),
                     "f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2]})


# -- the runtime's error is recognised ---------------------------------------------
def test_onnxruntime_arena_exhaustion_is_recognised_as_out_of_memory(wide_model, smallmem):
    backend = smallmem(wide_model, Device("cpu"), threads=1)
    with pytest.raises(Exception) as info:
        backend.predict({"x": np.ones((50_000, 3), np.float32)})
    assert looks_like_out_of_memory(info.value), str(info.value)[:300]
    assert backend.is_out_of_memory(info.value)


@pytest.mark.parametrize("text,oom", [
    ("CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes", True),
    ("Failed to allocate memory for requested buffer of size 1048576", True),
    ("CUDNN_STATUS_ALLOC_FAILED", True),
    ("Got invalid dimensions for input: x", False),
    ("division by zero", False),
])
def test_out_of_memory_messages(text, oom):
    assert looks_like_out_of_memory(RuntimeError(text)) is oom


def test_memory_error_and_oom_classes_count():
    class OutOfMemoryError(RuntimeError):
        pass

    assert looks_like_out_of_memory(MemoryError())
    assert looks_like_out_of_memory(OutOfMemoryError("x"))


# -- halving ---------------------------------------------------------------------
def test_a_batch_that_runs_out_of_memory_is_halved_and_equals_one_uncapped_call(wide_model, smallmem):
    backend = smallmem(wide_model, Device("cpu"), threads=1)
    runner = ModelRunner([backend])
    x = np.random.default_rng(1).normal(size=(20_000, 3)).astype(np.float32)
    out = runner.predict({"x": x}, len(x))
    np.testing.assert_allclose(out["y"], reference(wide_model, x), rtol=1e-5, atol=1e-5)
    assert out["y"].shape == (20_000, 1)
    assert runner.oom_events >= 1 and runner.max_rows is not None and runner.max_rows < 20_000
    # Every row went through exactly once, in order: the successful calls add up.
    ok = [r for _, r in smallmem.calls][-(runner.calls - runner.oom_events):]
    assert sum(ok) == 20_000
    # The size that fitted is kept: the next big batch is cut up front, no new OOM.
    before = runner.oom_events
    out2 = runner.predict({"x": x[:9000]}, 9000)
    np.testing.assert_allclose(out2["y"], reference(wide_model, x[:9000]), rtol=1e-5, atol=1e-5)
    assert runner.oom_events == before
    assert "ran out of memory" in runner.describe_backoff()


def test_a_model_with_a_fixed_batch_cannot_be_split(wide_model, smallmem):
    backend = smallmem(wide_model, Device("cpu"), threads=1)
    runner = ModelRunner([backend], fixed_batch=50_000)
    with pytest.raises(ModelError, match="fixed at 50000 rows"):
        runner.predict({"x": np.ones((50_000, 3), np.float32)}, 50_000)


def test_one_row_that_does_not_fit_is_a_clear_error():
    class Huge(SmallMemoryBackend):
        def __init__(self):  # no model: every call fails as a GPU does when the model is too big
            self.device = Device("cuda", 0)

        def predict(self, feeds):
            raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")

    runner = ModelRunner([Huge()])
    with pytest.raises(ModelError, match="single row"):
        runner.predict({"x": np.ones((4, 3), np.float32)}, 4)
    assert runner.oom_events == 2  # 4 → 2 → 1 rows, then it gives up


def test_other_model_errors_are_not_retried(wide_model, smallmem):
    runner = ModelRunner([smallmem(wide_model, Device("cpu"), threads=1)])
    with pytest.raises(Exception, match="(?i)invalid|dimension|shape"):
        runner.predict({"x": np.ones((10, 4), np.float32)}, 10)
    assert runner.oom_events == 0


def test_a_run_that_runs_out_of_memory_writes_every_row_once(tmp_path, data, wide_model, smallmem, cli):
    folder, table = data.shards("oom", [15_000, 0, 9_000])
    out = tmp_path / "out"
    summary = batchscore.score(folder, wide_model, str(out), backend="smallmem", batch_size=12_000,
                               features=["f0", "f1", "f2"], keep=["id"], quiet=True)
    assert summary.oom_events >= 1 and summary.rows_per_call_after_oom < 12_000
    assert summary.rows_written == table.num_rows == 24_000
    assert summary.model_calls > summary.batches
    assert any("ran out of memory" in w for w in summary.warnings)
    got = read_output(out).sort_by("id")
    assert got.column("id").to_pylist() == list(range(24_000))
    x = np.stack([table.column(c).to_numpy() for c in ("f0", "f1", "f2")], axis=1).astype(np.float32)
    ids = table.column("id").to_numpy()
    want = reference(wide_model, x[np.argsort(ids)])
    np.testing.assert_allclose(np.asarray(got.column("y").to_pylist()).reshape(-1, 1), want, rtol=1e-5, atol=1e-5)

    res = cli.run(folder, "--model", wide_model, "--backend", "smallmem", "--batch-size", "12000",
                  "--features", "f0,f1,f2", "--output", str(tmp_path / "out2"))
    assert "out of memory" in res.stderr and "rows a call" in res.stderr


# -- replicas ----------------------------------------------------------------------
def test_replicas_share_the_batches_and_results_keep_their_order(wide_model, smallmem):
    backends = [smallmem(wide_model, Device("cuda", i), threads=1) for i in range(2)]
    runner = ModelRunner(backends)
    assert runner.parallel == 2
    x = np.random.default_rng(2).normal(size=(3000, 3)).astype(np.float32)
    items = [(lo, min(3000, lo + 100)) for lo in range(0, 3000, 100)]
    got = list(map_in_order(runner, items, lambda it: ({"x": x[it[0]:it[1]]}, it[1] - it[0])))
    runner.close()
    assert [it for it, _, _ in got] == items
    y = np.concatenate([p["y"] for _, p, _ in got])
    np.testing.assert_allclose(y, reference(wide_model, x), rtol=1e-5, atol=1e-5)
    used = {d for d, _ in smallmem.calls}
    assert used == {"cuda:0", "cuda:1"}, used


def test_device_gpu_all_makes_one_replica_per_gpu(tmp_path, data, wide_model, smallmem, fake_hardware):
    fake_hardware(gpus=[Gpu(0, "Fake A", 1024), Gpu(1, "Fake B", 1024), Gpu(2, "Fake C", 1024)])
    folder, table = data.shards("rep", [700, 500, 800])
    summary = batchscore.score(folder, wide_model, str(tmp_path / "out"), backend="smallmem", device="gpu:all",
                               batch_size=64, features=["f0", "f1", "f2"], keep=["id"], quiet=True)
    assert summary.replicas == ["cuda:0", "cuda:1", "cuda:2"]
    assert summary.rows_written == 2000
    assert summary.stage_cpu_seconds["replicas"] > 0
    assert {d for d, _ in smallmem.calls} == {"cuda:0", "cuda:1", "cuda:2"}
    got = read_output(tmp_path / "out")
    assert sorted(got.column("id").to_pylist()) == list(range(2000))
    # Within each shard the rows keep their input order.
    assert got.column("id").to_pylist() == table.column("id").to_pylist()


def test_device_gpu_all_without_a_gpu_is_a_usage_error(data, model, cli, fake_hardware):
    fake_hardware(gpus=[])
    folder, _ = data.shards("s", [5])
    err = cli.fails(folder, "--model", model, "--device", "gpu:all", code=ExitStatus.USAGE)
    assert "--device gpu:all" in err and "no NVIDIA GPU" in err


# -- --batch-size auto -------------------------------------------------------------
def test_the_probe_stops_below_the_first_size_that_runs_out_of_memory(wide_model, smallmem):
    backend = smallmem(wide_model, Device("cpu"), threads=1)
    probe = probe_batch_size(backend.predict, lambda n: {"x": np.zeros((n, 3), np.float32)},
                             backend.is_out_of_memory, start=256, min_gain=-1.0, max_call_s=60, budget_s=60)
    assert probe.tried[-1][1] is None  # the last size tried ran out of memory
    assert probe.chosen == probe.tried[-2][0] and probe.chosen < probe.tried[-1][0]
    backend.predict({"x": np.zeros((probe.chosen, 3), np.float32)})  # and the chosen size fits
    assert "ran out of device memory" in probe.describe()


def test_the_probe_comes_down_when_the_start_does_not_fit(wide_model, smallmem):
    backend = smallmem(wide_model, Device("cpu"), threads=1)
    probe = probe_batch_size(backend.predict, lambda n: {"x": np.zeros((n, 3), np.float32)},
                             backend.is_out_of_memory, start=65_536)
    assert probe.tried[0] == (65_536, None)
    assert probe.chosen < 65_536
    backend.predict({"x": np.zeros((probe.chosen, 3), np.float32)})


def test_the_probe_stops_where_throughput_stops_growing():
    """A device that takes 1 ms a call up to 1,024 rows and scales linearly past it."""
    now = [0.0]

    def predict(feeds):
        n = len(feeds["x"])
        now[0] += 0.001 * max(1, n / 1024)

    probe = probe_batch_size(predict, lambda n: {"x": np.zeros((n, 1))}, lambda e: False,
                             start=64, per_batch_s=0.0, clock=lambda: now[0])
    assert probe.chosen == 1024
    assert "grew less than" in probe.reason


def test_the_probe_respects_the_row_cap_and_the_call_time():
    now = [0.0]

    def predict(feeds):
        now[0] += 0.001 * len(feeds["x"])  # 1 ms a row: slow

    probe = probe_batch_size(predict, lambda n: {"x": np.zeros((n, 1))}, lambda e: False, start=64,
                             per_batch_s=0.1, max_call_s=0.5, clock=lambda: now[0])
    assert probe.chosen == 512 and "one call took" in probe.reason

    def fixed_cost(feeds):
        now[0] += 0.001  # 1 ms a call whatever its size: bigger is always faster

    probe = probe_batch_size(fixed_cost, lambda n: {"x": np.zeros((n, 1))}, lambda e: False,
                             start=64, max_rows=300, clock=lambda: now[0])
    assert probe.chosen == 300 and [n for n, _ in probe.tried] == [64, 128, 256, 300]


def test_batch_size_auto_end_to_end(tmp_path, data, wide_model, smallmem, cli):
    folder, table = data.shards("auto", [6000, 3000])
    cli.run(folder, "--model", wide_model, "--backend", "smallmem", "--batch-size", "auto",
            "--features", "f0,f1,f2", "--keep", "id", "--output", str(tmp_path / "out"),
            "--report", str(tmp_path / "r.json"))
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["batch_size_source"].startswith("auto:")
    assert rep["rows_written"] == 9000
    # The chosen size fitted the 4 MiB arena in the probe (confirmed right after the
    # out-of-memory error); should the run still hit one, it is halved, not lost.
    assert rep["batch_size"] <= 2048 and "ran out of device memory" in rep["batch_size_source"]
    if rep["oom_events"] == 0:
        assert rep["model_calls"] == rep["batches"]
    got = read_output(tmp_path / "out").sort_by("id")
    x = np.stack([table.column(c).to_numpy() for c in ("f0", "f1", "f2")], axis=1).astype(np.float32)
    want = reference(wide_model, x[np.argsort(table.column("id").to_numpy())])
    np.testing.assert_allclose(np.asarray(got.column("y").to_pylist()).reshape(-1, 1), want, rtol=1e-5, atol=1e-5)


def test_batch_size_must_be_a_number_or_auto(data, model, cli):
    folder, _ = data.shards("s", [5])
    err = cli.fails(folder, "--model", model, "--batch-size", "lots", code=ExitStatus.USAGE)
    assert "--batch-size" in err and "auto" in err


def test_batch_size_auto_on_the_cpu_with_onnx(tmp_path, data, model):
    folder, table = data.shards("s", [50, 70])
    summary = batchscore.score(folder, model, str(tmp_path / "out"), batch_size="auto", quiet=True)
    assert summary.batch_size_source.startswith("auto:")
    assert summary.batch_size == 128  # the dataset's 120 rows, rounded up to a power of two
    assert summary.rows_written == 120


def test_batch_size_auto_from_the_environment_and_the_config(tmp_path):
    from batchscore.job import build_job

    base = {"inputs": ["x.parquet"], "model": "m.onnx"}
    assert build_job(base, env={"BATCHSCORE_BATCH_SIZE": "auto"}).batch_size == "auto"
    assert build_job(base, env={"BATCHSCORE_BATCH_SIZE": "512"}).batch_size == 512
    cfg = tmp_path / "b.toml"
    cfg.write_text('batch_size = "auto"\n')
    assert build_job(base, config=cfg).batch_size == "auto"
    cfg.write_text("batch_size = 2048\n")
    assert build_job(base, config=cfg).batch_size == 2048
    assert build_job({**base, "batch_size": "AUTO"}).batch_size == "auto"


def test_out_of_memory_splits_keep_bad_output_rows_on_the_right_ids(tmp_path, data, wide_model, smallmem):
    """NaN features (allowed) give NaN predictions; with batches split after an OOM,
    exactly those rows are quarantined and every other row is written once."""
    t = rows_table(12_000)
    f0 = t.column("f0").to_numpy().copy()
    bad_ids = [5, 4_321, 7_777, 11_999]
    f0[bad_ids] = np.nan
    t = t.set_column(t.schema.get_field_index("f0"), "f0", pa.array(f0))
    folder = tmp_path / "nan"
    folder.mkdir()
    import pyarrow.parquet as pq

    pq.write_table(t.slice(0, 7_000), folder / "a.parquet")
    pq.write_table(t.slice(7_000), folder / "b.parquet")
    summary = batchscore.score(str(folder), wide_model, str(tmp_path / "out"), backend="smallmem", batch_size=12_000,
                               features=["f0", "f1", "f2"], keep=["id"], allow_nan=True, on_error="quarantine",
                               quiet=True)
    assert summary.oom_events >= 1
    assert summary.rows_quarantined == len(bad_ids) and summary.rows_written == 12_000 - len(bad_ids)
    got = read_output(tmp_path / "out")
    assert sorted(got.column("id").to_pylist()) == sorted(set(range(12_000)) - set(bad_ids))
    quarantined = read_output(summary.quarantine)
    assert sorted(quarantined.column("id").to_pylist()) == bad_ids


def tile_model(tmp_path, name: str, batch, repeats: int) -> str:
    """x float[batch,3] → sum(tile(x, repeats)) float[batch,1]: 12·repeats bytes a row inside."""
    g = helper.make_graph(
        [helper.make_node("Tile", ["x", "reps"], ["t"]),
         helper.make_node("ReduceSum", ["t", "axes"], ["y"], keepdims=1)],
        "tile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])],
        [numpy_helper.from_array(np.array([1, repeats], np.int64), "reps"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return str(path)


def test_cli_a_row_that_does_not_fit_exits_2_with_one_line(tmp_path, data, smallmem, cli):
    model = tile_model(tmp_path, "huge.onnx", None, 700_000)  # 8.4 MB a row > the 4 MiB arena
    folder, _ = data.shards("s", [3])
    err = cli.fails(folder, "--model", model, "--backend", "smallmem", "--features", "f0,f1,f2",
                    "--output", str(tmp_path / "out"), code=ExitStatus.USAGE)
    assert err.startswith("the model ran out of memory on cpu with a single row: it does not fit; "
                          "use --device cpu or a device with more memory (")
    err = cli.fails(folder, "--model", model, "--backend", "smallmem", "--features", "f0,f1,f2",
                    "--batch-size", "auto", "--output", str(tmp_path / "out2"), code=ExitStatus.USAGE)
    assert err == ("--batch-size auto: the model runs out of device memory even on 1 row; "
                   "use a device with more memory, or --device cpu")


def test_cli_a_fixed_batch_that_does_not_fit_exits_2_with_one_line(tmp_path, data, smallmem, cli):
    model = tile_model(tmp_path, "fixed.onnx", 64, 20_000)  # 15 MB a batch of 64
    folder, _ = data.shards("s", [10])
    err = cli.fails(folder, "--model", model, "--backend", "smallmem", "--features", "f0,f1,f2",
                    "--output", str(tmp_path / "out"), code=ExitStatus.USAGE)
    assert err.startswith("the model ran out of memory on cpu and its batch size is fixed at 64 rows, "
                          "so the batch cannot be split: use a smaller model or a device with more memory (")
