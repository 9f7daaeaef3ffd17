"""Calling the model: one backend or one replica per device, and out-of-memory back-off.

The pipeline hands each batch to a :class:`ModelRunner`. With one backend the
call runs on the pipeline's model thread. With replicas (``--device gpu:all``:
one per GPU) each call runs on a worker thread that takes whichever replica is
free, so as many batches are in flight as there are replicas; the pipeline
collects the results in order, so output order and shard accounting do not
change.

When a call runs out of device memory (``Backend.is_out_of_memory``), the batch
is split in half and each half is retried, recursively; the rows are the same
rows, in the same order, so nothing is lost or repeated. The size that fitted is
kept for the rest of the run (later batches are cut into calls of that size),
and the run summary reports the back-off.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from .backends import Backend
from .errors import ModelError


def split_feeds(feeds: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    """Rows lo:hi of every input (views, no copy)."""
    return {k: np.asarray(v)[lo:hi] for k, v in feeds.items()}


def concat_outputs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


class ModelRunner:
    """Runs batches through the backend(s), halving a batch that runs out of memory.

    Args:
        backends: one loaded backend, or one replica per device.
        fixed_batch: the model's fixed batch dimension, if any (such a batch cannot be split).
        watchdog: ``enter(slot, what)`` / ``leave(slot)`` around each call (``--timeout``).
    """

    def __init__(self, backends: list[Backend], *, fixed_batch: int | None = None, watchdog=None):
        if not backends:
            raise ValueError("ModelRunner needs at least one backend")
        self.backends = backends
        self.fixed_batch = fixed_batch
        self.watchdog = watchdog
        #: After an out-of-memory error: the most rows one call may take.
        self.max_rows: int | None = None
        #: How many calls ran out of memory (each was split in half and retried).
        self.oom_events = 0
        #: Model calls made (a batch split after an OOM makes several).
        self.calls = 0
        #: Batches handed to :meth:`submit` so far.
        self.submitted = 0
        #: CPU seconds of the replica worker threads (the calls' own threads; not the runtimes' pools).
        self.worker_cpu_seconds = 0.0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._free: queue.Queue | None = None
        if len(backends) > 1:
            self._pool = ThreadPoolExecutor(len(backends), thread_name_prefix="batchscore-replica")
            self._free = queue.Queue()
            for i in range(len(backends)):
                self._free.put(i)

    @property
    def parallel(self) -> int:
        """How many batches may be in flight at once."""
        return len(self.backends)

    # -- one call ----------------------------------------------------------------
    def predict(self, feeds: dict[str, Any], rows: int, replica: int = 0, batch: int | None = None) -> dict[str, Any]:
        """Predict ``rows`` rows on one replica; splits on out-of-memory errors.
        ``batch`` (1-based) names the batch in a --timeout message."""
        limit = self.max_rows
        if limit is not None and rows > limit and self.fixed_batch is None:
            return self._in_parts(feeds, rows, limit, replica, batch)
        backend = self.backends[replica]
        slot = f"model{replica}"
        if self.watchdog is not None:
            what = "a model call" if batch is None else f"the model call on batch {batch}"
            if len(self.backends) > 1:
                what += f" on {backend.device}"
            self.watchdog.enter(slot, what)
        try:
            with self._lock:
                self.calls += 1
            return backend.predict(feeds)
        except Exception as exc:
            if not backend.is_out_of_memory(exc):
                raise
            return self._after_oom(backend, feeds, rows, replica, exc, batch)
        finally:
            if self.watchdog is not None:
                self.watchdog.leave(slot)

    def _after_oom(self, backend: Backend, feeds: dict[str, Any], rows: int, replica: int, exc: BaseException,
                   batch: int | None):
        detail = " ".join(str(exc).split())[:200]
        if self.fixed_batch is not None:
            raise ModelError(
                f"the model ran out of memory on {backend.device} and its batch size is fixed at "
                f"{self.fixed_batch} rows, so the batch cannot be split: use a smaller model or a device "
                f"with more memory ({detail})"
            ) from None
        if rows <= 1:
            raise ModelError(
                f"the model ran out of memory on {backend.device} with a single row: it does not fit; "
                f"use --device cpu or a device with more memory ({detail})"
            ) from None
        half = (rows + 1) // 2
        with self._lock:
            self.oom_events += 1
            self.max_rows = half if self.max_rows is None else min(self.max_rows, half)
        release = getattr(backend, "release_memory", None)
        if callable(release):
            release()
        return self._in_parts(feeds, rows, half, replica, batch)

    def _in_parts(self, feeds: dict[str, Any], rows: int, size: int, replica: int, batch: int | None) -> dict[str, Any]:
        parts = []
        for lo in range(0, rows, size):
            hi = min(rows, lo + size)
            parts.append(self.predict(split_feeds(feeds, lo, hi), hi - lo, replica, batch))
        return concat_outputs(parts)

    # -- replicas ----------------------------------------------------------------
    def submit(self, feeds: dict[str, Any], rows: int) -> "Future[tuple[dict[str, Any], float]]":
        """Start a call; the future gives (predictions, seconds). With one backend it runs now."""
        self.submitted += 1
        if self._pool is None:
            fut: Future = Future()
            t0 = time.perf_counter()
            try:
                out = self.predict(feeds, rows, 0, self.submitted)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                fut.set_exception(exc)
                return fut
            fut.set_result((out, time.perf_counter() - t0))
            return fut
        return self._pool.submit(self._on_free_replica, feeds, rows, self.submitted)

    def _on_free_replica(self, feeds: dict[str, Any], rows: int, batch: int) -> tuple[dict[str, Any], float]:
        assert self._free is not None
        replica = self._free.get()
        c0 = time.thread_time()
        try:
            t0 = time.perf_counter()
            out = self.predict(feeds, rows, replica, batch)
            return out, time.perf_counter() - t0
        finally:
            with self._lock:
                self.worker_cpu_seconds += time.thread_time() - c0
            self._free.put(replica)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def describe_backoff(self) -> str | None:
        if not self.oom_events:
            return None
        return (
            f"the device ran out of memory {self.oom_events} time(s); batches were split and retried "
            f"(no row lost or repeated), then run {self.max_rows:,} rows per model call"
        )


def map_in_order(runner: ModelRunner, items, feeds_of: Callable[[Any], tuple[dict[str, Any] | None, int]]):
    """Yield (item, predictions or None, seconds) in input order, with up to
    ``runner.parallel`` calls in flight. ``feeds_of(item)`` gives its inputs and rows
    (None for an item with nothing to predict)."""
    from collections import deque

    inflight: deque = deque()
    for item in items:
        feeds, rows = feeds_of(item)
        inflight.append((item, runner.submit(feeds, rows) if feeds is not None else None))
        while len(inflight) >= runner.parallel:
            done_item, fut = inflight.popleft()
            yield (done_item, *(fut.result() if fut is not None else (None, 0.0)))
    while inflight:
        done_item, fut = inflight.popleft()
        yield (done_item, *(fut.result() if fut is not None else (None, 0.0)))
