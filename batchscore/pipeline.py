"""The streaming engine: reader → model → writer on three threads joined by
bounded queues, so decoding, inference and writing overlap, memory stays flat
(backpressure) and the slowest stage sets the pace.

A decoder thread reads shards one step ahead and applies --where; the reader
thread checks rows, and cuts the stream into fixed-size batches that cross
shard boundaries. The calling thread builds the model's input arrays and runs
the model (onnxruntime and torch release the
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

import numpy as np

from .errors import BatchscoreError, DataError, InputError, Interrupted, SchemaError, TooManyErrors, UsageError
from .features import build_feeds, find_bad_rows
from .outputs import to_arrow
from .plan import Plan
from .runner import ModelRunner, map_in_order
from .report import NullProgress, RunSummary
from .sinks import Sink
from .sources import BAD_ROW_COLUMN

_DONE = object()
#: Rows per decoded read batch when the model batch is small.
MIN_READ_BATCH = 65_536


@dataclass
class WorkItem:
    """One model batch: its inputs, the rows per shard segment, and the
    shards whose last row is in (or before) this batch."""

    rows: int
    feeds: dict[str, Any] | None
    parts: list[tuple[int, pa.RecordBatch]]
    ends: list[int] = field(default_factory=list)
    #: Bad input rows found since the last item: (shard, rows with reason).
    quarantine: list[tuple[int, pa.RecordBatch, np.ndarray]] = field(default_factory=list)
    #: Shards that failed part-way: (shard, reason); their rows are dropped.
    failed: list[tuple[int, str]] = field(default_factory=list)
    #: Rows (within the batch) whose model output is NaN or infinite, with the output name.
    bad_outputs: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class ShardStats:
    read: int = 0
    filtered: int = 0
    skipped: int = 0
    quarantined: int = 0
    written: int = 0
    emitted: int = 0  # rows handed to the model


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

    def drop_shard(self, shard: int) -> None:
        """Forget the buffered rows of a shard that failed part-way (always the last one)."""
        while self.pieces and self.pieces[-1][0] == shard:
            self.buffered -= self.pieces.pop()[1].num_rows

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

    cpu_seconds = 0.0

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
            self.stop.set()
        finally:
            self.cpu_seconds = time.thread_time()


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
            if s.error is not None and not isinstance(s.error, _Stopped):
                raise s.error
        if stop.is_set():
            raise _Stopped


class _Stopped(Exception):
    pass


class _Watchdog(threading.Thread):
    """--timeout: a model call or an output write that does not return in time
    ends the process (exit 1). A call stuck inside a native library cannot be
    interrupted from Python; what was committed stays, the shard in flight is not
    (its temporary file is hidden and a resume redoes it), and the lock is left
    to the next run, which sees its holder is gone."""

    def __init__(self, timeout: float, summary: RunSummary, report: str | None):
        super().__init__(name="batchscore-watchdog", daemon=True)
        self.timeout, self.summary, self.report = timeout, summary, report
        self.active: dict[str, tuple[str, float]] = {}
        self.done = threading.Event()

    def enter(self, slot: str, what: str) -> None:
        self.active[slot] = (what, time.monotonic())

    def leave(self, slot: str) -> None:
        self.active.pop(slot, None)

    def run(self) -> None:
        import os
        import sys

        from .errors import ExitStatus

        while not self.done.wait(0.2):
            now = time.monotonic()
            for what, t0 in list(self.active.values()):
                if now - t0 > self.timeout:
                    msg = (
                        f"{what} did not finish within --timeout {self.timeout:g} s; the run stopped "
                        "(committed shards are kept): check the model or the output, then rerun with --resume"
                    )
                    self.summary.status, self.summary.error = "failed", msg
                    self.summary.exit_code = int(ExitStatus.RETRYABLE)
                    try:
                        self.summary.finish()
                        if self.report:
                            self.summary.write_json(self.report)
                    finally:
                        print(f"batchscore: error: {msg}", file=sys.stderr, flush=True)
                        os._exit(int(ExitStatus.RETRYABLE))


class _NoWatchdog:
    def enter(self, slot: str, what: str) -> None:
        pass

    def leave(self, slot: str) -> None:
        pass


def _conform(batch: pa.RecordBatch, plan: Plan, shard_idx: int, columns: list[str] | None = None) -> pa.RecordBatch:
    """Add hive columns and cast to the dataset's types, in stream column order."""
    shard = plan.shards[shard_idx]
    hive = dict(shard.partitions)
    arrays, names = [], []
    for name in columns or plan.stream_columns:
        target = plan.schema.field(name).type
        if name in plan.hive_types and batch.schema.get_field_index(name) < 0:
            arr = _constant(hive.get(name), target, batch.num_rows)
        else:
            arr = batch.column(name)
            if arr.type != target:
                try:
                    arr = arr.cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaError(
                        f"column {name!r} in {shard.path} is {arr.type} and cannot be read as {target}: "
                        f"{' '.join(str(exc).split())}"
                    ) from None
        arrays.append(arr)
        names.append(name)
    if batch.schema.get_field_index(BAD_ROW_COLUMN) >= 0:  # unparsable cells ride along
        arrays.append(batch.column(BAD_ROW_COLUMN))
        names.append(BAD_ROW_COLUMN)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _constant(value: str | None, target: pa.DataType, n: int) -> pa.Array:
    """A column holding one hive value, built from buffers: pa.scalar/pa.array
    would import pandas (0.3 s) just to check the value's type."""
    if value is None:
        return pa.nulls(n, target)
    if pa.types.is_integer(target):
        return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(np.full(n, int(value), np.int64))]).cast(target)
    data = value.encode()
    dictionary = pa.Array.from_buffers(
        pa.string(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int32)), pa.py_buffer(data)]
    )
    indices = pa.Array.from_buffers(pa.int32(), n, [None, pa.py_buffer(np.zeros(n, np.int32))])
    return pa.DictionaryArray.from_arrays(indices, dictionary).cast(target)


def _polars_message(exc: BaseException) -> str:
    msg = str(exc).split("\n\n")[0].split("Resolved plan")[0]
    return " ".join(msg.split())[:300]


def _where_sql(plan: Plan) -> str:
    return f"SELECT * FROM t WHERE {plan.job.where}"


def _shard_batches(plan: Plan, idx: int, read_batch: int, stats: ShardStats) -> Iterator[pa.RecordBatch]:
    """The shard's rows (after --where) as batches of the stream columns."""
    reader = plan.readers[idx]
    if reader.num_rows == 0 or reader.schema is None:
        return
    if plan.where is None:
        for batch in reader.iter_batches(plan.read_columns, read_batch, schema=plan.schema):
            stats.read += batch.num_rows
            yield _conform(batch, plan, idx)
        return
    import polars as pl

    shard = plan.shards[idx]
    try:
        if reader.cheap_row_count and reader.num_rows is not None and reader.pushdown:
            # polars scans the file with the predicate pushed down: row groups whose
            # statistics rule it out are never decoded. SQLContext (unlike a bare
            # expression) coerces string literals, so `ts >= '2026-12-03'` works.
            lf = reader.scan_polars()
            hive = [
                pl.lit(int(v) if pa.types.is_integer(plan.hive_types[k]) else v).alias(k)
                for k, v in shard.partitions if k in plan.hive_types and k not in reader.schema.names
            ]
            if hive:
                lf = lf.with_columns(hive)
            lf = pl.SQLContext(frames={"t": lf}).execute(_where_sql(plan), eager=False).select(plan.stream_columns)
            passed = 0
            for df in lf.collect_batches(chunk_size=read_batch):
                passed += df.height
                for batch in df.to_arrow().to_batches():
                    yield _conform(batch, plan, idx)
            stats.read += reader.num_rows
            stats.filtered += reader.num_rows - passed
            return
        # Formats without statistics: read every row, filter in memory (and count).
        wanted = list(dict.fromkeys(plan.stream_columns + plan.where_columns))
        # Rows whose cells did not parse are not filtered by --where: they are bad rows.
        for batch in reader.iter_batches(plan.read_columns, read_batch, schema=plan.schema):
            stats.read += batch.num_rows
            full = _conform(batch, plan, idx, wanted)
            df = pl.SQLContext(frames={"t": pl.from_arrow(full)}).execute(_where_sql(plan), eager=True)
            stats.filtered += batch.num_rows - df.height
            cols = plan.stream_columns + ([BAD_ROW_COLUMN] if BAD_ROW_COLUMN in df.columns else [])
            for out in df.select(cols).to_arrow().to_batches():
                yield _conform(out, plan, idx)
    except BatchscoreError:
        raise
    except pl.exceptions.PolarsError as exc:
        msg = _polars_message(exc)
        if isinstance(exc, pl.exceptions.ComputeError) and ("parquet" in msg.lower() or "ipc" in msg.lower()):
            raise reader.corrupt(exc) from None
        raise UsageError(f"--where {plan.job.where!r} failed on {shard.path}: {msg}") from None
    except OSError as exc:
        raise reader.corrupt(exc) from None


def _with_reason(batch: pa.RecordBatch, idx: np.ndarray, reasons: np.ndarray, shard_path: str) -> pa.RecordBatch:
    rows = batch.take(pa.array(idx))
    return rows.append_column("reason", pa.array(list(reasons), pa.string())).append_column(
        "shard", pa.repeat(pa.scalar(shard_path), len(idx))
    )


def _merge_bad(bad, unparsed: pa.Array):
    """Combine find_bad_rows' result with the reader's unparsable-cell reasons."""
    reasons = np.asarray(unparsed.to_numpy(zero_copy_only=False), dtype=object)
    if bad is not None:
        rows, why = bad
        keep = np.array([reasons[r] is None for r in rows], dtype=bool)
        reasons[rows[keep]] = why[keep]
    idx = np.flatnonzero(np.array([r is not None for r in reasons], dtype=bool))
    return idx, reasons[idx]


def _drop_rows(batch: pa.RecordBatch, idx: np.ndarray) -> pa.RecordBatch:
    keep = np.ones(batch.num_rows, dtype=bool)
    keep[idx] = False
    return batch.filter(pa.array(keep))


def run_pipeline(
    plan: Plan,
    sink: Sink,
    summary: RunSummary,
    progress: NullProgress,
    quarantine: Sink | None = None,
) -> None:
    """Score every shard of the plan into the sink. Raises on failure or interrupt.

    Bad rows (``--on-error skip|quarantine``) are dropped or written to the
    ``quarantine`` sink; a shard that fails part-way is rolled back and listed
    in the summary. Every row is accounted for: read = written + skipped +
    quarantined + filtered, per committed shard.
    """
    job = plan.job
    size = plan.batch_size
    fixed = plan.features.fixed_batch
    read_batch = max(size, MIN_READ_BATCH)
    on_error = job.on_error
    stop = threading.Event()
    in_q: queue.Queue = queue.Queue(maxsize=job.prefetch)
    out_q: queue.Queue = queue.Queue(maxsize=2)
    stats = [ShardStats() for _ in plan.shards]
    live = {"read": 0, "bad": 0, "written": 0, "shards_done": 0}
    summary.shards = []
    keep_idx = [plan.stream_columns.index(c) for c in plan.features.keep]
    out_types = [f.type for f in plan.output_schema][len(plan.features.keep):]
    q_used: set[int] = set()
    watchdog = _Watchdog(job.timeout, summary, job.report) if job.timeout else _NoWatchdog()

    def count_bad(n: int) -> None:
        live["bad"] += n
        if job.max_errors is not None and live["bad"] > job.max_errors:
            raise TooManyErrors(
                f"{live['bad']} bad rows, more than --max-errors {job.max_errors}: "
                "fix the data, or raise the limit; the run stopped here"
            )
        if job.max_error_rate is not None:
            # Summed only when a rate is asked for: it walks every shard's counters.
            live["read"] = sum(x.read for x in stats)
        if job.max_error_rate is not None and live["read"] and live["bad"] / live["read"] > job.max_error_rate:
            raise TooManyErrors(
                f"{live['bad']} of {live['read']} rows read were bad ({live['bad'] / live['read']:.2%}), "
                f"more than --max-error-rate {job.max_error_rate}: fix the data, or raise the limit"
            )

    # Decoding runs one step ahead on its own thread (Arrow decodes a row group's
    # columns on its pool), so it overlaps the checks and feature building here.
    decoded: queue.Queue = queue.Queue(maxsize=2)

    def decode() -> None:
        for idx in range(len(plan.shards)):
            plan.readers[idx].lenient = on_error != "fail"
            try:
                for batch in _shard_batches(plan, idx, read_batch, stats[idx]):
                    if not _put(decoded, ("rows", idx, batch, stats[idx].read - batch.num_rows), stop):
                        return
            except (InputError, SchemaError) as exc:
                if on_error == "fail":
                    raise
                if not _put(decoded, ("failed", idx, exc, 0), stop):
                    return
                continue
            if not _put(decoded, ("end", idx, None, 0), stop):
                return
        _put(decoded, _DONE, stop)


    decoder = _Stage("decoder", decode, stop)

    def produce() -> None:
        rb = Rebatcher(size)
        pending_q: list = []
        pending_failed: list = []

        def emit(parts, rows, ends) -> bool:
            for s, b in parts:
                stats[s].emitted += b.num_rows
            # The model's input arrays are built on the model thread, just before the
            # run: the reader is the busier thread when the model is cheap.
            item = WorkItem(rows, None, parts, ends, list(pending_q), list(pending_failed))
            pending_q.clear()
            pending_failed.clear()
            return _put(in_q, item, stop)

        try:
            while True:
                got = _get(decoded, stop, [decoder])
                if got is _DONE:
                    break
                kind, idx, batch, offset = got
                shard, st = plan.shards[idx], stats[idx]
                if kind == "failed":
                    rb.drop_shard(idx)
                    pending_q[:] = [q for q in pending_q if q[0] != idx]
                    pending_failed.append((idx, str(batch)))
                    if not emit([], 0, []):
                        return
                    continue
                if kind == "end":
                    for item in rb.end_shard(idx):
                        if not emit(*item):
                            return
                    continue
                unparsed = None
                if batch.schema.get_field_index(BAD_ROW_COLUMN) >= 0:
                    unparsed = batch.column(BAD_ROW_COLUMN)
                    batch = batch.drop_columns([BAD_ROW_COLUMN])
                bad = find_bad_rows(plan.features, batch, job.allow_nan)
                if unparsed is not None and unparsed.null_count < len(unparsed):
                    bad = _merge_bad(bad, unparsed)
                if bad is not None:
                    rows, reasons = bad
                    if on_error == "fail":
                        where = "" if plan.where is not None else f" at row {offset + int(rows[0])}"
                        raise DataError(
                            f"{shard.path}: {reasons[0]}{where} ({len(rows)} bad row(s) in this part of the file): "
                            "fix the data, or pass --on-error skip|quarantine"
                            + ("" if job.allow_nan or "NaN" not in reasons[0] else " (or --allow-nan)")
                        )
                    if on_error == "quarantine":
                        pending_q.append((idx, _with_reason(batch, rows, reasons, shard.path), rows))
                        st.quarantined += len(rows)
                    else:
                        st.skipped += len(rows)
                    count_bad(len(rows))
                    batch = _drop_rows(batch, rows)
                for item in rb.add(idx, batch):
                    if not emit(*item):
                        return
        finally:
            decoder.join(timeout=1.0)
        for item in rb.flush():
            if not emit(*item):
                return
        if pending_q or pending_failed:
            emit([], 0, [])
        _put(in_q, _DONE, stop)

    def commit(s: int) -> None:
        shard = plan.shards[s]
        if quarantine is not None and s in q_used:
            quarantine.commit_shard(shard, stats[s].quarantined)
        sink.commit_shard(shard, stats[s].written)
        st = stats[s]
        live["shards_done"] += 1
        summary.shards_done += 1
        summary.rows_read += st.read
        summary.rows_filtered = (summary.rows_filtered or 0) + st.filtered
        summary.rows_skipped += st.skipped
        summary.rows_quarantined += st.quarantined
        summary.rows_written += st.written
        summary.shards.append({"path": shard.path, "output": shard.output_name, "rows_read": st.read,
                               "rows_written": st.written, "rows_skipped": st.skipped,
                               "rows_quarantined": st.quarantined, "rows_filtered": st.filtered})

    def fail_shard(s: int, reason: str) -> None:
        shard = plan.shards[s]
        sink.abort_shard(shard)
        if quarantine is not None and s in q_used:
            quarantine.abort_shard(shard)
        summary.shards_failed.append({"path": shard.path, "error": reason})
        log_warning(f"skipped shard {shard.path}: {reason}")

    def consume() -> None:
        outputs = plan.output_names
        while True:
            got = _get(out_q, stop, [])
            if got is _DONE:
                return
            item, preds = got
            cols = [to_arrow(n, preds[n], item.rows, t) for n, t in zip(outputs, out_types)] if preds else []
            bad_rows = item.bad_outputs[0] if item.bad_outputs is not None else None
            # Shards arrive in order: a shard's rows, then its commit, then the next shard.
            events = [(s, 0, ("rows", b)) for s, b in item.parts]
            events += [(s, 0, ("quarantine", (b, r))) for s, b, r in item.quarantine]
            events += [(s, 1, ("failed", why)) for s, why in item.failed]
            events += [(s, 1, ("end", None)) for s in item.ends]
            order = {id(e): i for i, e in enumerate(events)}
            events.sort(key=lambda e: (e[0], e[1], order[id(e)]))
            off = 0
            for s, _, (kind, payload) in events:
                shard = plan.shards[s]
                if kind == "end":
                    watchdog.enter("writer", f"committing {shard.path} to the output")
                    commit(s)
                    watchdog.leave("writer")
                elif kind == "failed":
                    fail_shard(s, payload)
                elif kind == "quarantine":
                    quarantine.write(shard, payload[0])
                    q_used.add(s)
                else:
                    batch = payload
                    n = batch.num_rows
                    arrays = [batch.column(i) for i in keep_idx] + [c.slice(off, n) for c in cols]
                    out = pa.RecordBatch.from_arrays(arrays, schema=plan.output_schema)
                    if bad_rows is not None:
                        local = bad_rows[(bad_rows >= off) & (bad_rows < off + n)] - off
                        if len(local):
                            reasons = item.bad_outputs[1][(bad_rows >= off) & (bad_rows < off + n)]
                            if quarantine is not None:
                                quarantine.write(shard, _with_reason(batch, local, reasons, shard.path))
                                q_used.add(s)
                                stats[s].quarantined += len(local)
                            else:
                                stats[s].skipped += len(local)
                            count_bad(len(local))
                            out = _drop_rows(out, local)
                    watchdog.enter("writer", f"writing rows of {shard.path} to the output")
                    sink.write(shard, out)
                    watchdog.leave("writer")
                    stats[s].written += out.num_rows
                    live["written"] += out.num_rows
                    off += n
            progress.update(live["written"], live["shards_done"])

    from .report import log

    def log_warning(msg: str) -> None:
        log.warning(f"warning: {msg}")

    reader = _Stage("reader", produce, stop)
    writer = _Stage("writer", consume, stop)
    stages = [decoder, reader, writer]  # the first real error wins: upstream first
    if isinstance(watchdog, _Watchdog):
        watchdog.start()
    decoder.start()
    reader.start()
    writer.start()
    main_cpu0 = time.thread_time()
    runner = ModelRunner(plan.replicas or [plan.backend], fixed_batch=fixed, watchdog=watchdog)

    def items() -> Iterator[WorkItem]:
        while True:
            item = _get(in_q, stop, stages)
            if item is _DONE:
                return
            yield item

    def feeds_of(item: WorkItem):
        if not item.rows:
            return None, 0
        segs = [(plan.shards[s].path, b) for s, b in item.parts]
        feeds = build_feeds(plan.features, segs, item.rows, fixed if fixed and item.rows < fixed else None)
        return feeds, (fixed if fixed and item.rows < fixed else item.rows)

    try:
        for item, preds, seconds in map_in_order(runner, items(), feeds_of):
            if preds is not None:
                summary.record_latency(seconds)
                summary.batches += 1
                item.bad_outputs = _nonfinite_outputs(preds, item.rows, plan, on_error)
            if not _put(out_q, (item, preds), stop):
                break
        else:
            _put(out_q, _DONE, stop)
        while writer.is_alive():
            writer.join(0.1)
    except KeyboardInterrupt:
        stop.set()
        _join(stages)
        raise Interrupted(
            f"interrupted after {live['shards_done']} of {len(plan.shards)} shards; committed shards are kept: "
            "rerun with --resume to finish"
        ) from None
    except _Stopped:
        stop.set()
        _join(stages)
    except BaseException:
        stop.set()
        _join(stages)
        raise
    finally:
        runner.close()
        summary.model_calls = runner.calls
        summary.oom_events = runner.oom_events
        summary.rows_per_call_after_oom = runner.max_rows
        if runner.oom_events:
            summary.warnings.append(runner.describe_backoff())
        if isinstance(watchdog, _Watchdog):
            watchdog.done.set()  # never fire after the run is over (the API's caller lives on)
    _join(stages)
    # Where the CPU went (this thread's share of the model's time included), for tuning and sweeps.
    summary.stage_cpu_seconds = {
        "decoder": round(decoder.cpu_seconds, 3),
        "reader": round(reader.cpu_seconds, 3),
        "model_thread": round(time.thread_time() - main_cpu0, 3),
        "writer": round(writer.cpu_seconds, 3),
    }
    if runner.parallel > 1:  # --device gpu:all: the calls ran on the replicas' threads
        summary.stage_cpu_seconds["replicas"] = round(runner.worker_cpu_seconds, 3)
    for s in stages:
        if s.error is not None and not isinstance(s.error, _Stopped):
            raise s.error
    if stop.is_set():
        raise RuntimeError("the pipeline stopped without saying why")


def _nonfinite_outputs(preds: dict[str, Any], rows: int, plan: Plan, on_error: str):
    """Rows whose float outputs are NaN or infinite, with the output's name."""
    bad = None
    reasons = None
    for name, arr in preds.items():
        arr = np.asarray(arr)
        if arr.dtype.kind != "f":
            continue
        if np.isfinite(arr[:rows]).all():
            continue
        mask = ~np.isfinite(arr[:rows].reshape(rows, -1)).all(axis=1)
        if on_error == "fail":
            first = int(np.flatnonzero(mask)[0])
            raise DataError(
                f"model output {name!r} is NaN or infinite for {int(mask.sum())} row(s) "
                f"(row {first} of a {rows}-row batch): check the model and its inputs, "
                "or pass --on-error skip|quarantine"
            )
        if bad is None:
            bad = np.zeros(rows, dtype=bool)
            reasons = np.empty(rows, dtype=object)
        reasons[mask & ~bad] = f"model output {name!r} is NaN or infinite"
        bad |= mask
    if bad is None:
        return None
    idx = np.flatnonzero(bad)
    return idx, reasons[idx]


def _join(stages: list[_Stage]) -> None:
    for s in stages:
        s.join(timeout=30)
