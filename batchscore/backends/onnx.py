"""ONNX models through onnxruntime (CPU, or CUDA with onnxruntime-gpu)."""

from __future__ import annotations

from typing import Any

from ..errors import DeviceError, ModelError
from . import Backend, Device, TensorSpec

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

        raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime (or 'batchscore[gpu]')") from None
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


class OnnxBackend(Backend):
    """onnxruntime with a thread budget and spinning off (it steals the reader's core)."""

    name = "onnx"
    extensions = (".onnx", ".ort")
    device_kinds = ("cpu", "cuda")
    default_batch_size = 16384

    @classmethod
    def gpu_problem(cls) -> str | None:
        ort = _import_ort()
        cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        base = super().gpu_problem()
        if not cuda:
            missing = (
                "onnxruntime has no CUDA support (CUDAExecutionProvider missing: "
                "pip uninstall -y onnxruntime && pip install 'batchscore[gpu]')"
            )
            return f"{base} and {missing}" if base else missing
        return base

    def __init__(self, model_path: str, device: Device, *, threads: int, options: dict[str, Any] | None = None):
        super().__init__(model_path, device, threads=threads, options=options)
        ort = _import_ort()
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
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.kind == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        elif device.kind != "cpu":
            raise DeviceError(f"--device {device}: the onnx backend runs on cpu or gpu only")
        try:
            self.session = ort.InferenceSession(data, sess_options=so, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            msg = " ".join(str(exc).split())
            if len(msg) > 300:
                msg = msg[:300] + "..."
            raise ModelError(f"model {model_path} is not a valid ONNX model: {msg}") from None
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        for name, classes in labels.items():
            self.output_metadata[name] = {"class_labels": classes}
        self._output_names = [o.name for o in self.outputs]

    def predict(self, feeds: dict[str, Any]) -> dict[str, Any]:
        results = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results))

    def close(self) -> None:
        self.session = None
