"""A third-party-style backend for tests: onnxruntime on the CPU with its memory
arena capped at a few MiB, so a big batch really runs out of memory (onnxruntime's
own BFCArena error, as on a GPU). It claims it can run on "cuda" so that
``--device gpu:all`` with a faked nvidia-smi makes one replica per fake GPU; every
replica computes on the CPU. Calls are recorded as (device, rows)."""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

from batchscore.backends import Backend, TensorSpec

ARENA_BYTES = 4 << 20
_registered = threading.Lock()
_done = []


def _capped_arena() -> None:
    with _registered:
        if not _done:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(ARENA_BYTES, -1, -1, -1))
            _done.append(True)


class SmallMemoryBackend(Backend):
    name = "smallmem"
    extensions = (".smallmem",)
    device_kinds = ("cpu", "cuda")
    calls: list[tuple[str, int]] = []

    @classmethod
    def gpu_problem(cls):
        return Backend.gpu_problem()  # only "is there an NVIDIA GPU" (nvidia-smi; faked in tests)

    def __init__(self, model_path, device, *, threads, options=None):
        super().__init__(model_path, device, threads=threads, options=options)
        _capped_arena()
        so = ort.SessionOptions()
        so.add_session_config_entry("session.use_env_allocators", "1")
        so.intra_op_num_threads = 1
        so.log_severity_level = 4
        self.session = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])

        def spec(a):
            shape = tuple(d if isinstance(d, int) else None for d in a.shape)
            return TensorSpec(a.name, "float32", shape)

        self.inputs = [spec(a) for a in self.session.get_inputs()]
        self.outputs = [spec(a) for a in self.session.get_outputs()]
        self._names = [o.name for o in self.outputs]

    def predict(self, feeds):
        rows = len(np.asarray(next(iter(feeds.values()))))
        type(self).calls.append((str(self.device), rows))
        return dict(zip(self._names, self.session.run(self._names, feeds)))
