"""Model runtimes behind one interface.

A backend loads a model for a device and predicts one batch: named numpy
arrays in, named arrays out. The pipeline does the batching, padding and
feature building. Backends register under the ``batchscore.backends.v1`` entry
point group; the built-in ones register the same way (with a fallback table so
a source checkout works before ``pip install``).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ModelError, UsageError

ENTRY_POINT_GROUP = "batchscore.backends.v1"
_BUILTIN = {
    "onnx": "batchscore.backends.onnx:OnnxBackend",
    "torch": "batchscore.backends.torch:TorchBackend",
    "jax": "batchscore.backends.jax:JaxBackend",
    "sklearn": "batchscore.backends.sklearn:SklearnBackend",
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the backend reports it.

    ``dtype`` is a numpy dtype name (``float32``, ``int64``, ``bool``) or
    ``string``; ``shape`` holds ints for fixed dimensions and None for dynamic
    ones (the first is the batch dimension).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    @property
    def fixed_batch(self) -> int | None:
        if self.shape and isinstance(self.shape[0], int) and self.shape[0] > 0:
            return self.shape[0]
        return None

    def describe(self) -> str:
        dims = "?" if self.shape is None else ",".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


@dataclass
class Device:
    """A resolved device: ``kind`` is cpu, cuda, tpu or mps."""

    kind: str
    index: int | None = None
    description: str = ""

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


class Backend(ABC):
    """Base class of model runtimes. Subclasses implement :meth:`predict`.

    A loaded backend is a long-lived object: ``predict`` may be called from
    one thread at a time, batch after batch, for the life of a run or a server.
    """

    name: ClassVar[str]
    #: Model file extensions this backend claims when --backend is not given.
    extensions: ClassVar[tuple[str, ...]] = ()
    #: Device kinds this backend can run on.
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu",)
    #: Rows per batch when --batch-size is not given.
    default_batch_size: ClassVar[int] = 8192

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def __init__(self, model_path: str, device: Device, *, threads: int, options: dict[str, Any] | None = None):
        self.model_path = model_path
        self.device = device
        self.threads = threads
        self.options = options or {}
        #: Per-output metadata (e.g. class labels), written to the output file.
        self.output_metadata: dict[str, dict[str, Any]] = {}

    @classmethod
    def sniff(cls, path: str) -> bool:
        """Whether the file looks like this backend's model (by extension by default)."""
        return path.lower().endswith(cls.extensions)

    @classmethod
    def gpu_problem(cls) -> str | None:
        """Why this backend cannot use a GPU here, or None when it can."""
        from ..devices import nvidia_gpus

        if not nvidia_gpus():
            return "no NVIDIA GPU found (nvidia-smi is missing or lists none)"
        return None

    @classmethod
    def resolve_device(cls, requested: str) -> Device:
        """Turn --device into a Device this backend can use, or raise DeviceError."""
        from ..devices import resolve_device

        return resolve_device(requested, cls)

    @abstractmethod
    def predict(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run one batch. Inputs and outputs are numpy arrays keyed by name."""

    def is_out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` (raised by :meth:`predict`) means the device ran out of
        memory. The pipeline then splits the batch in half and retries it, and
        keeps the smaller size for the rest of the run. Backends may override;
        the default knows the messages of the common runtimes."""
        return looks_like_out_of_memory(exc)

    def close(self) -> None:
        """Release the model."""


_OOM_MARKERS = (
    "out of memory",  # torch.cuda.OutOfMemoryError, CUDA runtime, many others
    "resource_exhausted",  # XLA / JAX
    "failed to allocate memory",  # onnxruntime BFCArena (CUDA)
    "smaller than requested bytes",  # onnxruntime BFCArena at its limit ("Available memory of 0 is ...")
    "alloc_failed",  # CUBLAS_STATUS_ALLOC_FAILED, CUDNN_STATUS_ALLOC_FAILED
    "cudaerrormemoryallocation",
)


def looks_like_out_of_memory(exc: BaseException) -> bool:
    """Whether an exception from a model runtime says the device ran out of memory."""
    if isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__:
        return True
    text = str(exc).lower().replace(" ", "")
    return any(m.replace(" ", "") in text for m in _OOM_MARKERS)


def _entry_points() -> dict[str, str]:
    table = dict(_BUILTIN)
    try:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            table[ep.name] = ep.value
    except Exception:  # noqa: BLE001 - broken metadata must not break the run
        pass
    return table


def available() -> dict[str, str]:
    """Registered backend names → ``module:Class`` references."""
    return _entry_points()


def load_class(name: str) -> type[Backend]:
    import importlib

    table = _entry_points()
    if name not in table:
        raise UsageError(f"--backend {name!r} is unknown; available: {', '.join(sorted(table))}")
    module, _, attr = table[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise UsageError(f"backend {name!r} cannot be imported ({exc}): install its extra, e.g. pip install 'batchscore[{name}]'") from None
    return cls


def pick_backend(model_path: str, requested: str | None = None) -> type[Backend]:
    """The backend for a model: --backend if given, else by file extension."""
    if not os.path.exists(model_path):
        raise ModelError(f"model {model_path} does not exist: fix --model")
    if os.path.isdir(model_path):
        raise ModelError(f"model {model_path} is a directory, not a model file: fix --model")
    if requested:
        return load_class(requested)
    for name in _entry_points():
        try:
            cls = load_class(name)
        except UsageError:
            continue
        if cls.sniff(model_path):
            return cls
    raise ModelError(
        f"cannot tell which runtime reads model {model_path} from its extension: "
        f"pass --backend ({', '.join(sorted(_entry_points()))})"
    )


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
