"""The streaming engine: reader → model → writer on three threads joined by
bounded queues, so decoding, inference and writing overlap, memory stays flat
(backpressure) and the slowest stage sets the pace.

The reader thread decodes shards, applies --where, cuts the stream into
fixed-size batches that cross shard boundaries and builds the model's input
arrays. The calling thread runs the model (onnxruntime and torch release the
GIL while they compute). The writer thread turns predictions into Arrow
columns and hands each shard's rows to the sink, committing a shard once its
last row is written.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa

from .errors import BatchscoreError, Interrupted, UsageError
from .features import build_feeds
from .outputs import to_arrow
from .plan import Plan
from .report import NullProgress, RunSummary
from .sinks import Sink

_DONE = object()
#: Rows per decoded read batch when the model batch is small.
MIN_READ_BATCH = 65_536


@dataclass
class WorkItem:
    """One model batch: its inputs, the kept columns per shard segment, and
    the shards whose last row is in (or before) this batch."""

    rows: int
    feeds: dict[str, Any] | None
    parts: list[tuple[int, pa.RecordBatch]]
    ends: list[int] = field(default_factory=list)


class Rebatcher:
    """Cuts a stream of (shard, batch) pieces into batches of exactly ``size``
    rows that cross shard boundaries; records where each shard ends."""

    def __init__(self, size: int):
        self.size = size
        self.pieces: deque[tuple[int, pa.RecordBatch]] = deque()
        self.buffered = 0
        self.markers: list[tuple[int, int]] = []  # (rows buffered when shard ended, shard)

    def add(self, shard: int, batch: pa.RecordBatch) -> Iterator[tuple[list, int, list[int]]]:
        if batch.num_rows:
            self.pieces.append((shard, batch))
            self.buffered += batch.num_rows
        while self.buffered >= self.size:
            yield self._take(self.size)

    def end_shard(self, shard: int) -> Iterator[tuple[list, int, list[int]]]:
        if self.buffered == 0:
            yield [], 0, [shard]
        else:
            self.markers.append((self.buffered, shard))

    def flush(self) -> Iterator[tuple[list, int, list[int]]]:
        if self.buffered or self.markers:
            yield self._take(self.buffered)

    def _take(self, n: int) -> tuple[list, int, list[int]]:
        parts, need = [], n
        while need:
            shard, batch = self.pieces[0]
            if batch.num_rows <= need:
                self.pieces.popleft()
                parts.append((shard, batch))
                need -= batch.num_rows
            else:
                parts.append((shard, batch.slice(0, need)))
                self.pieces[0] = (shard, batch.slice(need))
                need = 0
        self.buffered -= n
        ends = [s for pos, s in self.markers if pos <= n]
        self.markers = [(pos - n, s) for pos, s in self.markers if pos > n]
        return parts, n, ends


class _Stage(threading.Thread):
    """A worker thread that remembers the exception that stopped it."""

    def __init__(self, name: str, target, stop: threading.Event):
        super().__init__(name=f"batchscore-{name}", daemon=True)
        self._fn, self.stop, self.error = target, stop, None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            self.stop.set()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event, stages: list[_Stage]) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            pass
        for s in stages:
            if s.error is not None:
                raise s.error
        if stop.is_set():
            raise _Stopped


class _Stopped(Exception):
    pass


def _conform(batch: pa.RecordBatch, plan: Plan, shard_idx: int) -> pa.RecordBatch:
    """Add hive columns and cast to the dataset's types, in stream column order."""
    shard = plan.shards[shard_idx]
    hive = dict(shard.partitions)
    arrays, names = [], []
    for name in plan.stream_columns:
        target = plan.schema.field(name).type
        if name in plan.hive_types and batch.schema.get_field_index(name) < 0:
            value = hive.get(name)
            scalar = pa.scalar(None if value is None else (int(value) if pa.types.is_integer(target) else value), target)
            arr = pa.repeat(scalar, batch.num_rows)
        else:
            arr = batch.column(name)
            if arr.type != target:
                try:
                    arr = arr.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    from .errors import SchemaError

                    raise SchemaError(
                        f"column {name!r} in {shard.path} is {arr.type} and cannot be read as {target}: "
                        f"{' '.join(str(exc).split())}"
                    ) from None
        arrays.append(arr)
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _shard_batches(plan: Plan, idx: int, read_batch: int) -> Iterator[pa.RecordBatch]:
    reader = plan.readers[idx]
    if reader.num_rows == 0 or reader.schema is None:
        return
    if plan.where is None:
        for batch in reader.iter_batches(plan.read_columns, read_batch, schema=plan.schema):
            yield _conform(batch, plan, idx)
        return
    # --where: polars scans the file with the predicate pushed down (row groups skipped by statistics).
    import polars as pl

    shard = plan.shards[idx]
    try:
        lf = reader.scan_polars()
        hive = [
            pl.lit(int(v) if pa.types.is_integer(plan.hive_types[k]) else v).alias(k)
            for k, v in shard.partitions if k in plan.hive_types and k not in reader.schema.names
        ]
        if hive:
            lf = lf.with_columns(hive)
        # SQLContext (unlike a bare expression) coerces string literals to the
        # column's type, so `ts >= '2026-12-03'` works on timestamps; the
        # predicate is still pushed into the scan.
        lf = pl.SQLContext(frames={"t": lf}).execute(f"SELECT * FROM t WHERE {plan.job.where}", eager=False)
        lf = lf.select(plan.stream_columns)
        for df in lf.collect_batches(chunk_size=read_batch):
            for batch in df.to_arrow().to_batches():
                yield _conform(batch, plan, idx)
    except BatchscoreError:
        raise
    except pl.exceptions.PolarsError as exc:
        msg = str(exc).split("\n\n")[0].split("Resolved plan")[0]
        msg = " ".join(msg.split())[:300]
        if isinstance(exc, (pl.exceptions.ComputeError,)) and "parquet" in msg.lower():
            raise reader.corrupt(exc) from None
        raise UsageError(f"--where {plan.job.where!r} failed on {shard.path}: {msg}") from None
    except OSError as exc:
        raise reader.corrupt(exc) from None


def run_pipeline(plan: Plan, sink: Sink, summary: RunSummary, progress: NullProgress) -> None:
    """Score every shard of the plan into the sink. Raises on failure or interrupt."""
    job = plan.job
    size = plan.batch_size
    fixed = plan.features.fixed_batch
    read_batch = max(size, MIN_READ_BATCH) if size < MIN_READ_BATCH else size
    stop = threading.Event()
    in_q: queue.Queue = queue.Queue(maxsize=job.prefetch)
    out_q: queue.Queue = queue.Queue(maxsize=2)
    shard_rows = [0] * len(plan.shards)
    counters = {"read": 0, "written": 0, "shards_done": 0}
    summary.shards = []

    def produce() -> None:
        rb = Rebatcher(size)

        def emit(parts, rows, ends) -> bool:
            segs = [(plan.shards[s].path, b) for s, b in parts]
            feeds = None
            if rows:
                feeds = build_feeds(plan.features, segs, rows, fixed if fixed and rows < fixed else None)
            kept = [(s, b.select(plan.features.keep)) for s, b in parts]
            return _put(in_q, WorkItem(rows, feeds, kept, ends), stop)

        for idx in range(len(plan.shards)):
            for batch in _shard_batches(plan, idx, read_batch):
                if stop.is_set():
                    return
                shard_rows[idx] += batch.num_rows
                counters["read"] += batch.num_rows
                for item in rb.add(idx, batch):
                    if not emit(*item):
                        return
            for item in rb.end_shard(idx):
                if not emit(*item):
                    return
        for item in rb.flush():
            if not emit(*item):
                return
        _put(in_q, _DONE, stop)

    def consume() -> None:
        types = [f.type for f in plan.output_schema][len(plan.features.keep):]
        outputs = plan.output_names
        while True:
            got = _get(out_q, stop, [])
            if got is _DONE:
                return
            item, preds = got
            cols = [to_arrow(n, preds[n], item.rows, t) for n, t in zip(outputs, types)] if preds else []
            # Shards arrive in order: write a shard's rows, then commit it, then the next.
            events = [(s, 0, kept) for s, kept in item.parts] + [(s, 1, None) for s in item.ends]
            events.sort(key=lambda e: (e[0], e[1]))
            off = 0
            for s, is_end, kept in events:
                shard = plan.shards[s]
                if is_end:
                    sink.commit_shard(shard, shard_rows[s])
                    counters["shards_done"] += 1
                    summary.shards.append({"path": shard.path, "output": shard.output_name, "rows": shard_rows[s]})
                    continue
                n = kept.num_rows
                arrays = list(kept.columns) + [c.slice(off, n) for c in cols]
                sink.write(shard, pa.RecordBatch.from_arrays(arrays, schema=plan.output_schema))
                off += n
            counters["written"] += item.rows
            progress.update(counters["written"], counters["shards_done"])

    reader = _Stage("reader", produce, stop)
    writer = _Stage("writer", consume, stop)
    stages = [reader, writer]
    reader.start()
    writer.start()
    try:
        backend = plan.backend
        while True:
            item = _get(in_q, stop, stages)
            if item is _DONE:
                break
            preds = None
            if item.rows:
                t0 = time.perf_counter()
                preds = backend.predict(item.feeds)
                summary.record_latency(time.perf_counter() - t0)
                summary.batches += 1
                item.feeds = None
            if not _put(out_q, (item, preds), stop):
                break
        _put(out_q, _DONE, stop)
        while writer.is_alive():
            writer.join(0.1)
    except KeyboardInterrupt:
        stop.set()
        _join(stages)
        raise Interrupted(
            f"interrupted after {counters['shards_done']} of {len(plan.shards)} shards; committed shards are kept: "
            "rerun with --resume to finish"
        ) from None
    except _Stopped:
        pass
    except BaseException:
        stop.set()
        _join(stages)
        raise
    finally:
        summary.rows_read = counters["read"]
        summary.rows_written = counters["written"]
        summary.shards_done = counters["shards_done"]
    _join(stages)
    for s in stages:
        if s.error is not None:
            raise s.error


def _join(stages: list[_Stage]) -> None:
    for s in stages:
        s.join(timeout=30)
