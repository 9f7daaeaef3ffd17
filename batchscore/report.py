"""Progress, logs, the run summary and the JSON report.

Data goes to files; every message goes to stderr. On a terminal: a rich
progress bar and a summary table. Elsewhere (cron, Airflow): a plain log line
every few seconds and the same summary as ``key: value`` lines (or JSON lines
with ``--log-format json``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np

LOGGER_NAME = "batchscore"
log = logging.getLogger(LOGGER_NAME)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}) or {})
        return json.dumps(out, default=str)


def setup_logging(log_format: str = "text", quiet: bool = False, stream: TextIO | None = None) -> None:
    """Route batchscore's messages to stderr as text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("batchscore: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.ERROR if quiet else logging.INFO)


@dataclass
class RunSummary:
    """What a run did; returned by :func:`batchscore.score` and written by --report."""

    run_id: str
    batchscore_version: str
    status: str = "running"  # ok, failed, interrupted, dry-run, empty
    exit_code: int | None = None
    error: str | None = None
    model: str | None = None
    model_sha256: str | None = None
    backend: str | None = None
    device: str | None = None
    threads: int | None = None
    batch_size: int | None = None
    batch_size_source: str | None = None
    prefetch: int | None = None
    features: dict[str, list[str]] = field(default_factory=dict)
    features_chosen_by: str | None = None
    keep: list[str] = field(default_factory=list)
    where: str | None = None
    output: str | None = None
    output_schema: list[str] = field(default_factory=list)
    shards_total: int = 0
    shards_done: int = 0
    shards_empty: int = 0
    shards_skipped: int = 0  # already committed by an earlier run (--resume)
    rows_in_dataset: int | None = None  # rows in the shards, before --where (when known)
    # Accounting over committed shards: read = written + skipped + quarantined + filtered.
    rows_read: int = 0
    rows_written: int = 0
    rows_skipped: int = 0
    rows_quarantined: int = 0
    rows_filtered: int | None = None
    #: Shards left out because they failed (--on-error skip|quarantine): path and error.
    shards_failed: list[dict[str, Any]] = field(default_factory=list)
    quarantine: str | None = None
    batches: int = 0
    #: Model calls: one a batch, more when a batch was split after running out of memory.
    model_calls: int = 0
    #: Times the device ran out of memory (each time the batch was halved and retried).
    oom_events: int = 0
    #: After an out-of-memory error, the most rows one model call took.
    rows_per_call_after_oom: int | None = None
    #: Model replicas (``--device gpu:all``: one per GPU) and their devices.
    replicas: list[str] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    wall_seconds: float | None = None
    #: Of wall_seconds, the time before the first row was read: planning, loading the model
    #: (importing its framework included), opening the output.
    setup_seconds: float | None = None
    rows_per_second: float | None = None
    batch_latency_ms: dict[str, float] = field(default_factory=dict)
    #: Per-batch model latencies (ms), in order; capped, for planners and sweeps.
    batch_latencies_ms: list[float] = field(default_factory=list)
    shards: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: CPU seconds of the reader, model and writer threads (and the replicas' threads under gpu:all; not the runtimes' own pools).
    stage_cpu_seconds: dict[str, float] = field(default_factory=dict)

    MAX_LATENCIES = 100_000

    def record_latency(self, seconds: float) -> None:
        if len(self.batch_latencies_ms) < self.MAX_LATENCIES:
            self.batch_latencies_ms.append(round(seconds * 1000.0, 4))

    def finish(self) -> None:
        self.finished_at = time.time()
        if self.started_at is not None:
            self.wall_seconds = round(self.finished_at - self.started_at, 4)
            if self.wall_seconds > 0:
                self.rows_per_second = round(self.rows_written / self.wall_seconds, 1)
        if self.batch_latencies_ms:
            lat = np.asarray(self.batch_latencies_ms)
            self.batch_latency_ms = {
                "p50": round(float(np.percentile(lat, 50)), 3),
                "p95": round(float(np.percentile(lat, 95)), 3),
                "p99": round(float(np.percentile(lat, 99)), 3),
                "max": round(float(lat.max()), 3),
            }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str) -> None:
        import os

        tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp")
        with open(tmp, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1, default=str)
        os.replace(tmp, path)

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (label, value) pairs, for a table or log lines."""
        lat = self.batch_latency_ms
        out = [
            ("status", self.status),
            ("rows read", f"{self.rows_read:,}"),
            ("rows written", f"{self.rows_written:,}"),
        ]
        if self.rows_filtered:
            out.append(("rows filtered by --where", f"{self.rows_filtered:,}"))
        if self.rows_skipped:
            out.append(("rows skipped (bad)", f"{self.rows_skipped:,}"))
        if self.rows_quarantined:
            out.append(("rows quarantined", f"{self.rows_quarantined:,} -> {self.quarantine}"))
        if self.shards_failed:
            out.append(("shards failed", f"{len(self.shards_failed)} (see the report)"))
        if self.oom_events:
            out.append(("out of memory", f"{self.oom_events} time(s): batches split and retried, "
                        f"then {self.rows_per_call_after_oom:,} rows a call"))
        if self.shards_skipped:
            out.append(("shards already committed", f"{self.shards_skipped} (skipped by --resume)"))
        out += [
            ("shards", f"{self.shards_done}/{self.shards_total}" + (f" ({self.shards_empty} empty)" if self.shards_empty else "")),
            ("wall time", (f"{self.wall_seconds:.2f} s" if self.wall_seconds is not None else "-")
             + (f" (setup {self.setup_seconds:.2f} s: model load, plan, output)" if self.setup_seconds else "")),
            ("rows/s", f"{self.rows_per_second:,.0f}" if self.rows_per_second else "-"),
            ("batch latency p50/p95/p99",
             f"{lat['p50']:.1f} / {lat['p95']:.1f} / {lat['p99']:.1f} ms" if lat else "-"),
            ("batches", f"{self.batches:,} of {self.batch_size:,} rows ({self.batch_size_source})" if self.batch_size else "-"),
            ("device", f"{self.device} ({self.backend}, {self.threads} threads)"
             + (f", {len(self.replicas)} replicas: {', '.join(self.replicas)}" if len(self.replicas) > 1 else "")),
            ("features", f"{', '.join(c for cols in self.features.values() for c in cols)} ({self.features_chosen_by})"),
            ("output", self.output or "-"),
            ("run id", self.run_id),
        ]
        return out


def print_summary(summary: RunSummary, *, rich_console: bool, log_format: str, stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    if log_format == "json":
        log.info("summary", extra={"fields": {"summary": {k: v for k, v in summary.to_dict().items() if k != "batch_latencies_ms"}}})
        return
    if rich_console:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="batchscore run", show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        for label, value in summary.rows():
            table.add_row(label, value)
        Console(file=stream).print(table)
        return
    for label, value in summary.rows():
        log.info(f"{label}: {value}")


# -- progress -----------------------------------------------------------------
class NullProgress:
    """No progress output (--quiet, or the caller wants none)."""

    def start(self, total_rows: int | None, total_shards: int) -> None:
        pass

    def update(self, rows: int, shards_done: int) -> None:
        pass

    def close(self) -> None:
        pass


class LogProgress(NullProgress):
    """A plain log line every ``interval`` seconds: for cron and Airflow logs."""

    def __init__(self, interval: float = 5.0):
        self.interval = interval

    def start(self, total_rows, total_shards):
        self.total_rows, self.total_shards = total_rows, total_shards
        self.t0 = self.last = time.monotonic()

    def update(self, rows, shards_done):
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        rate = rows / max(now - self.t0, 1e-9)
        msg = f"progress: {rows:,}"
        if self.total_rows:
            eta = (self.total_rows - rows) / rate if rate else float("inf")
            msg += f"/{self.total_rows:,} rows ({100.0 * rows / self.total_rows:.1f}%), ETA {eta:.0f} s"
        else:
            msg += " rows"
        msg += f", {rate:,.0f} rows/s, {shards_done}/{self.total_shards} shards"
        log.info(msg, extra={"fields": {"rows": rows, "rows_per_s": round(rate, 1), "shards_done": shards_done}})


class RichProgress(NullProgress):
    """A rich progress bar on stderr: rows, rows/s, ETA, shards done."""

    def start(self, total_rows, total_shards):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.total_shards = total_shards
        self.progress = Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]} rows"),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeRemainingColumn(),
            TextColumn("shards {task.fields[shards]}"),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self.t0 = time.monotonic()
        self.task = self.progress.add_task(
            "score", total=total_rows, total_text=f"{total_rows:,}" if total_rows else "?",
            rate="-", shards=f"0/{total_shards}",
        )
        self.progress.start()

    def update(self, rows, shards_done):
        rate = rows / max(time.monotonic() - self.t0, 1e-9)
        self.progress.update(self.task, completed=rows, rate=f"{rate:,.0f}", shards=f"{shards_done}/{self.total_shards}")

    def close(self):
        self.progress.stop()


class TqdmProgress(NullProgress):
    """A tqdm bar (notebook widget in Jupyter) for the Python API."""

    def start(self, total_rows, total_shards):
        from tqdm.auto import tqdm

        self.total_shards = total_shards
        self.bar = tqdm(total=total_rows, unit="rows", unit_scale=True, desc="batchscore")
        self.rows = 0

    def update(self, rows, shards_done):
        self.bar.update(rows - self.rows)
        self.rows = rows
        self.bar.set_postfix_str(f"shards {shards_done}/{self.total_shards}", refresh=False)

    def close(self):
        self.bar.close()


def make_progress(kind: str) -> NullProgress:
    return {"rich": RichProgress, "log": LogProgress, "tqdm": TqdmProgress}.get(kind, NullProgress)()
