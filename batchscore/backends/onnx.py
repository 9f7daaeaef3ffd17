"""ONNX models through onnxruntime (CPU, or CUDA with onnxruntime-gpu).

On a GPU the session runs on the CUDA execution provider (TensorRT first with
``--trt``) and each batch goes through I/O binding: inputs are copied into
reusable buffers on the device (staged through pinned host memory where the
installed onnxruntime can allocate it from Python), outputs are allocated by
onnxruntime on the device and copied back once. :func:`providers_for` picks the
provider list and refuses impossible combinations before anything loads.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from ..errors import DeviceError, ModelError, UsageError
from . import Backend, Device, TensorSpec

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"

#: CUDA EP options (names as onnxruntime's CUDAExecutionProviderInfo parses them).
#: HEURISTIC: cuDNN's heuristic picks a convolution algorithm without benchmarking
#: every one per input shape (EXHAUSTIVE, the default, does that for each new
#: shape, e.g. the smaller last batch or a batch halved after an out-of-memory
#: error, and takes workspace memory doing it).
CUDA_OPTIONS: dict[str, Any] = {"cudnn_conv_algo_search": "HEURISTIC"}

#: --precision values: fp32 runs anywhere, fp16 only with --trt (a TensorRT fp16 engine), bf16 is refused.
PRECISIONS = ("fp32", "fp16", "bf16")

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - a core dependency
        from ..errors import MissingDependencyError

        raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu for CUDA)") from None
    return ort


def _cores() -> int:
    from ..devices import cpu_count

    return cpu_count()


def _spec(arg) -> TensorSpec:
    shape = None
    if arg.shape is not None:
        shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, arg.type), shape)


def _strip_zipmap(model_bytes: bytes) -> tuple[bytes, dict[str, list]]:
    """Replace skl2onnx's ZipMap outputs (a list of dicts per row) by the
    probability tensor it wraps, so outputs stay columnar; returns the class
    labels of each such output."""
    if b"ZipMap" not in model_bytes:
        return model_bytes, {}  # most models: skip importing onnx (a second or more)
    try:
        import onnx
    except ImportError:
        return model_bytes, {}
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    zipmaps = [n for n in graph.node if n.op_type == "ZipMap"]
    if not zipmaps:
        return model_bytes, {}
    labels: dict[str, list] = {}
    outputs = {o.name: o for o in graph.output}
    for node in zipmaps:
        out_name = node.output[0]
        if out_name not in outputs:
            continue
        attrs = {a.name: a for a in node.attribute}
        if "classlabels_int64s" in attrs:
            classes = list(attrs["classlabels_int64s"].ints)
        else:
            classes = [s.decode() for s in attrs["classlabels_strings"].strings]
        # Keep the output's name: rename the ZipMap's input tensor to it.
        src = node.input[0]
        for other in graph.node:
            for i, name in enumerate(other.output):
                if name == src:
                    other.output[i] = out_name
            for i, name in enumerate(other.input):
                if name == src and other is not node:
                    other.input[i] = out_name
        graph.node.remove(node)
        old = outputs[out_name]
        new = onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, [None, len(classes)])
        graph.output.insert(list(graph.output).index(old), new)
        graph.output.remove(old)
        labels[out_name] = classes
    return model.SerializeToString(), labels


def trt_cache_dir() -> str:
    """Where TensorRT engines are cached: $BATCHSCORE_TRT_CACHE, else
    ``$XDG_CACHE_HOME/batchscore/trt`` (``~/.cache/batchscore/trt``)."""
    explicit = os.environ.get("BATCHSCORE_TRT_CACHE")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "batchscore", "trt")


def providers_for(
    device: Device,
    *,
    trt: bool = False,
    available: Sequence[str] = (CPU_EP,),
    precision: str | None = None,
    cache_dir: str | None = None,
) -> list[Any]:
    """The onnxruntime ``providers`` list for a device, or a one-line error.

    cpu → CPU; cuda:N → CUDA (device N) then CPU; with ``trt`` TensorRT first
    (device N, engine and timing caches in ``cache_dir``, fp16 with
    ``precision="fp16"``), then CUDA, then CPU. ``available`` is
    ``onnxruntime.get_available_providers()``. Pure: it loads nothing.
    """
    if precision not in (None, *PRECISIONS):
        raise UsageError(f"--precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    if device.kind not in ("cpu", "cuda"):
        raise DeviceError(f"--device {device}: the onnx backend runs on cpu or gpu only")
    if trt and device.kind != "cuda":
        raise UsageError("--trt needs --device gpu (TensorRT runs on NVIDIA GPUs only): pass --device gpu or drop --trt")
    if precision == "bf16":
        raise UsageError(
            "--precision bf16: the onnx backend runs the model in the precision it was exported in "
            "(fp16 only with --trt); export a bf16 model or drop --precision"
        )
    if precision == "fp16" and not trt:
        raise UsageError(
            "--precision fp16: the onnx backend runs the model in the precision it was exported in; "
            "add --trt on a GPU (TensorRT builds an fp16 engine) or export an fp16 model and drop --precision"
        )
    if device.kind == "cpu":
        return [CPU_EP]
    index = device.index or 0
    providers: list[Any] = [(CUDA_EP, {"device_id": index, **CUDA_OPTIONS}), CPU_EP]
    if trt:
        if TRT_EP not in available:
            raise DeviceError(
                f"--trt: this onnxruntime has no TensorRT execution provider ({TRT_EP} missing): "
                "install onnxruntime-gpu and TensorRT (pip install tensorrt; docs/backends.md, ONNX), or drop --trt"
            )
        cache = cache_dir or trt_cache_dir()
        # onnxruntime's Python TensorRT options take "True"/"False", not 1/0.
        providers.insert(0, (TRT_EP, {
            "device_id": index,
            "trt_fp16_enable": "True" if precision == "fp16" else "False",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",  # kept beside the engines (trt_engine_cache_path)
        }))
    return providers


def cuda_provider_available(ort) -> bool:
    """Whether this onnxruntime can run the CUDA EP: built in, or registered as a
    plugin EP (onnxruntime 1.32 can do that; such an EP may be listed by
    ``get_ep_devices()`` only, not by ``get_available_providers()``)."""
    if CUDA_EP in ort.get_available_providers():
        return True
    try:
        return any(d.ep_name == CUDA_EP for d in ort.get_ep_devices())
    except Exception:  # noqa: BLE001 - older onnxruntime: no plugin EPs
        return False


def _numeric(ort_type: str) -> bool:
    """A tensor type I/O binding can hold (strings, sequences and maps cannot)."""
    return ort_type.startswith("tensor(") and ort_type != "tensor(string)"


class _Buffer:
    """One input's reusable buffer on the session's device, with an optional
    pinned host staging buffer in front of it."""

    def __init__(self, value, dtype: np.dtype, staged=None):
        self.value = value  # OrtValue on the device the session runs on
        self.dtype = dtype
        self.staged = staged  # (pinned OrtValue, numpy view of it) or None
        self.shape = tuple(value.shape())


class IoBinder:
    """Runs a session through I/O binding on one device ("cpu" or "cuda", id).

    Input buffers are allocated once per (shape, dtype) and reused while the
    batch shape stays the same (a smaller last batch, or a batch halved after
    an out-of-memory error, gets new ones). Outputs are bound by name and device
    only, so onnxruntime allocates them at their computed (possibly dynamic)
    shape; they are rebound for every batch because a binding keeps the previous
    run's outputs as pre-allocated buffers, which a different output shape
    refuses. ``copy_outputs_to_cpu`` returns arrays that own their memory, so a
    batch's predictions stay valid while the next batch runs.

    ``pinned`` allocates a host staging buffer ``(shape, dtype) -> OrtValue``
    (pinned memory on CUDA), or is None to copy from the numpy array directly.
    The first staged copy is read back from the device and compared byte for
    byte; if staging fails or the bytes differ, staging is dropped for good and
    inputs are copied from the numpy array (pageable memory) instead.
    """

    def __init__(self, session, device_type: str, device_id: int, output_names: list[str], *, pinned=None):
        import onnxruntime as ort

        self._ort = ort
        self._session = session
        self._device = (device_type, device_id)
        self._output_names = list(output_names)
        self._binding = session.io_binding()
        self._buffers: dict[str, _Buffer] = {}
        self._pinned = pinned
        self._verified = False
        #: Input buffers allocated so far (tests check that they are reused).
        self.allocations = 0
        #: Whether the last batch's inputs went through pinned host buffers.
        self.pinned_inputs = False

    def _buffer(self, name: str, arr: np.ndarray) -> _Buffer:
        buf = self._buffers.get(name)
        # update_inplace checks the element count only, not the dtype: match both.
        if buf is not None and buf.shape == arr.shape and buf.dtype == arr.dtype:
            return buf
        self._buffers.pop(name, None)  # free the old device memory before allocating anew
        value = self._ort.OrtValue.ortvalue_from_shape_and_type(list(arr.shape), arr.dtype, *self._device)
        buf = _Buffer(value, arr.dtype, self._stage(arr) if self._pinned is not None else None)
        self._buffers[name] = buf
        self.allocations += 1
        return buf

    def _stage(self, arr: np.ndarray):
        try:
            pinned = self._pinned(list(arr.shape), arr.dtype)
            view = pinned.numpy()
            # Only a zero-copy view lets numpy write into the pinned memory.
            if arr.size and view.ctypes.data != pinned.data_ptr():
                raise ValueError("OrtValue.numpy() copied the staging buffer")
            return pinned, view
        except Exception:  # noqa: BLE001 - no usable pinned memory: copy from pageable memory
            self._drop_staging()
            return None

    def _drop_staging(self) -> None:
        self._pinned = None
        for buf in self._buffers.values():
            buf.staged = None

    def _load(self, buf: _Buffer, arr: np.ndarray) -> None:
        if buf.staged is not None:
            pinned, view = buf.staged
            try:
                np.copyto(view, arr)  # pageable → pinned: a host memcpy
                buf.value.update_inplace(pinned)  # pinned → device: a DMA copy
                if not self._verified:
                    back = np.ascontiguousarray(buf.value.numpy())
                    if back.shape != arr.shape or back.tobytes() != arr.tobytes():
                        raise ValueError("the staged copy differs from the batch")
                    self._verified = True
                return
            except Exception:  # noqa: BLE001 - this onnxruntime cannot copy pinned → device
                self._drop_staging()
        buf.value.update_inplace(arr)  # on CUDA: cudaMemcpy from pageable memory

    def release(self) -> None:
        """Free the input buffers and any bound outputs (after an out-of-memory error)."""
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        self._buffers.clear()

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        binding = self._binding
        staged = []
        for name, arr in feeds.items():
            arr = np.ascontiguousarray(arr)
            buf = self._buffer(name, arr)
            if arr.size:
                self._load(buf, arr)
            staged.append(buf.staged is not None)
            binding.bind_ortvalue_input(name, buf.value)
        self.pinned_inputs = bool(staged) and all(staged)
        binding.clear_binding_outputs()
        for name in self._output_names:
            binding.bind_output(name, *self._device)
        self._session.run_with_iobinding(binding)
        results = binding.copy_outputs_to_cpu()
        binding.clear_binding_outputs()  # release the device outputs now, not at the next batch
        return dict(zip(self._output_names, results))


def _pinned_allocator(ort):
    """``(shape, dtype) -> OrtValue`` in CUDA pinned host memory, or None when this
    onnxruntime's Python API cannot allocate it.

    Older releases cannot: ``OrtValue.ortvalue_from_shape_and_type`` takes a device
    name ("cpu", "cuda", ...) with default memory only; there is no "cuda_pinned"
    name. onnxruntime 1.32 also takes ``memory_info=``, an ``OrtMemoryInfo`` of an
    ``OrtEpDevice``: a CUDA EP device's ``HOST_ACCESSIBLE`` memory is pinned host
    memory. Not yet run on a GPU: :class:`IoBinder` verifies the first staged copy.
    """
    memory_type = getattr(ort, "OrtDeviceMemoryType", None)
    get_ep_devices = getattr(ort, "get_ep_devices", None)
    if memory_type is None or get_ep_devices is None:
        return None
    try:
        info = next(
            (mi for d in get_ep_devices() if d.ep_name == CUDA_EP
             for mi in [d.memory_info(memory_type.HOST_ACCESSIBLE)] if mi is not None),
            None,
        )
    except Exception:  # noqa: BLE001
        return None
    if info is None:
        return None
    return lambda shape, dtype: ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, memory_info=info)


class OnnxBackend(Backend):
    """onnxruntime with a thread budget and spinning off (it steals the reader's core).

    Options (``options``): ``trt`` (TensorRT first on a GPU), ``precision``
    (fp16 needs ``trt``), ``threads_explicit``, and the library-level
    ``io_binding`` (default: on for cuda, off for cpu; True forces the I/O
    binding path on the CPU too, which is how the tests exercise it).
    """

    name = "onnx"
    extensions = (".onnx", ".ort")
    device_kinds = ("cpu", "cuda")
    default_batch_size = 16384

    @classmethod
    def gpu_problem(cls) -> str | None:
        ort = _import_ort()
        base = super().gpu_problem()
        if not cuda_provider_available(ort):
            missing = (
                "onnxruntime has no CUDA support (CUDAExecutionProvider missing: "
                "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu)"
            )
            return f"{base} and {missing}" if base else missing
        return base

    def __init__(self, model_path: str, device: Device, *, threads: int, options: dict[str, Any] | None = None):
        super().__init__(model_path, device, threads=threads, options=options)
        ort = _import_ort()
        trt = bool(self.options.get("trt"))
        # Refuse impossible flag combinations before reading the model.
        providers = providers_for(
            device, trt=trt, available=ort.get_available_providers(), precision=self.options.get("precision")
        )
        try:
            with open(model_path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ModelError(f"cannot read model {model_path}: {exc.strerror}: fix --model") from None
        try:
            data, labels = _strip_zipmap(data)
        except Exception:  # noqa: BLE001 - not ONNX protobuf: let onnxruntime say so below
            labels = {}
        so = ort.SessionOptions()
        if self.options.get("threads_explicit") or threads != _cores():
            so.intra_op_num_threads = max(1, threads)
        # else: 0, onnxruntime's default, one thread per core *pinned* to it: measured
        # here at H=256, pinned threads do the same work in ~12% less CPU than an
        # explicit count (which turns pinning off).
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # Spinning intra-op threads steal the decoder's core between runs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        gpu = device.kind == "cuda"
        if trt:
            cache = providers[0][1]["trt_engine_cache_path"]
            try:
                os.makedirs(cache, exist_ok=True)
            except OSError as exc:
                raise UsageError(
                    f"--trt: cannot create the TensorRT engine cache {cache}: {exc.strerror}: "
                    "set BATCHSCORE_TRT_CACHE to a writable folder"
                ) from None
        try:
            # enable_fallback=0: onnxruntime would otherwise retry a failed GPU session
            # on the CPU, printing to stdout; a GPU run must fail instead.
            kwargs = {"enable_fallback": 0} if gpu else {}
            self.session = ort.InferenceSession(data, sess_options=so, providers=providers, **kwargs)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            msg = " ".join(str(exc).split())
            if len(msg) > 300:
                msg = msg[:300] + "..."
            if gpu and _is_out_of_memory(msg):
                raise DeviceError(
                    f"--device {device}: the model does not fit in GPU memory while loading: {msg}; "
                    "free the GPU (nvidia-smi lists what holds it) or use --device cpu"
                ) from None
            if gpu and _is_provider_error(msg):
                raise DeviceError(
                    f"--device {device}: onnxruntime could not start "
                    f"{'TensorRT/' if trt else ''}CUDA: {msg}; check that the CUDA, cuDNN"
                    f"{' and TensorRT' if trt else ''} libraries match onnxruntime-gpu, or use --device cpu"
                ) from None
            raise ModelError(f"model {model_path} is not a valid ONNX model: {msg}") from None
        #: The execution providers the session really got, best first.
        self.providers = list(self.session.get_providers())
        if gpu:
            self._check_providers(trt)
            # No silent retry on the CPU when a GPU run fails (onnxruntime's default).
            self.session.disable_fallback()
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        for name, classes in labels.items():
            self.output_metadata[name] = {"class_labels": classes}
        self._output_names = [o.name for o in self.outputs]
        self.binder: IoBinder | None = None
        use_binding = self.options.get("io_binding")
        if use_binding is None:
            use_binding = gpu
        types = [a.type for a in (*self.session.get_inputs(), *self.session.get_outputs())]
        if use_binding and all(_numeric(t) for t in types):
            # String tensors, sequences and maps cannot be bound: those models use session.run.
            self.binder = IoBinder(
                self.session, "cuda" if gpu else "cpu", (device.index or 0) if gpu else 0,
                self._output_names, pinned=_pinned_allocator(ort) if gpu else None,
            )

    def _check_providers(self, trt: bool) -> None:
        """onnxruntime silently drops a provider whose libraries fail to load."""
        if CUDA_EP not in self.providers:
            raise DeviceError(
                f"--device {self.device}: onnxruntime fell back to the CPU because the CUDA execution provider "
                "did not load (CUDA or cuDNN libraries missing or of the wrong version): install the CUDA and cuDNN "
                "versions this onnxruntime-gpu was built for (onnxruntime.ai/docs/execution-providers/"
                "CUDA-ExecutionProvider.html#requirements), or use --device cpu"
            )
        if trt and TRT_EP not in self.providers:
            raise DeviceError(
                "--trt: the TensorRT execution provider did not load (TensorRT libraries missing or of the wrong "
                "version): pip install tensorrt matching onnxruntime-gpu, or drop --trt"
            )

    def predict(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if self.binder is not None and not any(np.asarray(a).dtype.kind in "OUS" for a in feeds.values()):
            return self.binder.run(feeds)
        results = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results))

    def release_memory(self) -> None:
        """Free the I/O-binding buffers; called after an out-of-memory error."""
        if self.binder is not None:
            self.binder.release()

    def close(self) -> None:
        self.binder = None
        self.session = None


_PROVIDER_MARKERS = ("executionprovider", "cuda", "cudnn", "cublas", "tensorrt", "nvinfer", "libcu")


def _is_out_of_memory(msg: str) -> bool:
    text = msg.lower()
    return "failed to allocate memory" in text or "out of memory" in text


def _is_provider_error(msg: str) -> bool:
    """Whether a session-creation error is about the GPU runtime, not the model."""
    text = msg.lower()
    return any(m in text for m in _PROVIDER_MARKERS)
