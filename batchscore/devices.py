"""What hardware is here, and which device a backend gets for --device."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from .errors import DeviceError

if TYPE_CHECKING:
    from .backends import Backend, Device


def cpu_count() -> int:
    """Cores this process may use: CPU affinity, capped by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    try:  # cgroup v2
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fh:
            quota_us = int(fh.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
            period_us = int(fh.read())
        if quota_us > 0:
            return quota_us / period_us
    except (OSError, ValueError):
        pass
    return None


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int | None = None


@lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[Gpu, ...]:
    """NVIDIA GPUs visible to this process (via nvidia-smi; none when it is absent)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0].isdigit():
            mem = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            gpus.append(Gpu(int(parts[0]), parts[1], mem))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if str(g.index) in wanted]
        gpus = [Gpu(i, g.name, g.memory_mib) for i, g in enumerate(gpus)]
    return tuple(gpus)


def resolve_device(requested: str, backend: "type[Backend]") -> "Device":
    """Map --device onto a Device the backend can use, or raise DeviceError.

    ``auto`` picks a GPU when the backend can drive one and one is present,
    else the CPU. Backends override ``gpu_available`` to say whether their
    runtime build has GPU support.
    """
    from .backends import Device

    kind, _, index = requested.partition(":")
    if kind == "cuda":
        kind = "gpu"
    if kind == "auto":
        if "cuda" in backend.device_kinds and nvidia_gpus() and backend.gpu_problem() is None:
            gpu = nvidia_gpus()[0]
            return Device("cuda", 0, f"{gpu.name} (picked by --device auto)")
        return Device("cpu", None, f"{cpu_count()} CPU cores (picked by --device auto)")
    if kind == "cpu":
        return Device("cpu", None, f"{cpu_count()} CPU cores")
    if kind == "gpu":
        problem = backend.gpu_problem() if "cuda" in backend.device_kinds else (
            f"the {backend.name} backend cannot run on a GPU"
        )
        if problem:
            raise DeviceError(f"--device {requested}: {problem}; use --device cpu or auto")
        gpus = nvidia_gpus()
        idx = 0 if index in ("", "all") else int(index)
        if idx >= len(gpus):
            raise DeviceError(
                f"--device {requested}: there is no GPU {idx}; this machine has {len(gpus)} "
                f"(GPU 0..{len(gpus) - 1})"
            )
        return Device("cuda", idx, gpus[idx].name)
    if kind in ("tpu", "mps"):
        if kind not in backend.device_kinds:
            raise DeviceError(
                f"--device {requested}: the {backend.name} backend cannot run on a {kind.upper()}; "
                "use --device cpu or auto"
            )
        return Device(kind, int(index) if index.isdigit() else None, kind.upper())
    raise DeviceError(f"--device {requested!r} is not a device: use auto, cpu, gpu, gpu:N, cuda:N, tpu or mps")


def tpus() -> list[str]:
    """TPU chips visible to this host (their /dev/accel* or /dev/vfio device files)."""
    import glob

    return sorted(glob.glob("/dev/accel[0-9]*")) or (
        sorted(p for p in glob.glob("/dev/vfio/[0-9]*")) if os.path.exists("/sys/class/tpu") else []
    )


def survey() -> dict:
    """What this machine has and which backends can use it (``batchscore devices``).

    Returns:
        ``{"cpu": {...}, "gpus": [...], "tpus": [...], "mps": bool, "backends": {name: {...}},
        "warnings": [...]}``; each backend entry lists the device kinds it can use here
        (``usable``), or says what to install (``install``) or what is wrong (``problems``).
    """
    import importlib.util

    from .backends import available, load_class
    from .errors import BatchscoreError

    gpus = nvidia_gpus()
    out: dict = {
        "cpu": {"cores": cpu_count(), "os_cpus": os.cpu_count()},
        "gpus": [{"index": g.index, "name": g.name, "memory_mib": g.memory_mib} for g in gpus],
        "tpus": tpus(),
        "mps": False,
        "backends": {},
        "warnings": [],
    }
    for name in sorted(available()):
        entry: dict = {"usable": [], "problems": {}}
        try:
            cls = load_class(name)
        except BatchscoreError:
            cls = None
        # Backends name the packages they import lazily; find_spec does not import them.
        requires = getattr(cls, "requires", ()) if cls is not None else (name,)
        if cls is None or any(importlib.util.find_spec(r) is None for r in requires):
            entry["install"] = f"pip install 'batchscore[{name}]'"
            out["backends"][name] = entry
            continue
        for kind in cls.device_kinds:
            if kind == "cpu":
                entry["usable"].append("cpu")
                continue
            try:
                cls.resolve_device({"cuda": "gpu"}.get(kind, kind))
                entry["usable"].append(kind)
            except BatchscoreError as exc:
                entry["problems"][kind] = str(exc).split(": ", 1)[-1].removesuffix("; use --device cpu or auto")
            except Exception as exc:  # noqa: BLE001 - a broken runtime must not break the listing
                entry["problems"][kind] = f"{type(exc).__name__}: {exc}"
        if "mps" in entry["usable"]:
            out["mps"] = True
        out["backends"][name] = entry
    onnx = out["backends"].get("onnx", {})
    if gpus and "cuda" not in onnx.get("usable", []):
        out["warnings"].append(
            "a GPU is present but onnxruntime has no CUDA provider: the CPU build shadows onnxruntime-gpu; "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
        )
    return out
