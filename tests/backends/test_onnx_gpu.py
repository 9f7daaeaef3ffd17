"""The ONNX backend's GPU path, tested as far as the CPU build of onnxruntime allows:
provider selection (CUDA, TensorRT, precision) and its one-line errors; the check
that onnxruntime did not silently drop the CUDA provider; I/O binding, which runs
the same code on the CPU when forced, against plain ``session.run``; and what a
machine with a GPU but the CPU build says. A real-CUDA class at the end runs only
where onnxruntime-gpu and a GPU are both present (CUDA-ONNX is not yet measured)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import batchscore
from batchscore import devices
from batchscore.backends import Device
from batchscore.backends import onnx as onnx_backend
from batchscore.backends.onnx import CPU_EP, CUDA_EP, TRT_EP, IoBinder, OnnxBackend, providers_for, trt_cache_dir
from batchscore.devices import Gpu
from batchscore.errors import BatchscoreError, DeviceError, ExitStatus, ModelError, UsageError
from batchscore.job import Job
from tests.helpers import Models, assert_predictions, read_output, reference

HAS_CUDA_EP = CUDA_EP in ort.get_available_providers()
REAL_SESSION = ort.InferenceSession
CUDA_OPTS = {"cudnn_conv_algo_search": "HEURISTIC"}
NO_CUDA = (
    "onnxruntime has no CUDA support (CUDAExecutionProvider missing: "
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu)"
)


def _fails(fn, cls, message):
    with pytest.raises(cls) as info:
        fn()
    assert str(info.value) == message
    assert "\n" not in str(info.value)
    assert info.value.exit_status == ExitStatus.USAGE
    return info.value


def _session(path):
    return REAL_SESSION(path, providers=[CPU_EP])


def _ref(path, feeds):
    sess = _session(path)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def _same(got: dict, want: dict):
    assert list(got) == list(want)
    for name, arr in want.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr, err_msg=name)


def _dynamic_model(models: Models) -> str:
    """``x`` float [N,3] → ``doubled`` (declared [?, ?]) and
    ``positive_at`` = NonZero(x > 0), int64 [2, K] with K known only at run time."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["doubled"]),
        helper.make_node("Greater", ["x", "zero"], ["pos"]),
        helper.make_node("NonZero", ["pos"], ["positive_at"]),
    ]
    return models.save(
        "dynamic.onnx",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [None, None]),
            helper.make_tensor_value_info("positive_at", TensorProto.INT64, [2, None]),
        ],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )


def _features(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def _bound(path: str) -> OnnxBackend:
    backend = OnnxBackend(path, Device("cpu"), threads=1, options={"io_binding": True})
    assert backend.binder is not None
    return backend


# -- provider selection ---------------------------------------------------------------
@pytest.mark.parametrize("precision", [None, "fp32"])
def test_cpu_gets_the_cpu_provider_only(precision):
    assert providers_for(Device("cpu"), precision=precision) == [CPU_EP]
    assert providers_for(Device("cpu"), available=[CUDA_EP, TRT_EP, CPU_EP]) == [CPU_EP]


@pytest.mark.parametrize(("index", "device_id"), [(None, 0), (0, 0), (3, 3)])
def test_cuda_gets_the_cuda_provider_then_the_cpu(index, device_id):
    want = [(CUDA_EP, {"device_id": device_id, **CUDA_OPTS}), CPU_EP]
    assert providers_for(Device("cuda", index), available=[CUDA_EP, CPU_EP]) == want
    assert providers_for(Device("cuda", index), available=[CUDA_EP, CPU_EP], precision="fp32") == want


@pytest.mark.parametrize(("precision", "fp16"), [(None, "False"), ("fp32", "False"), ("fp16", "True")])
def test_trt_comes_first_with_an_engine_cache_then_cuda_then_cpu(precision, fp16):
    got = providers_for(
        Device("cuda", 1), trt=True, available=[TRT_EP, CUDA_EP, CPU_EP], precision=precision, cache_dir="/c/trt"
    )
    assert got == [
        (TRT_EP, {
            "device_id": 1,
            "trt_fp16_enable": fp16,
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": "/c/trt",
            "trt_timing_cache_enable": "True",
        }),
        (CUDA_EP, {"device_id": 1, **CUDA_OPTS}),
        CPU_EP,
    ]


def test_trt_options_are_ones_onnxruntimes_python_parser_takes():
    # Its TensorRT options parser (onnxruntime_pybind_state.cc) takes "True"/"False"
    # for switches and throws "Invalid TensorRT EP option" on unknown keys.
    (_, opts), *_ = providers_for(Device("cuda", 0), trt=True, available=[TRT_EP], precision="fp16", cache_dir="x")
    known = {"device_id", "trt_fp16_enable", "trt_engine_cache_enable", "trt_engine_cache_path", "trt_timing_cache_enable"}
    assert set(opts) <= known
    assert all(v in ("True", "False") for k, v in opts.items() if k.endswith("_enable"))


def test_the_engine_cache_lives_under_the_users_cache_or_batchscore_trt_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert trt_cache_dir() == str(tmp_path / "home" / ".cache" / "batchscore" / "trt")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trt_cache_dir() == str(tmp_path / "xdg" / "batchscore" / "trt")
    monkeypatch.setenv("BATCHSCORE_TRT_CACHE", "~/engines")
    assert trt_cache_dir() == str(tmp_path / "home" / "engines")
    got = providers_for(Device("cuda", 0), trt=True, available=[TRT_EP, CUDA_EP])
    assert got[0][1]["trt_engine_cache_path"] == str(tmp_path / "home" / "engines")


PRECISION_FP16 = (
    "--precision fp16: the onnx backend runs the model in the precision it was exported in; "
    "add --trt on a GPU (TensorRT builds an fp16 engine) or export an fp16 model and drop --precision"
)
PRECISION_BF16 = (
    "--precision bf16: the onnx backend runs the model in the precision it was exported in "
    "(fp16 only with --trt); export a bf16 model or drop --precision"
)
TRT_ON_CPU = "--trt needs --device gpu (TensorRT runs on NVIDIA GPUs only): pass --device gpu or drop --trt"
TRT_MISSING = (
    "--trt: this onnxruntime has no TensorRT execution provider (TensorrtExecutionProvider missing): "
    "install onnxruntime-gpu and TensorRT (pip install tensorrt; docs/backends.md, ONNX), or drop --trt"
)


@pytest.mark.parametrize(
    ("device", "kw", "cls", "message"),
    [
        (Device("cpu"), {"trt": True}, UsageError, TRT_ON_CPU),
        (Device("cpu"), {"trt": True, "available": [TRT_EP, CUDA_EP, CPU_EP]}, UsageError, TRT_ON_CPU),
        (Device("cuda", 0), {"trt": True, "available": [CUDA_EP, CPU_EP]}, DeviceError, TRT_MISSING),
        (Device("cpu"), {"precision": "fp16"}, UsageError, PRECISION_FP16),
        (Device("cuda", 0), {"precision": "fp16", "available": [CUDA_EP]}, UsageError, PRECISION_FP16),
        (Device("cpu"), {"precision": "bf16"}, UsageError, PRECISION_BF16),
        (Device("cuda", 0), {"precision": "bf16", "trt": True, "available": [TRT_EP]}, UsageError, PRECISION_BF16),
        (Device("cpu"), {"precision": "int8"}, UsageError, "--precision 'int8' is not one of: fp32, fp16, bf16"),
        (Device("tpu"), {}, DeviceError, "--device tpu: the onnx backend runs on cpu or gpu only"),
    ],
    ids=["trt-cpu", "trt-cpu-with-trt-build", "trt-missing", "fp16-cpu", "fp16-cuda-no-trt", "bf16-cpu",
         "bf16-trt", "unknown-precision", "tpu"],
)
def test_impossible_combinations_are_one_line_errors_with_exit_2(device, kw, cls, message):
    _fails(lambda: providers_for(device, **kw), cls, message)


def test_the_backend_refuses_them_before_reading_the_model(tmp_path):
    missing = str(tmp_path / "no-such-model.onnx")
    _fails(lambda: OnnxBackend(missing, Device("cpu"), threads=1, options={"trt": True}), UsageError, TRT_ON_CPU)
    _fails(lambda: OnnxBackend(missing, Device("cpu"), threads=1, options={"precision": "fp16"}),
           UsageError, PRECISION_FP16)


def test_cli_trt_and_precision_errors_exit_2(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--device", "cpu", "--trt", code=2) == TRT_ON_CPU
    assert cli.fails(folder, "--model", model, "--precision", "fp16", code=2) == PRECISION_FP16
    assert cli.fails(folder, "--model", model, "--precision", "bf16", "--output", "o", code=2) == PRECISION_BF16
    assert not os.path.exists("o")


def test_cli_trt_on_a_gpu_without_the_tensorrt_provider_exits_2(cli, scored, fake_hardware):
    folder, _, model = scored
    fake_hardware(gpus=[Gpu(0, "Fake GPU")], cuda=True)
    assert cli.fails(folder, "--model", model, "--device", "gpu", "--trt", code=2) == TRT_MISSING


def test_precision_fp32_and_none_run_as_before(data, model):
    path = data.write("a.parquet", data.table(4))
    batchscore.score(path, model, "out.parquet", precision="fp32", quiet=True)
    assert read_output("out.parquet").num_rows == 4


# -- what onnxruntime is asked for, and the check of what it gave --------------------
class _FakeSession:
    """A real CPU session that reports the providers a GPU build would have given
    (``reports``), or raises ``raises`` on creation; records what it was asked."""

    made: list[dict] = []

    def __init__(self, reports=None, raises=None):
        self.reports, self.raises = reports, raises

    def __call__(self, data, sess_options=None, providers=None, **kwargs):
        type(self).made.append({"providers": providers, "kwargs": kwargs})
        if self.raises is not None:
            raise self.raises
        sess = REAL_SESSION(data, sess_options=sess_options, providers=[CPU_EP])
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        reports = names if self.reports is None else self.reports
        sess.get_providers = lambda: list(reports)
        sess.fallback_disabled = False

        def disable():
            sess.fallback_disabled = True

        sess.disable_fallback = disable
        return sess


@pytest.fixture
def fake_session(monkeypatch):
    _FakeSession.made = []

    def install(**kw):
        monkeypatch.setattr(ort, "InferenceSession", _FakeSession(**kw))
        return _FakeSession.made

    return install


def test_a_gpu_session_gets_the_providers_no_fallback_and_binds_on_the_gpu(model, fake_session, fake_hardware,
                                                                           monkeypatch, tmp_path):
    fake_hardware(gpus=[Gpu(0, "A"), Gpu(1, "B")], cuda=True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    monkeypatch.setenv("BATCHSCORE_TRT_CACHE", str(tmp_path / "engines"))
    made = fake_session()
    backend = OnnxBackend(model, Device("cuda", 1), threads=1, options={"trt": True, "precision": "fp16"})
    assert made == [{
        "providers": providers_for(Device("cuda", 1), trt=True, available=[TRT_EP], precision="fp16"),
        "kwargs": {"enable_fallback": 0},  # no silent retry on the CPU (it would print to stdout)
    }]
    assert backend.providers == [TRT_EP, CUDA_EP, CPU_EP]
    assert backend.session.fallback_disabled
    assert os.path.isdir(tmp_path / "engines")
    assert backend.binder is not None and backend.binder._device == ("cuda", 1)
    # The CPU keeps session.run and onnxruntime's fallback default.
    made.clear()
    cpu = OnnxBackend(model, Device("cpu"), threads=1)
    assert made == [{"providers": [CPU_EP], "kwargs": {}}] and cpu.binder is None
    assert not cpu.session.fallback_disabled


FELL_BACK = (
    "--device cuda:0: onnxruntime fell back to the CPU because the CUDA execution provider did not load "
    "(CUDA or cuDNN libraries missing or of the wrong version): install the CUDA and cuDNN versions this "
    "onnxruntime-gpu was built for (onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html"
    "#requirements), or use --device cpu"
)
TRT_DID_NOT_LOAD = (
    "--trt: the TensorRT execution provider did not load (TensorRT libraries missing or of the wrong version): "
    "pip install tensorrt matching onnxruntime-gpu, or drop --trt"
)


@pytest.mark.parametrize(
    ("trt", "reports", "message"),
    [(False, [CPU_EP], FELL_BACK), (True, [CPU_EP], FELL_BACK), (True, [CUDA_EP, CPU_EP], TRT_DID_NOT_LOAD)],
    ids=["cuda-dropped", "trt-and-cuda-dropped", "trt-dropped"],
)
def test_a_provider_onnxruntime_silently_dropped_is_a_device_error(model, fake_session, monkeypatch, tmp_path,
                                                                    trt, reports, message):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    monkeypatch.setenv("BATCHSCORE_TRT_CACHE", str(tmp_path / "engines"))
    fake_session(reports=reports)
    _fails(lambda: OnnxBackend(model, Device("cuda", 0), threads=1, options={"trt": trt}), DeviceError, message)


def test_with_the_cpu_build_the_cuda_provider_really_is_dropped(model, fake_hardware):
    """No fake session: this onnxruntime has no CUDA, whatever get_available_providers says."""
    if HAS_CUDA_EP:
        pytest.skip("this onnxruntime has CUDA")
    fake_hardware(gpus=[Gpu(0, "Fake GPU")], cuda=True)
    with pytest.warns(UserWarning, match="not in available provider names"):
        _fails(lambda: OnnxBackend(model, Device("cuda", 0), threads=1), DeviceError, FELL_BACK)


@pytest.mark.parametrize(
    ("raises", "cls", "start"),
    [
        (RuntimeError("CUDA failure 100: no CUDA-capable device is detected"), DeviceError,
         "--device cuda:0: onnxruntime could not start CUDA: CUDA failure 100"),
        (RuntimeError("Failed to allocate memory for requested buffer of size 8589934592"), DeviceError,
         "--device cuda:0: the model does not fit in GPU memory while loading: Failed to allocate memory"),
        (ValueError("Node (mm) Op (MatMul) [ShapeInferenceError] Incompatible dimensions"), ModelError,
         "model "),
    ],
    ids=["cuda-runtime", "out-of-memory", "model"],
)
def test_gpu_session_creation_errors_say_whose_fault(model, fake_session, raises, cls, start):
    fake_session(raises=raises)
    with pytest.raises(cls) as info:
        OnnxBackend(model, Device("cuda", 0), threads=1)
    assert str(info.value).startswith(start) and "\n" not in str(info.value)


def test_an_unwritable_engine_cache_is_a_usage_error(model, monkeypatch, tmp_path):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("BATCHSCORE_TRT_CACHE", str(blocker / "trt"))
    err = _fails(
        lambda: OnnxBackend(model, Device("cuda", 0), threads=1, options={"trt": True}), UsageError,
        f"--trt: cannot create the TensorRT engine cache {blocker / 'trt'}: Not a directory: "
        "set BATCHSCORE_TRT_CACHE to a writable folder",
    )
    assert isinstance(err, BatchscoreError)


# -- I/O binding, forced on the CPU ------------------------------------------------------
def test_binding_equals_session_run_for_float_int_and_bool_outputs(models):
    path = models.classifier()
    backend = _bound(path)
    x = _features(9)
    _same(backend.predict({"features": x}), _ref(path, {"features": x}))


def test_binding_equals_session_run_for_float_and_int_inputs(models):
    path = models.two_inputs()
    backend = _bound(path)
    rng = np.random.default_rng(1)
    feeds = {"amount": rng.normal(size=7).astype(np.float32), "count": rng.integers(-5, 9, size=7)}
    _same(backend.predict(feeds), _ref(path, feeds))


def test_binding_handles_outputs_whose_shape_is_known_only_at_run_time(models):
    path = _dynamic_model(models)
    backend = _bound(path)
    for n in (6, 6, 2, 11):  # a different number of positives each time
        x = _features(n, seed=n)
        _same(backend.predict({"x": x}), _ref(path, {"x": x}))


def test_buffers_are_reused_while_the_shape_holds_and_replaced_when_it_changes(models):
    path = models.classifier()
    backend = _bound(path)
    binder = backend.binder
    x = _features(20)
    for i in range(3):
        _same(backend.predict({"features": x[:8]}), _ref(path, {"features": x[:8]}))
    assert binder.allocations == 1
    _same(backend.predict({"features": x[16:]}), _ref(path, {"features": x[16:]}))  # the smaller last batch
    assert binder.allocations == 2
    _same(backend.predict({"features": x[:8]}), _ref(path, {"features": x[:8]}))
    assert binder.allocations == 3
    assert binder.pinned_inputs is False  # the CPU stages nothing


def test_a_batchs_predictions_survive_the_next_batch(models):
    path = models.classifier()
    backend = _bound(path)
    x = _features(10)
    first = backend.predict({"features": x[:5]})
    kept = {k: v.copy() for k, v in first.items()}
    backend.predict({"features": x[5:]})  # same shape: same input buffer
    _same(first, kept)


def test_non_contiguous_and_other_dtype_feeds(models):
    path = models.linear(input_type=TensorProto.INT64, name="int.onnx")
    backend = _bound(path)
    wide = np.random.default_rng(2).integers(-50, 50, size=(6, 6))
    x = wide[:, ::2]  # a strided view
    assert not x.flags.c_contiguous
    _same(backend.predict({"features": x}), _ref(path, {"features": np.ascontiguousarray(x)}))
    # A feed of the wrong dtype fails as session.run fails (no reinterpreted bytes).
    with pytest.raises(Exception, match="(?i)type"):
        backend.predict({"features": x.astype(np.float32)})


def test_models_with_string_tensors_keep_session_run(models):
    path = models.strings()
    backend = OnnxBackend(path, Device("cpu"), threads=1, options={"io_binding": True})
    assert backend.binder is None
    feeds = {"name": np.array(["x", "q", "z"], dtype=object)}
    got = backend.predict(feeds)
    assert got["code"].tolist() == [10, -1, 30] and got["echo"].tolist() == ["x", "q", "z"]


def test_a_zipmap_model_binds_its_columnar_outputs(data, models):
    model = models.zipmap()
    backend = _bound(model)
    x = _features(5)
    got = backend.predict({"features": x})
    sess = _session(model)
    label, maps = sess.run(None, {"features": x})
    np.testing.assert_array_equal(got["output_label"], label)
    np.testing.assert_allclose(got["output_probability"], [[m[c] for c in (0, 1, 2)] for m in maps], rtol=1e-6)


def test_release_memory_frees_the_buffers(models):
    path = models.classifier()
    backend = _bound(path)
    x = _features(4)
    backend.predict({"features": x})
    backend.release_memory()
    assert backend.binder._buffers == {}
    _same(backend.predict({"features": x}), _ref(path, {"features": x}))
    assert backend.binder.allocations == 2


def _cpu_staging(shape, dtype):
    return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, "cpu", 0)


def test_the_staged_copy_path_equals_session_run(models):
    """The pinned path (host staging buffer, then OrtValue → OrtValue copy), with a
    CPU buffer standing in for pinned memory."""
    path = models.two_inputs()
    binder = IoBinder(_session(path), "cpu", 0, ["total"], pinned=_cpu_staging)
    rng = np.random.default_rng(3)
    for n in (5, 5, 2):
        feeds = {"amount": rng.normal(size=n).astype(np.float32), "count": rng.integers(0, 9, size=n)}
        _same(binder.run(feeds), _ref(path, feeds))
        assert binder.pinned_inputs is True
    assert binder.allocations == 4  # two inputs, two shapes


@pytest.mark.parametrize("broken", ["raises", "wrong-dtype", "copies"])
def test_unusable_staging_is_dropped_and_inputs_copied_directly(models, broken):
    path = models.classifier()

    def staging(shape, dtype):
        if broken == "raises":
            raise RuntimeError("no pinned memory here")
        if broken == "wrong-dtype":  # the same element count, other bytes: caught by the read-back check
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float64, "cpu", 0)
        value = _cpu_staging(shape, dtype)
        value.numpy = lambda: np.zeros(shape, dtype)  # a copy, not a view of the buffer
        return value

    binder = IoBinder(_session(path), "cpu", 0, ["probabilities", "label", "positive"], pinned=staging)
    for n in (6, 6, 3):
        x = _features(n, seed=n)
        _same(binder.run({"features": x}), _ref(path, {"features": x}))
        assert binder.pinned_inputs is False


def test_score_with_io_binding_forced_on_the_cpu_equals_onnxruntime(data, models, monkeypatch):
    runs = []
    original_run = IoBinder.run

    def counted(self, feeds):
        runs.append(len(next(iter(feeds.values()))))
        return original_run(self, feeds)

    monkeypatch.setattr(IoBinder, "run", counted)
    original = Job.backend_options
    monkeypatch.setattr(Job, "backend_options", lambda self: {**original(self), "io_binding": True})
    model = models.classifier()
    folder, table = data.shards("shards", [5, 0, 8])
    batchscore.score(folder, model, "out", keep="id", batch_size=3, device="cpu", quiet=True)
    assert_predictions(read_output("out"), table, reference(model, table))
    assert sum(runs) >= 13 and min(runs) < 3  # every row went through the binding, a smaller last batch too


# -- a GPU with the CPU build of onnxruntime -------------------------------------------
def test_a_gpu_with_the_cpu_build_exits_2_and_devices_warns(cli, scored, fake_hardware):
    folder, _, model = scored
    fake_hardware(gpus=[Gpu(0, "NVIDIA H100 80GB HBM3", 81559)], cuda=False)
    msg = cli.fails(folder, "--model", model, "--device", "gpu", "--output", "out", code=2)
    assert msg == f"--device gpu: {NO_CUDA}; use --device cpu or auto"
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in msg
    res = cli("devices")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[-1] == (
        "warning: a GPU is present but onnxruntime has no CUDA provider: the CPU build shadows onnxruntime-gpu; "
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    )


def test_a_cuda_plugin_ep_counts_as_cuda_support(monkeypatch):
    """onnxruntime 1.2x+ may register CUDA as a plugin EP, listed by get_ep_devices only."""

    class EpDevice:
        ep_name = CUDA_EP

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU_EP])
    monkeypatch.setattr(ort, "get_ep_devices", lambda: [EpDevice()], raising=False)
    assert onnx_backend.cuda_provider_available(ort)
    monkeypatch.setattr(ort, "get_ep_devices", lambda: [], raising=False)
    assert not onnx_backend.cuda_provider_available(ort)


# -- real CUDA: runs only with onnxruntime-gpu and a GPU; never passes on the CPU ------
REAL_GPU = HAS_CUDA_EP and bool(devices.nvidia_gpus())


@pytest.mark.skipif(not REAL_GPU, reason="needs onnxruntime-gpu (CUDAExecutionProvider) and an NVIDIA GPU")
class TestRealCuda:
    def test_predictions_equal_the_cpu_through_io_binding(self, models):
        path = models.classifier()
        backend = OnnxBackend(path, Device("cuda", 0), threads=1)
        assert backend.providers[0] == CUDA_EP
        assert backend.binder is not None
        for n in (64, 64, 17):
            x = _features(n, seed=n)
            got, want = backend.predict({"features": x}), _ref(path, {"features": x})
            np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-4, atol=1e-6)
            np.testing.assert_array_equal(got["label"], want["label"])
        assert backend.binder.allocations == 2

    def test_dynamic_outputs_on_the_gpu(self, models):
        path = _dynamic_model(models)
        backend = OnnxBackend(path, Device("cuda", 0), threads=1)
        for n in (8, 3):
            x = _features(n, seed=n)
            _same(backend.predict({"x": x}), _ref(path, {"x": x}))

    def test_score_on_the_gpu_equals_onnxruntime_on_the_cpu(self, data, model):
        folder, table = data.shards("shards", [5, 0, 8])
        summary = batchscore.score(folder, model, "out", keep="id", batch_size=3, device="gpu", quiet=True)
        assert summary.device == "cuda:0"
        out = read_output("out")
        order = np.argsort(out.column("id").to_numpy())
        assert out.column("id").to_numpy()[order].tolist() == table.column("id").to_pylist()
        got = np.asarray(out.column("score").to_pylist(), dtype=np.float32)[order]
        np.testing.assert_allclose(got, reference(model, table)["score"].reshape(-1), rtol=1e-4, atol=1e-6)

    @pytest.mark.skipif(TRT_EP not in ort.get_available_providers(), reason="needs the TensorRT execution provider")
    def test_trt_session_uses_tensorrt_and_caches_engines(self, models, monkeypatch, tmp_path):
        monkeypatch.setenv("BATCHSCORE_TRT_CACHE", str(tmp_path / "trt"))
        path = models.classifier()
        backend = OnnxBackend(path, Device("cuda", 0), threads=1, options={"trt": True})
        assert backend.providers[:2] == [TRT_EP, CUDA_EP]
        x = _features(32)
        got, want = backend.predict({"features": x}), _ref(path, {"features": x})
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-3, atol=1e-5)
        assert os.listdir(tmp_path / "trt")
