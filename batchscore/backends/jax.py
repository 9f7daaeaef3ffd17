"""JAX models as serialized ``jax.export`` artifacts (StableHLO, weights baked in).

An artifact runs only on the platforms it was exported for (``platforms=
["cpu", "cuda", "tpu"]``); batchscore checks them against --device before
scoring. This is batchscore's TPU path. How to export: docs/backends.md.

Input names: a function exported with keyword arguments, or with one dict
argument, has inputs named by the keys; positional arrays are ``input`` (one)
or ``input_0``, ``input_1``... Outputs likewise: dict keys, ``output`` or
``output_0``...
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeviceError, MissingDependencyError, ModelError, UsageError
from . import Backend, Device, TensorSpec

#: batchscore's device kinds → jax.export platform names.
_PLATFORM = {"cpu": "cpu", "cuda": "cuda", "tpu": "tpu"}


def _import_jax():
    try:
        import jax
        import jax.export  # noqa: F401 - a submodule from jax 0.4.30
    except ImportError:
        raise MissingDependencyError("JAX is not installed: pip install 'batchscore[jax]'") from None
    return jax


def _jax_devices(jax, platform: str) -> list:
    try:
        return list(jax.devices(platform))
    except RuntimeError:
        return []


def _names(tree, n: int, prefix: str, jax) -> tuple[list[str], str]:
    """Names of the leaves of a pytree of arrays, and how to rebuild the call's args.

    Returns (names, mode): mode is ``kwargs``, ``dict`` (one dict positional arg),
    ``positional`` or ``leaf``.
    """
    structure = jax.tree_util.tree_unflatten(tree, list(range(n)))
    if prefix == "input":
        args, kwargs = structure
        if kwargs and not args:
            return [str(k) for k in kwargs], "kwargs"
        if len(args) == 1 and isinstance(args[0], dict) and not kwargs:
            return [str(k) for k in args[0]], "dict"
        if not kwargs and all(isinstance(a, int) for a in args):
            return (["input"] if len(args) == 1 else [f"input_{i}" for i in range(len(args))]), "positional"
        raise ModelError(
            "the exported function takes nested arguments; export one taking arrays, keyword arrays or one dict"
        )
    if isinstance(structure, dict):
        return [str(k) for k in structure], "dict"
    if isinstance(structure, (tuple, list)):
        return [f"output_{i}" for i in range(len(structure))], "positional"
    return ["output"], "leaf"


def _dims(shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in shape)


class JaxBackend(Backend):
    """A deserialized ``jax.export.Exported``, called through ``jax.jit``."""

    name = "jax"
    requires = ("jax", "jaxlib")
    extensions = (".jax", ".jaxexport")
    device_kinds = ("cpu", "cuda", "tpu")
    default_batch_size = 1024

    @classmethod
    def gpu_problem(cls) -> str | None:
        base = super().gpu_problem()
        jax = _import_jax()
        if not _jax_devices(jax, "cuda"):
            missing = "JAX has no CUDA support here (jax.devices('cuda') finds none): pip install -U 'jax[cuda12]'"
            return f"{base} and {missing}" if base else missing
        return base

    @classmethod
    def resolve_device(cls, requested: str) -> Device:
        if requested == "auto":
            tpus = _jax_devices(_import_jax(), "tpu")
            if tpus:  # a TPU host: the TPU is what the artifact was most likely exported for
                return Device("tpu", 0, f"{tpus[0].device_kind} (picked by --device auto)")
        device = super().resolve_device(requested)
        if device.kind == "tpu":
            jax = _import_jax()
            tpus = _jax_devices(jax, "tpu")
            if not tpus:
                raise DeviceError(
                    f"--device {requested}: no TPU found: JAX sees none (jax.devices('tpu') fails); TPUs need a "
                    "Cloud TPU VM and pip install -U 'jax[tpu]'; use --device cpu or auto"
                )
            index = device.index or 0
            if index >= len(tpus):
                raise DeviceError(f"--device {requested}: there is no TPU {index}; JAX sees {len(tpus)}")
            device.description = str(tpus[index].device_kind)
        return device

    def __init__(self, model_path: str, device: Device, *, threads: int, options: dict[str, Any] | None = None):
        super().__init__(model_path, device, threads=threads, options=options)
        jax = _import_jax()
        self._jax = jax
        precision = self.options.get("precision")
        if precision not in (None, "fp32"):
            raise UsageError(
                f"--precision {precision}: the jax backend runs the artifact in the precision it was exported in; "
                "export it in the precision you want"
            )
        try:
            with open(model_path, "rb") as fh:
                data = bytearray(fh.read())
        except OSError as exc:
            raise ModelError(f"cannot read model {model_path}: {exc.strerror}: fix --model") from None
        try:
            exp = jax.export.deserialize(data)
        except Exception as exc:  # noqa: BLE001 - flatbuffer and version errors vary
            msg = " ".join(str(exc).split())[:300]
            raise ModelError(
                f"model {model_path} is not a serialized jax.export artifact ({msg}); write one with "
                "jax.export.export(jax.jit(f), platforms=[...])(*specs).serialize()"
            ) from None
        self.exported = exp
        self.platforms = tuple(exp.platforms)
        wanted = _PLATFORM.get(device.kind)
        if wanted not in self.platforms:
            flag = "gpu" if device.kind == "cuda" else device.kind
            raise DeviceError(
                f"--device {flag}: model {model_path} was exported for {', '.join(self.platforms)} only, not {wanted}; "
                f"export it again with platforms including {wanted!r} (see docs/backends.md) or use "
                f"--device {'cpu' if 'cpu' in self.platforms else self.platforms[0]}"
            )
        devs = _jax_devices(jax, wanted)
        if not devs:
            raise DeviceError(f"--device {device}: JAX sees no {wanted} device")
        self.jdevice = devs[device.index or 0] if device.kind != "cpu" else devs[0]
        n_in = len(exp.in_avals)
        in_names, self._in_mode = _names(exp.in_tree, n_in, "input", jax)
        out_names, self._out_mode = _names(exp.out_tree, len(exp.out_avals), "output", jax)
        self.inputs = [TensorSpec(n, np.dtype(a.dtype).name, _dims(a.shape)) for n, a in zip(in_names, exp.in_avals)]
        self.outputs = [TensorSpec(n, np.dtype(a.dtype).name, _dims(a.shape)) for n, a in zip(out_names, exp.out_avals)]
        self._fn = jax.jit(exp.call)

    def predict(self, feeds: dict[str, Any]) -> dict[str, Any]:
        jax = self._jax
        arrays = [jax.device_put(np.asarray(feeds[s.name], dtype=s.dtype), self.jdevice) for s in self.inputs]
        names = [s.name for s in self.inputs]
        if self._in_mode == "kwargs":
            out = self._fn(**dict(zip(names, arrays)))
        elif self._in_mode == "dict":
            out = self._fn(dict(zip(names, arrays)))
        else:
            out = self._fn(*arrays)
        if self._out_mode == "dict":
            leaves = [out[s.name] for s in self.outputs]
        elif self._out_mode == "positional":
            leaves = list(out)
        else:
            leaves = [out]
        return {s.name: np.asarray(x) for s, x in zip(self.outputs, leaves)}

    def close(self) -> None:
        self._fn = None
        self.exported = None
