"""PyTorch models: TorchScript (``torch.jit.load``) and ``torch.export`` programs.

TorchScript files (.pt, .ts) and exported programs (.pt2) are both safe to
load: neither unpickles arbitrary objects. Plain ``torch.save`` pickles of a
whole ``nn.Module`` are refused with a hint to script, trace or export them.

Input shapes: an exported program records them; a TorchScript file does not,
so batchscore reads them from an extra file ``batchscore.json`` inside the
archive when present (``{"inputs": [{"name": "x", "dtype": "float32",
"shape": [null, 3, 64, 64]}], "outputs": ["logits"]}``), else it takes the
argument names of ``forward`` with dtype float32 and unknown shape.

On CUDA a batch is split into chunks; chunk k+1 is copied from pinned host
memory on a side stream while chunk k computes, and a CUDA out-of-memory error
halves the chunk and retries it (no row lost or repeated).
"""

from __future__ import annotations

import json
import threading
import warnings
import zipfile
from typing import Any

import numpy as np

from ..errors import DeviceError, MissingDependencyError, ModelError, UsageError
from . import Backend, Device, TensorSpec

#: The extra file in a TorchScript / .pt2 archive that describes inputs and outputs.
META_FILE = "batchscore.json"
PRECISIONS = ("fp32", "fp16", "bf16")
_LOCK = threading.Lock()


def _import_torch():
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            "PyTorch is not installed: pip install 'batchscore[torch]'"
        ) from None
    return torch


def _torch_dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "")
    return {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32"}.get(name, name)


def _np_feed_dtype(name: str) -> str:
    # numpy has no bfloat16: feed float32 and let the model (or autocast) cast.
    return "float32" if name == "bfloat16" else name


def _zip_names(path: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return []


def _archive_kind(path: str) -> str | None:
    """``torchscript``, ``export``, ``pickle`` (a torch.save file) or None."""
    names = _zip_names(path)
    if not names:
        return None
    if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    if any(n.endswith("archive_format") or "/models/" in n or n.endswith("serialized_exported_program.json") for n in names):
        return "export"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "pickle"
    return None


class TorchBackend(Backend):
    """TorchScript and torch.export programs under ``torch.inference_mode``."""

    name = "torch"
    extensions = (".pt", ".ts", ".pt2", ".torchscript")
    #: Packages this backend imports lazily (``batchscore devices`` checks them).
    requires = ("torch",)
    device_kinds = ("cpu", "cuda", "mps")
    default_batch_size = 256

    @classmethod
    def sniff(cls, path: str) -> bool:
        if super().sniff(path):
            return True
        return _archive_kind(path) in ("torchscript", "export")

    @classmethod
    def gpu_problem(cls) -> str | None:
        base = super().gpu_problem()
        torch = _import_torch()
        if torch.version.cuda is None:
            missing = (
                f"this PyTorch ({torch.__version__}) is a CPU-only build: install a CUDA build, "
                "see https://pytorch.org/get-started/locally/"
            )
            return f"{base} and {missing}" if base else missing
        if base is None and not torch.cuda.is_available():
            return "PyTorch sees no usable CUDA device (torch.cuda.is_available() is False: check the driver)"
        return base

    @classmethod
    def resolve_device(cls, requested: str) -> Device:
        device = super().resolve_device(requested)
        if device.kind == "mps":
            torch = _import_torch()
            if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
                raise DeviceError(
                    f"--device {requested}: MPS is not available (it needs Apple silicon and a PyTorch "
                    "build with MPS); use --device cpu or auto"
                )
            device.description = "Apple MPS"
        return device

    def __init__(self, model_path: str, device: Device, *, threads: int, options: dict[str, Any] | None = None):
        super().__init__(model_path, device, threads=threads, options=options)
        torch = _import_torch()
        self._torch = torch
        precision = self.options.get("precision") or "fp32"
        if precision not in PRECISIONS:
            raise UsageError(f"--precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
        self.precision = precision
        if device.kind not in self.device_kinds:
            raise DeviceError(f"--device {device}: the torch backend runs on cpu, gpu or mps")
        self.tdevice = torch.device("cuda", device.index or 0) if device.kind == "cuda" else torch.device(device.kind)
        if device.kind == "cpu":
            _set_threads(torch, threads)
        # Arrow hands out read-only buffers; the model never writes its inputs
        # under inference_mode, so wrap them without a copy.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

        kind = _archive_kind(model_path)
        if kind is None and model_path.lower().endswith(".pt2"):
            kind = "export"
        if kind == "pickle":
            raise ModelError(
                f"model {model_path} is a torch.save pickle, not TorchScript or torch.export: unpickling runs "
                "arbitrary code, so batchscore does not load it; save the model with "
                "torch.jit.save(torch.jit.script(m), ...) or torch.export.save(torch.export.export(m, args), ...)"
            )
        meta: dict[str, Any] = {}
        self._autocast = None  # the probe of output names runs in full precision
        if kind == "export":
            self._load_export(model_path, meta)
        else:
            self._load_script(model_path, meta)
        self._autocast = None
        if precision != "fp32":
            self._autocast = self._autocast_dtype(precision)
        self._out_dtypes = [o.dtype for o in self.outputs]
        if self._autocast is not None:
            # Reduced precision comes back as float32 (numpy has no bfloat16).
            self.outputs = [TensorSpec(o.name, "float32" if o.dtype in ("float16", "bfloat16", "float32") else o.dtype, o.shape) for o in self.outputs]
        self._cuda = _CudaFeeder(torch, self.tdevice, self.options) if device.kind == "cuda" else None

    # -- loading ---------------------------------------------------------------
    def _read_meta(self, raw: str | bytes | None) -> dict[str, Any]:
        if not raw:
            return {}
        try:
            meta = json.loads(raw)
        except ValueError:
            raise ModelError(f"model {self.model_path}: its {META_FILE} is not valid JSON") from None
        return meta if isinstance(meta, dict) else {}

    def _load_script(self, path: str, meta: dict[str, Any]) -> None:
        torch = self._torch
        extra = {META_FILE: ""}
        try:
            module = torch.jit.load(path, map_location=self.tdevice, _extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, ValueError, ...
            msg = " ".join(str(exc).split())[:300]
            raise ModelError(
                f"model {path} is not a TorchScript file ({msg}); save it with torch.jit.save, or a .pt2 with torch.export.save"
            ) from None
        module.eval()
        self.kind = "torchscript"
        self.module = module
        meta.update(self._read_meta(extra[META_FILE]))
        args = [a for a in module.forward.schema.arguments[1:]]
        names = [a.name.split(".")[0] for a in args]
        self.inputs = self._input_specs(meta, [(n, "float32", None) for n in names])
        returns = module.forward.schema.returns
        rtype = str(returns[0].type) if returns else "Tensor"
        out_names = meta.get("outputs")
        if out_names is None:
            if rtype.startswith("Tuple") or rtype.startswith("List"):
                out_names = self._probe_names()
            elif rtype.startswith("Dict"):
                out_names = self._probe_names()
            else:
                out_names = ["output"]
        self._out_names = [str(n) for n in out_names]
        self.outputs = [TensorSpec(n, "float32", None) for n in self._out_names]

    def _load_export(self, path: str, meta: dict[str, Any]) -> None:
        torch = self._torch
        extra = {META_FILE: ""}
        try:
            ep = torch.export.load(path, extra_files=extra)
        except Exception as exc:  # noqa: BLE001
            msg = " ".join(str(exc).split())[:300]
            raise ModelError(f"model {path} is not a torch.export program ({msg}); save it with torch.export.save") from None
        if self.tdevice.type != "cpu":
            move = getattr(getattr(torch.export, "passes", None), "move_to_device_pass", None)
            if move is not None:
                ep = move(ep, self.tdevice)
        meta.update(self._read_meta(extra[META_FILE]))
        self.kind = "export"
        self.program = ep
        module = ep.module()
        if self.tdevice.type != "cpu" and getattr(torch.export, "passes", None) is None:
            module = module.to(self.tdevice)
        self.module = module
        placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
        specs = []
        for name in ep.graph_signature.user_inputs:
            val = placeholders[name].meta.get("val") if name in placeholders else None
            if val is None or not hasattr(val, "shape"):
                specs.append((name, "float32", None))
                continue
            shape = tuple(d if isinstance(d, int) else None for d in val.shape)
            if shape and shape[0] is not None:
                shape = (None, *shape[1:])  # the batch dimension is the pipeline's to choose
            specs.append((name, _np_feed_dtype(_torch_dtype_name(val.dtype)), shape))
        self.inputs = self._input_specs(meta, specs)
        out_node = next(n for n in ep.graph.nodes if n.op == "output")
        n_user = len(ep.graph_signature.user_outputs)
        vals = list(out_node.args[0])[-n_user:] if n_user else []
        out_spec = ep.call_spec.out_spec
        names = meta.get("outputs")
        if names is None:
            from torch.utils._pytree import LeafSpec

            if out_spec is None or isinstance(out_spec, LeafSpec) or out_spec.num_leaves == 1 and out_spec.type not in (dict,):
                names = ["output"] if n_user == 1 else [f"output_{i}" for i in range(n_user)]
            elif out_spec.type is dict:
                names = [str(k) for k in out_spec.context]
            else:
                names = [f"output_{i}" for i in range(n_user)]
        self._out_names = [str(n) for n in names]
        self.outputs = []
        for name, node in zip(self._out_names, vals):
            val = getattr(node, "meta", {}).get("val")
            if val is None or not hasattr(val, "shape"):
                self.outputs.append(TensorSpec(name, "float32", None))
                continue
            shape = tuple(d if isinstance(d, int) else None for d in val.shape)
            if shape:
                shape = (None, *shape[1:])
            self.outputs.append(TensorSpec(name, _np_feed_dtype(_torch_dtype_name(val.dtype)), shape))

    def _input_specs(self, meta: dict[str, Any], found: list[tuple[str, str, tuple | None]]) -> list[TensorSpec]:
        given = meta.get("inputs")
        if not given:
            return [TensorSpec(n, d, s) for n, d, s in found]
        specs = []
        for item in given:
            try:
                shape = item.get("shape")
                specs.append(TensorSpec(
                    str(item["name"]), _np_feed_dtype(str(item.get("dtype", "float32"))),
                    None if shape is None else tuple(None if d is None or d < 0 else int(d) for d in shape),
                ))
            except (KeyError, TypeError, AttributeError):
                raise ModelError(
                    f"model {self.model_path}: {META_FILE} inputs must be a list of "
                    '{"name": ..., "dtype": ..., "shape": [...]}'
                ) from None
        if len(specs) != len(found):
            raise ModelError(
                f"model {self.model_path}: {META_FILE} describes {len(specs)} input(s) but forward takes {len(found)}"
            )
        return specs

    def _probe_names(self) -> list[str]:
        """Output names of a tuple/dict-returning TorchScript model, from one zero row."""
        if any(s.shape is None or any(d is None for d in s.shape[1:]) for s in self.inputs):
            raise ModelError(
                f"model {self.model_path} returns a tuple or dict; describe its inputs in {META_FILE} "
                "(see docs/backends.md) so batchscore can name the outputs"
            )
        feeds = {s.name: np.zeros((1, *s.shape[1:]), dtype=s.dtype) for s in self.inputs}
        self._out_names = None
        raw = self._call(self._to_tensors(feeds))
        if isinstance(raw, dict):
            return [str(k) for k in raw]
        return [f"output_{i}" for i in range(len(raw))]

    def _autocast_dtype(self, precision: str):
        torch = self._torch
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        kind = self.tdevice.type
        if kind == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise DeviceError(f"--precision bf16: GPU {self.device} does not support bfloat16; use fp16 or fp32")
        available = getattr(torch.amp, "is_autocast_available", lambda _k: kind in ("cpu", "cuda"))
        if not available(kind):
            raise DeviceError(f"--precision {precision}: PyTorch has no autocast for {kind}; use --precision fp32")
        return dtype

    # -- running ---------------------------------------------------------------
    def _to_tensors(self, feeds: dict[str, Any]) -> list:
        torch = self._torch
        return [torch.from_numpy(np.asarray(feeds[s.name])).to(self.tdevice) for s in self.inputs]

    def _call(self, args: list):
        torch = self._torch
        with torch.inference_mode():
            if self._autocast is not None:
                with torch.autocast(self.tdevice.type, dtype=self._autocast):
                    return self.module(*args)
            return self.module(*args)

    def _flatten(self, raw) -> list:
        if isinstance(raw, dict):
            if self._out_names is None:
                return list(raw.values())
            return [raw[n] for n in self._out_names]
        if isinstance(raw, (tuple, list)):
            return list(raw)
        return [raw]

    def _numpy(self, t) -> np.ndarray:
        if t.dtype == self._torch.bfloat16 or (self._autocast is not None and t.is_floating_point()):
            t = t.float()
        return t.detach().cpu().numpy()

    def predict(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if self._cuda is not None:
            return self._cuda.run(self, feeds)
        raw = self._call([self._torch.from_numpy(np.asarray(feeds[s.name])) for s in self.inputs] if self.tdevice.type == "cpu" else self._to_tensors(feeds))
        return {n: self._numpy(t) for n, t in zip(self._out_names, self._flatten(raw))}

    def release_memory(self) -> None:
        """After an out-of-memory error: hand cached CUDA blocks back before the retry."""
        if self.tdevice.type == "cuda":
            self._torch.cuda.empty_cache()

    def close(self) -> None:
        self.module = None
        self._cuda = None


def _set_threads(torch, threads: int) -> None:
    # Process-wide; set before the first op where possible (see PERFORMANCE-NOTES).
    with _LOCK:
        if torch.get_num_threads() != max(1, threads):
            torch.set_num_threads(max(1, threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set, or parallel work has started
            pass


class _CudaFeeder:
    """Host→device copies that overlap compute, and OOM back-off.

    A batch is cut into chunks. Each input chunk is copied into a reusable
    pinned host buffer (pinning per call blocks the host, see
    PERFORMANCE-NOTES), then to the device with ``non_blocking=True`` on a
    side stream; the compute stream waits on an event, so the copy of chunk
    k+1 runs while chunk k computes. Outputs are copied back asynchronously
    and read after one synchronise.
    """

    def __init__(self, torch, device, options: dict[str, Any]):
        self.torch = torch
        self.device = device
        self.copy_stream = torch.cuda.Stream(device=device)
        self.pinned: dict[str, Any] = {}
        self.chunk_rows: int | None = options.get("chunk_rows")
        self.oom_rows: int | None = None  # a chunk size that fit after an out-of-memory error

    def _pinned(self, name: str, arr: np.ndarray, slot: int):
        torch = self.torch
        key = f"{name}/{slot}"
        buf = self.pinned.get(key)
        need = arr.nbytes
        if buf is None or buf.numel() < need:
            buf = torch.empty(max(need, 1), dtype=torch.uint8, pin_memory=True)
            self.pinned[key] = buf
        host = buf[:need].view(_torch_dtype(torch, arr.dtype)).view(arr.shape)
        host.numpy()[...] = arr
        return host

    def _stage(self, backend: TorchBackend, feeds: dict[str, Any], lo: int, hi: int, slot: int):
        """Start copying rows lo:hi to the device; returns (tensors, ready event)."""
        torch = self.torch
        with torch.cuda.stream(self.copy_stream):
            tensors = []
            for s in backend.inputs:
                host = self._pinned(s.name, np.asarray(feeds[s.name])[lo:hi], slot)
                tensors.append(host.to(self.device, non_blocking=True))
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return tensors, ready

    def run(self, backend: TorchBackend, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        torch = self.torch
        n = len(next(iter(feeds.values()))) if feeds else 0
        chunk = self.chunk_rows or max(1, (n + 3) // 4)  # four chunks: enough to overlap, few launches
        if self.oom_rows is not None:
            chunk = min(chunk, self.oom_rows)
        main = torch.cuda.current_stream(self.device)
        parts: list[list[np.ndarray]] = []
        lo, slot = 0, 0
        staged = self._stage(backend, feeds, 0, min(n, chunk), slot) if n else None
        while lo < n:
            hi = min(n, lo + chunk)
            tensors, ready = staged
            main.wait_event(ready)
            for t in tensors:
                t.record_stream(main)  # the copy stream's allocation is used on main
            # Start the next chunk's copy before this chunk's compute is queued.
            # Its pinned slot differs, so the host may write it while this copy runs.
            slot ^= 1
            nxt_hi = min(n, hi + chunk)
            staged = self._stage(backend, feeds, hi, nxt_hi, slot) if hi < n else None
            try:
                raw = backend._call(tensors)
                outs = [t.to("cpu", non_blocking=True) if t.dtype != torch.bfloat16 else t.float().to("cpu", non_blocking=True)
                        for t in backend._flatten(raw)]
                main.synchronize()  # the D2H copies are done before numpy reads them
            except torch.cuda.OutOfMemoryError:
                del tensors
                torch.cuda.empty_cache()
                if hi - lo == 1:
                    raise ModelError(
                        f"CUDA out of memory on {backend.device} with a single row: the model does not fit"
                    ) from None
                chunk = self.oom_rows = max(1, (hi - lo) // 2)
                self.copy_stream.synchronize()
                staged = self._stage(backend, feeds, lo, min(n, lo + chunk), slot)
                continue
            parts.append([backend._numpy(t) for t in outs])
            lo = hi
        if not parts:
            return {}
        return {name: np.concatenate([p[i] for p in parts]) if len(parts) > 1 else parts[0][i]
                for i, name in enumerate(backend._out_names)}


def _torch_dtype(torch, dtype: np.dtype):
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
