"""The library entry point. The CLI is a thin layer over :func:`score`."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping, Sequence

from ._version import __version__
from .errors import BatchscoreError, ExitStatus
from .job import Job, build_job
from .lock import OutputLock
from .report import RunSummary, log, make_progress, print_summary, setup_logging


def score(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    model: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> RunSummary:
    """Score files, directories or globs with a model and write the predictions.

    Args:
        inputs: one or more files, directories or globs (Parquet, CSV, NDJSON, Arrow IPC).
        model: the model file (ONNX).
        output: a directory (one Parquet file per input shard), a ``.parquet`` file,
            or None for ``<first input's name>-scored``.
        config: a TOML file; ``./batchscore.toml`` is read when present.
        env: environment to read ``BATCHSCORE_*`` settings from (default: none).
        **options: any ``batchscore run`` option by its Python name, e.g.
            ``features=["f*"]``, ``batch_size=4096``, ``if_exists="replace"``,
            ``where="ts >= '2026-12-03'"``, ``quiet=True``.

    Returns:
        The run summary (rows, timings, batch latencies, output).

    Raises:
        BatchscoreError: a user-facing problem, with ``exit_status`` set.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    flags = dict(options)
    flags["inputs"] = [os.fspath(i) for i in inputs] if inputs else None
    flags["model"] = os.fspath(model) if model is not None else None
    flags["output"] = os.fspath(output) if output is not None else None
    job = build_job(flags, env=env, config=config)
    if job.progress is None:
        job.progress = "none" if job.quiet else "tqdm"
    return run_job(job)


def run_job(job: Job, *, console: bool = False) -> RunSummary:
    """Plan and run a validated job; write --report even when the run fails.

    ``console`` prints the summary as a rich table (a terminal) instead of log lines.
    A run that fails with a retryable error (exit 1) is rerun up to ``job.retries``
    times with exponential backoff, resuming: committed shards are not redone.
    """
    import dataclasses

    from .errors import TooManyErrors

    delay = 1.0
    for attempt in range(1, job.retries + 2):
        try:
            return _run_once(job, console=console)
        except BatchscoreError as exc:
            if exc.exit_status != ExitStatus.RETRYABLE or isinstance(exc, TooManyErrors) or attempt > job.retries:
                raise
            if not log.handlers:
                setup_logging(job.log_format, job.quiet)
            log.warning(
                f"warning: attempt {attempt} of {job.retries + 1} failed: {exc}; retrying in {delay:.0f} s"
            )
            time.sleep(delay)
            delay = min(delay * 2, 60.0)
            # A directory or table continues from its committed shards; a single
            # .parquet file was never published, so it simply starts again.
            single = (job.output or "").lower().endswith(".parquet")
            job = dataclasses.replace(job, if_exists=job.if_exists if single else "resume")
    raise AssertionError("unreachable")


def _run_once(job: Job, *, console: bool = False) -> RunSummary:
    if not log.handlers:
        setup_logging(job.log_format, job.quiet)
    summary = RunSummary(run_id=job.run_id or "", batchscore_version=__version__)
    summary.started_at = time.time()
    plan = sink = quarantine = lock = None
    try:
        from .plan import make_plan
        from .sinks import describe as describe_output

        plan = make_plan(job)
        dest = plan.output
        # Logs, --dry-run, the summary and --report show the output without its password.
        plan.output = describe_output(dest)
        _fill_summary(summary, plan)
        for shard, why in plan.failed_shards:
            summary.shards_failed.append({"path": shard.path, "error": why})
            log.warning(f"warning: skipped shard {shard.path}: {why}")
        if not plan.shards:
            summary.status = "empty"
            msg = f"no input matches {' '.join(job.inputs)}; nothing to do (--allow-empty)"
            summary.warnings.append(msg)
            log.warning(f"warning: {msg}")
            summary.exit_code = int(ExitStatus.SUCCESS)
            return summary
        if job.dry_run:
            summary.status = "dry-run"
            for line in plan.describe():
                print(line, file=sys.stderr)
            summary.exit_code = int(ExitStatus.SUCCESS)
            return summary
        from .pipeline import run_pipeline

        if not job.no_lock:
            try:
                lock = OutputLock(dest, plan.run_id, plan.output).acquire()
            except OSError as exc:
                from .sinks import os_error

                raise os_error(plan.output, exc) from None
        if job.on_error == "quarantine":
            qdest, qtable = _quarantine_dest(job, dest)  # checked before anything is created
        sink = _make_sink(dest, plan, plan.output_schema, job.table)
        done = sink.open(plan.shards) or set()
        if done:
            summary.shards_skipped = len([s for s in plan.shards if s.output_name in done])
            plan = plan.without(done)
            log.info(f"resume: {summary.shards_skipped} shard(s) already committed are skipped")
        if job.on_error == "quarantine":
            qschema = _quarantine_schema(plan)
            quarantine = _make_sink(qdest, plan, qschema, qtable)
            quarantine.open(plan.shards)
            summary.quarantine = quarantine.describe()
        progress = make_progress(job.progress or "none")
        progress.start(plan.rows_total, len(plan.shards))
        summary.setup_seconds = round(time.time() - summary.started_at, 4)
        try:
            run_pipeline(plan, sink, summary, progress, quarantine)
        finally:
            progress.close()
        sink.close()
        sink = None
        if quarantine is not None:
            quarantine.close()
            quarantine = None
        partial = summary.rows_skipped or summary.rows_quarantined or summary.shards_failed
        summary.status = "partial" if partial else "ok"
        summary.exit_code = int(ExitStatus.PARTIAL if partial else ExitStatus.SUCCESS)
        summary.finish()
        if not job.quiet:
            print_summary(summary, rich_console=console, log_format=job.log_format)
        if partial:
            log.warning(
                f"warning: finished with {summary.rows_skipped + summary.rows_quarantined:,} bad row(s) "
                f"{'quarantined' if job.on_error == 'quarantine' else 'skipped'} and "
                f"{len(summary.shards_failed)} failed shard(s) (exit {int(ExitStatus.PARTIAL)})"
            )
        return summary
    except BatchscoreError as exc:
        summary.status = "interrupted" if exc.exit_status == ExitStatus.INTERRUPTED else "failed"
        summary.error = str(exc)
        summary.exit_code = int(exc.exit_status)
        raise
    except KeyboardInterrupt:
        summary.status, summary.exit_code = "interrupted", int(ExitStatus.INTERRUPTED)
        raise
    except BaseException as exc:
        summary.status, summary.exit_code = "failed", int(ExitStatus.INTERNAL)
        summary.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        for open_sink in (sink, quarantine):
            if open_sink is not None:
                open_sink.abort()
        if lock is not None:
            lock.release()
        if plan is not None:
            for loaded in plan.replicas[1:] + ([plan.backend] if plan.backend is not None else []):
                loaded.close()
        if summary.finished_at is None:
            summary.finish()
        if job.report:
            try:
                summary.write_json(job.report)
            except OSError as exc:
                log.warning(f"warning: cannot write --report {job.report}: {exc.strerror}")


def _fill_summary(summary: RunSummary, plan) -> None:
    job = plan.job
    summary.run_id = plan.run_id
    summary.model = job.model
    summary.model_sha256 = plan.model_sha256
    summary.backend = plan.backend.name if plan.backend else None
    summary.replicas = [str(b.device) for b in plan.replicas]
    summary.device = str(plan.device) if plan.device else None
    summary.threads = plan.threads
    summary.output = plan.output
    summary.shards_total = len(plan.shards)
    summary.shards_empty = sum(1 for r in plan.readers if r.num_rows == 0)
    summary.rows_in_dataset = plan.rows_total
    summary.where = job.where
    summary.prefetch = job.prefetch
    summary.warnings = list(plan.warnings)
    if plan.features is not None:
        summary.features = {f.spec.name: f.columns for f in plan.features.feeds}
        summary.features_chosen_by = plan.features.chosen_by
        summary.keep = plan.features.keep
        summary.batch_size = plan.batch_size
        summary.batch_size_source = plan.batch_size_source
        summary.output_schema = [f"{f.name}: {f.type}" for f in plan.output_schema]


def _make_sink(dest: str, plan, schema, table: str | None):
    from .sinks import sink_class

    job = plan.job
    return sink_class(dest)(
        dest,
        schema=schema,
        if_exists=job.if_exists,
        run_id=plan.run_id,
        metadata=plan.metadata(),
        partition_columns=tuple(plan.hive_types),
        table=table,
        upsert_key=tuple(job.upsert_key or ()) if schema is plan.output_schema else (),
        publish=job.publish,
        locked=not job.no_lock,
        timeout=job.timeout,
    )


def _quarantine_dest(job: Job, dest: str) -> tuple[str, str | None]:
    """--quarantine, or beside the output: <OUT>.quarantine/ or the table <table>_quarantine."""
    if job.quarantine:
        if "://" in job.quarantine and not job.quarantine.startswith("file://"):
            return job.quarantine, (f"{job.table}_quarantine" if job.table else "batchscore_quarantine")
        if "://" not in dest:
            out = os.path.realpath(dest)
            q = os.path.realpath(job.quarantine)
            if q == out or q.startswith(out.rstrip(os.sep) + os.sep):
                from .errors import UsageError

                raise UsageError(
                    f"--quarantine {job.quarantine} is inside --output {dest}: bad rows must go beside the output, not into it"
                )
        return job.quarantine, None
    if "://" in dest and not dest.startswith("file://"):
        return dest, f"{job.table}_quarantine"
    base = dest[len("file://"):] if dest.startswith("file://") else dest
    base = base.rstrip("/\\")
    if base.lower().endswith(".parquet"):
        base = base[: -len(".parquet")]
    return base + ".quarantine", None


def _quarantine_schema(plan):
    import pyarrow as pa

    fields = [plan.schema.field(n) for n in plan.stream_columns]
    return pa.schema(fields + [pa.field("reason", pa.string()), pa.field("shard", pa.string())])
