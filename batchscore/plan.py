"""Planning a run: shards, the dataset schema, the model, the feature mapping,
the output schema and the batch size — everything decided before scoring, so
mistakes fail fast (before any row is scored) and --dry-run can print it."""

from __future__ import annotations

import dataclasses
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ._version import __version__
from .backends import Backend, Device, file_sha256, pick_backend
from .devices import cpu_count
from .errors import InputError, ModelError, SchemaError, UsageError
from .features import FeaturePlan, check_prediction_names, plan_features, zero_feeds
from .job import Job
from .outputs import arrow_type_for
from .report import log
from .sources import Shard, ShardReader, _glob_base, discover, open_shard


@dataclass
class Plan:
    job: Job
    run_id: str
    shards: list[Shard]
    readers: list[ShardReader]
    schema: pa.Schema | None = None  # the dataset's columns (hive columns included)
    hive_types: dict[str, pa.DataType] = field(default_factory=dict)
    backend: Backend | None = None
    #: --device gpu:all: one loaded backend per GPU (the first is ``backend``); else empty.
    replicas: list[Backend] = field(default_factory=list)
    device: Device | None = None
    threads: int = 1
    model_sha256: str | None = None
    features: FeaturePlan | None = None
    read_columns: list[str] = field(default_factory=list)
    stream_columns: list[str] = field(default_factory=list)
    prediction_names: list[str] = field(default_factory=list)
    output_schema: pa.Schema | None = None
    batch_size: int = 0
    batch_size_source: str = ""
    output: str = ""
    where: Any = None  # a polars expression
    rows_total: int | None = None
    warnings: list[str] = field(default_factory=list)
    where_columns: list[str] = field(default_factory=list)
    #: Shards left out (--on-error skip|quarantine): (shard, reason).
    failed_shards: list[tuple[Shard, str]] = field(default_factory=list)
    #: Hash of everything that decides the result (model, features, keep, where, schema).
    job_key: str = ""

    def without(self, names: set[str]) -> "Plan":
        """This plan minus the shards whose output_name is in ``names`` (resume)."""
        import dataclasses

        keep = [i for i, s in enumerate(self.shards) if s.output_name not in names]
        plan = dataclasses.replace(self, shards=[self.shards[i] for i in keep], readers=[self.readers[i] for i in keep])
        counts = [r.num_rows for r in plan.readers]
        plan.rows_total = None if any(c is None for c in counts) else sum(counts)
        return plan

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.backend.outputs]

    def metadata(self) -> dict[str, Any]:
        """What the output file records about the run."""
        return {
            "run_id": self.run_id,
            "batchscore_version": __version__,
            "model": os.path.abspath(self.job.model),
            "model_sha256": self.model_sha256,
            "backend": self.backend.name,
            "features": {f.spec.name: f.columns for f in self.features.feeds},
            "where": self.job.where,
            "outputs": {self.job.prediction_prefix + k: v for k, v in self.backend.output_metadata.items()},
            "job_key": self.job_key,
        }

    def describe(self) -> list[str]:
        """The plan as lines, for --dry-run."""
        lines = [f"shards: {len(self.shards)}" + (f", {self.rows_total:,} rows" if self.rows_total is not None else "")]
        for shard, reader in zip(self.shards, self.readers):
            rows = "?" if reader.num_rows is None else f"{reader.num_rows:,}"
            lines.append(f"  {shard.path} ({shard.format}, {rows} rows) -> {shard.output_name}")
        lines.append(f"model: {self.job.model} ({self.backend.name}, sha256 {self.model_sha256[:12]})")
        lines.append(f"features ({self.features.chosen_by}):")
        lines += [f"  {d}" for d in self.features.describe()]
        lines.append(f"keep: {', '.join(self.features.keep) or '(none)'}")
        if self.job.where:
            lines.append(f"where: {self.job.where}")
        lines.append("output schema:")
        lines += [f"  {f.name}: {f.type}" for f in self.output_schema]
        lines.append(f"device: {self.device} ({self.device.description}), {self.threads} threads")
        lines.append(f"batch size: {self.batch_size:,} ({self.batch_size_source}), prefetch {self.job.prefetch}")
        lines.append(f"output: {self.output}")
        return lines


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def default_output(first_input: str) -> str:
    path = _glob_base(first_input) if any(c in first_input for c in "*?[") and not os.path.exists(first_input) else first_input
    p = Path(path.rstrip("/\\") or ".")
    name = p.resolve().name if p.name in ("", ".", "..") else p.name
    if os.path.isfile(path):
        name = name.split(".")[0] or name
    return f"{name}-scored"


def _hive_types(shards: list[Shard]) -> dict[str, pa.DataType]:
    values: dict[str, list[str]] = {}
    for s in shards:
        for k, v in s.partitions:
            values.setdefault(k, []).append(v)
    types = {}
    for k, vs in values.items():
        types[k] = pa.int64() if all(re.fullmatch(r"-?\d{1,18}", v) for v in vs) else pa.string()
    return types


def _check_output_names(shards: list[Shard]) -> None:
    names: dict[str, str] = {}
    for s in shards:
        if s.output_name in names:
            raise UsageError(
                f"inputs {names[s.output_name]} and {s.path} would both be written to {s.output_name}: "
                "pass their common parent directory instead, or write to a single .parquet file"
            )
        names[s.output_name] = s.path


def _unify(readers: list[ShardReader], hive: dict[str, pa.DataType], tolerant: "Plan | None" = None) -> tuple[pa.Schema, list[str]]:
    """The dataset schema and the columns present in every non-empty shard.

    With ``tolerant`` (a plan, --on-error skip|quarantine), a shard whose column
    types disagree with the shards before it is moved to the plan's failed shards.
    """
    if tolerant is not None:
        ok = []
        for r in readers:
            try:
                _unify(ok + [r], hive)
            except SchemaError as exc:
                tolerant.failed_shards.append((r.shard, str(exc)))
                continue
            ok.append(r)
        if len(ok) < len(readers):
            keep = {id(r) for r in ok}
            pairs = [(s, r) for s, r in zip(tolerant.shards, tolerant.readers) if id(r) in keep]
            tolerant.shards[:] = [s for s, _ in pairs]
            tolerant.readers[:] = [r for _, r in pairs]
            readers = ok
    with_schema = [r for r in readers if r.schema is not None]
    if not with_schema:
        return None, []
    fields: dict[str, pa.Field] = {}
    where_from: dict[str, str] = {}
    for r in with_schema:
        for f in r.schema:
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name], where_from[f.name] = f, r.shard.path
                continue
            if pa.types.is_null(f.type) or f.type == fields[f.name].type:
                continue
            # Text formats infer types per file: a column read as text in one CSV/NDJSON
            # file (because of a bad cell) takes the other files' type, and the bad
            # cell is reported where it is (a row error, or the file and line).
            text_here = r.shard.format in ("csv", "ndjson") and pa.types.is_string(f.type)
            text_before = pa.types.is_string(fields[f.name].type) and where_from[f.name] in _text_paths(with_schema)
            if text_here:
                continue
            if text_before:
                fields[f.name], where_from[f.name] = f, r.shard.path
                continue
            try:
                merged = pa.unify_schemas(
                    [pa.schema([fields[f.name]]), pa.schema([f])], promote_options="permissive"
                ).field(0)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                raise SchemaError(
                    f"shards disagree on column {f.name!r}: {where_from[f.name]} has {fields[f.name].type}, "
                    f"{r.shard.path} has {f.type}; make the files agree or score them in separate runs"
                ) from None
            fields[f.name] = merged
    for k, t in hive.items():
        if k not in fields:
            fields[k] = pa.field(k, t)
    # Columns every non-empty shard has (empty shards with no rows impose nothing).
    nonempty = [r for r in with_schema if r.num_rows != 0] or with_schema
    common = [n for n in fields if n in hive or all(n in r.schema.names for r in nonempty)]
    return pa.schema(list(fields.values())), common


def _text_paths(readers: list[ShardReader]) -> set[str]:
    return {r.shard.path for r in readers if r.shard.format in ("csv", "ndjson")}


def _where_expr(where: str, names: list[str]):
    import polars as pl

    try:
        expr = pl.sql_expr(where)
        roots = expr.meta.root_names()
    except Exception as exc:  # noqa: BLE001 - polars raises several SQL error types
        raise UsageError(f"--where {where!r} is not a valid SQL predicate: {' '.join(str(exc).split())}") from None
    missing = [r for r in roots if r not in names]
    if missing:
        raise SchemaError(
            f"--where refers to column(s) {', '.join(missing)} that the input lacks; available: {', '.join(names)}"
        )
    return expr, roots


def _probe_outputs(backend: Backend, plan: Plan) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Run the model once on a zero batch to learn output shapes the model leaves dynamic."""
    feeds = zero_feeds(plan.features, plan.features.fixed_batch or 1)
    try:
        out = backend.predict(feeds)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"model {plan.job.model} failed on a test batch shaped like the features: {' '.join(str(exc).split())[:300]}"
        ) from None
    shapes = {}
    for name, arr in out.items():
        arr = np.asarray(arr)
        shape = tuple(arr.shape[1:])
        dtype = "string" if arr.dtype.kind in "OUS" else arr.dtype.name
        shapes[name] = (dtype, () if shape == (1,) else shape)
    return shapes


def _replicas(backend_cls: type[Backend], plan: Plan) -> list[Backend]:
    """--device gpu:all: the loaded backend on GPU 0 plus one more per visible GPU."""
    from .devices import nvidia_gpus

    out = [plan.backend]
    for gpu in nvidia_gpus()[1:]:
        device = backend_cls.resolve_device(f"gpu:{gpu.index}")
        out.append(backend_cls(plan.job.model, device, threads=plan.threads, options=plan.job.backend_options()))
    plan.device.description = f"{len(out)} GPU(s), one model replica each"
    return out


def make_plan(job: Job) -> Plan:
    """Everything about a run that can be decided before reading rows."""
    run_id = job.run_id or new_run_id()
    tolerant = job.on_error != "fail"
    shards = discover(job.inputs, job.input_format, job.allow_empty)
    output = job.output or default_output(job.inputs[0])
    if "://" not in output and os.path.exists(os.path.join(output, "_batchscore_manifest.json")):
        # An earlier run's output inside an input directory is not input (a rerun would read it).
        out_real = os.path.realpath(output)
        shards = [s for s in shards if not os.path.realpath(s.path).startswith(out_real + os.sep)]
        shards = [dataclasses.replace(s, index=i) for i, s in enumerate(shards)]
    if not output.lower().endswith(".parquet"):
        _check_output_names(shards)
    plan = Plan(job=job, run_id=run_id, shards=[], readers=[])
    plan.output = output
    for shard in shards:
        try:
            reader = open_shard(shard, lenient=tolerant)
        except InputError as exc:
            if not tolerant:
                raise
            plan.failed_shards.append((shard, str(exc)))
            continue
        plan.shards.append(shard)
        plan.readers.append(reader)
    readers = plan.readers

    # The model first: a missing or broken model is the cheapest error to report.
    backend_cls = pick_backend(job.model, job.backend)
    plan.device = backend_cls.resolve_device(job.device)
    plan.threads = job.threads or cpu_count()
    plan.model_sha256 = file_sha256(job.model)
    plan.backend = backend_cls(job.model, plan.device, threads=plan.threads, options=job.backend_options())
    if job.device in ("gpu:all", "cuda:all"):
        plan.replicas = _replicas(backend_cls, plan)
    if job.device == "auto":
        log.info(f"device: {plan.device} ({plan.device.description})")

    if not plan.shards:
        if plan.failed_shards:
            raise InputError(
                f"every input shard failed ({len(plan.failed_shards)}); the first: {plan.failed_shards[0][1]}"
            )
        return plan
    plan.hive_types = _hive_types(plan.shards)
    schema, common = _unify(readers, plan.hive_types, plan if tolerant else None)
    if schema is None:
        raise InputError(
            f"every input is empty and has no columns ({len(plan.shards)} file(s)); nothing to score"
        )
    if tolerant and job.features is not None:
        schema = _numeric_text_features(schema, plan, job.features)
    plan.schema = schema
    plan.features = plan_features(schema, plan.backend.inputs, job.features, job.keep)
    if job.keep is None:
        plan.features.keep = [n for n in plan.features.keep if n in common]
    if job.features is None:
        log.info(f"features: {', '.join(plan.features.columns)} ({plan.features.chosen_by})")
    dropped = [n for n in schema.names if n not in common and n not in plan.features.columns]
    if dropped and job.keep is None:
        plan.warnings.append(f"column(s) {', '.join(dropped)} are missing from some shards and are not kept")
    if job.where:
        plan.where, plan.where_columns = _where_expr(job.where, schema.names)
    streamed = set(plan.features.columns) | set(plan.features.keep)
    if job.on_error == "quarantine":
        streamed |= set(common)  # quarantined rows keep all their original columns
    plan.stream_columns = [n for n in schema.names if n in streamed]
    needed = streamed | set(plan.where_columns)
    plan.read_columns = [n for n in schema.names if n in needed and n not in plan.hive_types]
    for i in reversed(range(len(plan.readers))):
        r = plan.readers[i]
        if r.schema is None or r.num_rows == 0:
            continue
        missing = [c for c in plan.read_columns if c not in r.schema.names]
        if missing:
            msg = (
                f"shard {r.shard.path} lacks column(s) {', '.join(missing)} that other shards have "
                "(schema drift): fix the file, or leave it out"
            )
            if not tolerant:
                raise SchemaError(msg)
            plan.failed_shards.append((r.shard, msg))
            del plan.shards[i], plan.readers[i]
    plan.failed_shards.sort(key=lambda f: f[0].index)
    counts = [r.num_rows for r in plan.readers]
    plan.rows_total = None if any(c is None for c in counts) else sum(counts)

    # Batch size: a fixed model batch wins; else the flag; else the backend's default.
    fixed = plan.features.fixed_batch
    if fixed:
        if job.batch_size and job.batch_size != "auto" and job.batch_size != fixed:
            plan.warnings.append(f"--batch-size {job.batch_size} ignored: the model's batch dimension is fixed at {fixed}")
        plan.batch_size, plan.batch_size_source = fixed, "fixed by the model"
    elif job.batch_size == "auto":
        from .autobatch import choose_batch_size

        plan.batch_size, plan.batch_size_source = choose_batch_size(plan)
    elif job.batch_size:
        plan.batch_size, plan.batch_size_source = job.batch_size, "--batch-size"
    else:
        plan.batch_size, plan.batch_size_source = backend_cls.default_batch_size, f"{backend_cls.name} default"

    # The output schema: kept columns, then one column per model output.
    plan.prediction_names = check_prediction_names(plan.features.keep, plan.output_names, job.prediction_prefix)
    known: dict[str, tuple[str, tuple[int, ...]]] = {}
    for spec in plan.backend.outputs:
        dims = spec.shape[1:] if spec.shape else None
        if dims is not None and all(d is not None for d in dims) and spec.dtype in _SIMPLE_DTYPES:
            known[spec.name] = (spec.dtype, () if tuple(dims) == (1,) else tuple(dims))
    if len(known) < len(plan.backend.outputs):
        known.update({k: v for k, v in _probe_outputs(plan.backend, plan).items() if k not in known})
    fields = [schema.field(n) for n in plan.features.keep]
    for spec, col in zip(plan.backend.outputs, plan.prediction_names):
        dtype, shape = known[spec.name]
        fields.append(pa.field(col, arrow_type_for(dtype, shape)))
    plan.output_schema = pa.schema(fields)
    plan.job_key = _job_key(plan)
    for w in plan.warnings:
        log.warning(f"warning: {w}")
    return plan


_SIMPLE_DTYPES = {
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "string",
}


def _job_key(plan: Plan) -> str:
    import hashlib
    import json

    what = {
        "model_sha256": plan.model_sha256,
        "backend": plan.backend.name,
        "features": {f.spec.name: f.columns for f in plan.features.feeds},
        "keep": plan.features.keep,
        "where": plan.job.where,
        "output_schema": [f"{f.name}:{f.type}" for f in plan.output_schema],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def _numeric_text_features(schema: pa.Schema, plan: Plan, features: list[str]) -> pa.Schema:
    """With --on-error skip|quarantine, a CSV/NDJSON feature column that type
    inference read as text (because of bad cells) is parsed as the model's
    number type, so the bad cells become bad rows."""
    from .features import expand_patterns

    text_only = all(s.format in ("csv", "ndjson") for s in plan.shards)
    if not text_only or len(plan.backend.inputs) != 1:
        return schema
    target = plan.backend.inputs[0].dtype
    if target not in ("float16", "float32", "float64", "int32", "int64"):
        return schema
    cols = set(expand_patterns(features, schema.names, "--features"))
    fields = [
        pa.field(f.name, pa.from_numpy_dtype(np.dtype(target)) if f.name in cols and pa.types.is_string(f.type) else f.type)
        for f in schema
    ]
    return pa.schema(fields)
