"""Feature mapping: which columns feed which model input, and how to build
the input arrays from Arrow batches with as few copies as the layout allows.

Works on any Arrow batch, not only on a file: the serving path reuses it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.types as pat

from .errors import DataError, ModelError, SchemaError, UsageError

if TYPE_CHECKING:
    from .backends import TensorSpec


@dataclass
class InputFeed:
    """How one model input is built. ``mode`` is one of:

    - ``matrix``: F scalar columns stacked into ``[N, F]``;
    - ``tensor``: one list / fixed-size-list column reshaped to the input shape;
    - ``vector``: one scalar column as ``[N]`` (or ``[N, 1]``).
    """

    spec: "TensorSpec"
    columns: list[str]
    mode: str
    row_shape: tuple[int, ...]  # the shape of one row, e.g. (F,) or (3, 64, 64)

    @property
    def np_dtype(self):
        return object if self.spec.dtype == "string" else np.dtype(self.spec.dtype)


@dataclass
class FeaturePlan:
    feeds: list[InputFeed]
    keep: list[str]
    #: How the features were chosen, said in the summary.
    chosen_by: str
    fixed_batch: int | None = None
    columns: list[str] = field(default_factory=list)

    def __post_init__(self):
        seen: dict[str, None] = {}
        for feed in self.feeds:
            for c in feed.columns:
                seen.setdefault(c, None)
        self.columns = list(seen)

    def describe(self) -> list[str]:
        return [f"{f.spec.name} <- {', '.join(f.columns)}" for f in self.feeds]


def expand_patterns(patterns: Sequence[str], names: Sequence[str], flag: str) -> list[str]:
    """Match comma-list entries (exact names or shell patterns) in schema order."""
    out: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        else:
            hits = [pattern] if pattern in names else []
        if not hits:
            missing.append(pattern)
        for h in hits:
            if h not in out:
                out.append(h)
    if missing:
        raise SchemaError(
            f"{flag}: no column matches {', '.join(missing)}; available columns: {', '.join(names)}"
        )
    return out


def _value_type(t: pa.DataType) -> pa.DataType:
    while pat.is_dictionary(t):
        t = t.value_type
    return t


def _is_list(t: pa.DataType) -> bool:
    return pat.is_list(t) or pat.is_large_list(t) or pat.is_fixed_size_list(t)


def _leaf_type(t: pa.DataType) -> pa.DataType:
    while _is_list(t):
        t = t.value_type
    return _value_type(t)


def castable(src: pa.DataType, target: str) -> bool:
    """Whether a column of Arrow type ``src`` can safely feed a ``target`` input."""
    src = _value_type(src)
    if pat.is_null(src):
        return True
    if target == "string":
        return pat.is_string(src) or pat.is_large_string(src) or getattr(pat, "is_string_view", lambda _: False)(src)
    if target == "bool":
        return pat.is_boolean(src)
    kind = np.dtype(target).kind
    if kind == "f":
        return pat.is_floating(src) or pat.is_integer(src) or pat.is_boolean(src) or pat.is_decimal(src)
    if kind in "iu":
        return pat.is_integer(src) or pat.is_boolean(src)
    return False


def _check_type(column: str, t: pa.DataType, spec: "TensorSpec") -> None:
    leaf = _leaf_type(t)
    if not castable(leaf, spec.dtype):
        raise SchemaError(
            f"column {column!r} is {t} but model input {spec.name!r} needs {spec.dtype}: "
            "choose other columns with --features"
        )


def _row_shape(spec: "TensorSpec", what: str) -> tuple[int, ...] | None:
    if spec.shape is None:
        return None  # unknown rank (e.g. TorchScript): the column decides
    if len(spec.shape) < 2:
        return ()
    dims = spec.shape[1:]
    if any(d is None for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _feed_for(spec: "TensorSpec", cols: list[str], schema: pa.Schema) -> InputFeed:
    for c in cols:
        _check_type(c, schema.field(c).type, spec)
    rank = None if spec.shape is None else len(spec.shape)
    if len(cols) == 1 and _is_list(schema.field(cols[0]).type):
        shape = _row_shape(spec, cols[0])
        t = schema.field(cols[0]).type
        if shape is None:
            # Dynamic inner dims: take the list's own size when fixed.
            if pat.is_fixed_size_list(t) and rank in (None, 2):
                shape = (t.list_size,)
            else:
                raise ModelError(
                    f"model input {spec.describe()} has dynamic inner dimensions; "
                    f"cannot shape list column {cols[0]!r} for it"
                )
        if pat.is_fixed_size_list(t) and not _is_list(t.value_type) and int(np.prod(shape)) != t.list_size:
            raise ModelError(
                f"model input {spec.describe()} needs {int(np.prod(shape))} values per row "
                f"but column {cols[0]!r} holds {t.list_size}: fix --features"
            )
        return InputFeed(spec, cols, "tensor", shape)
    if rank is not None and rank <= 1:
        if len(cols) != 1:
            raise ModelError(
                f"model input {spec.describe()} takes one column per row but --features gives {len(cols)}: "
                f"{', '.join(cols)}"
            )
        return InputFeed(spec, cols, "vector", ())
    if rank is not None and rank > 2:
        raise ModelError(
            f"model input {spec.describe()} needs a tensor per row: feed it a list or fixed-size-list "
            f"column with --features (got scalar columns {', '.join(cols)})"
        )
    width = spec.shape[1] if spec.shape else None
    if width is not None and width != len(cols):
        raise ModelError(
            f"model input {spec.describe()} takes {width} features per row but {len(cols)} columns were "
            f"chosen ({', '.join(cols)}): fix --features"
        )
    return InputFeed(spec, cols, "matrix", (len(cols),))


def plan_features(
    schema: pa.Schema,
    inputs: list["TensorSpec"],
    features: list[str] | None,
    keep: list[str] | None,
) -> FeaturePlan:
    """Decide which columns feed which model input, and which are kept."""
    names = schema.names
    described = ", ".join(i.describe() for i in inputs)
    if features is not None:
        cols = expand_patterns(features, names, "--features")
        chosen_by = "--features"
        if len(inputs) == 1:
            feeds = [_feed_for(inputs[0], cols, schema)]
        elif all(i.name in cols for i in inputs) and len(cols) == len(inputs):
            feeds = [_feed_for(i, [i.name], schema) for i in inputs]
        elif len(cols) == len(inputs):
            feeds = [_feed_for(i, [c], schema) for i, c in zip(inputs, cols)]
        else:
            raise ModelError(
                f"the model has {len(inputs)} inputs ({described}) but --features gives {len(cols)} "
                "columns: give one column per input, in input order"
            )
    elif inputs and all(i.name in names for i in inputs):
        feeds = [_feed_for(i, [i.name], schema) for i in inputs]
        chosen_by = "columns named like the model inputs"
    else:
        feeds = None
        if len(inputs) == 1:
            spec = inputs[0]
            is_float = spec.dtype in ("float16", "float32", "float64")
            rank = None if spec.shape is None else len(spec.shape)
            lists = [f.name for f in schema if _is_list(f.type) and castable(_leaf_type(f.type), spec.dtype)]
            if is_float and rank == 2:
                floats = [f.name for f in schema if pat.is_floating(_value_type(f.type))]
                width = spec.shape[1]
                if floats and (width is None or width == len(floats)):
                    feeds = [InputFeed(spec, floats, "matrix", (len(floats),))]
                    chosen_by = f"the {len(floats)} floating-point columns"
            if feeds is None and len(lists) == 1 and (rank is None or rank >= 2):
                feeds = [_feed_for(spec, lists, schema)]
                chosen_by = f"the only list column, {lists[0]!r}"
        if feeds is None:
            raise SchemaError(
                f"cannot tell which columns feed the model inputs ({described}); "
                f"available columns: {', '.join(f'{f.name} ({f.type})' for f in schema)}; pass --features"
            )
    used = {c for f in feeds for c in f.columns}
    if keep is None:
        kept = [n for n in names if n not in used]
    else:
        kept = expand_patterns(keep, names, "--keep") if keep else []
    fixed = {i.fixed_batch for i in inputs} - {None}
    if len(fixed) > 1:
        raise ModelError(f"model inputs have different fixed batch sizes: {described}")
    return FeaturePlan(feeds, kept, chosen_by, fixed.pop() if fixed else None)


def _column_numpy(col: pa.Array, dtype, column: str, where: str) -> np.ndarray:
    if col.null_count:
        raise DataError(
            f"column {column!r} has {col.null_count} null value(s) in {where}: fill them before scoring, "
            "or leave the column out of --features"
        )
    if pat.is_dictionary(col.type):
        col = col.dictionary_decode()
    if pat.is_decimal(col.type):
        col = col.cast(pa.float64())
    if dtype is object:
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    return _numpy(col)


def _numpy(col: pa.Array) -> np.ndarray:
    """A numpy view of a null-free primitive column (a copy only when it must be:
    booleans); zero_copy_only=False would import pandas on some paths."""
    t = col.type
    if (pat.is_integer(t) or pat.is_floating(t)) and not col.null_count:
        # Straight from the data buffer: pyarrow's to_numpy imports pandas (0.3 s) to check types.
        dtype = np.dtype(t.to_pandas_dtype()) if not pat.is_float16(t) else np.dtype(np.float16)
        return np.frombuffer(col.buffers()[1], dtype=dtype, count=len(col), offset=col.offset * dtype.itemsize)
    return col.to_numpy(zero_copy_only=False)


def _list_values(col: pa.Array, per_row: int, column: str, where: str) -> np.ndarray:
    if col.null_count:
        raise DataError(f"column {column!r} has {col.null_count} null list(s) in {where}: fill them before scoring")
    if not pat.is_fixed_size_list(col.type):
        offsets = col.offsets.to_numpy()
        lengths = np.diff(offsets)
        if len(lengths) and (lengths.min() != per_row or lengths.max() != per_row):
            bad = int(np.argmax(lengths != per_row))
            raise DataError(
                f"column {column!r} row {bad} in {where} holds {int(lengths[bad])} values; "
                f"the model needs {per_row} per row"
            )
    values = col.flatten()  # respects slice offsets, unlike .values
    while _is_list(values.type):
        values = values.flatten()
    if values.null_count:
        raise DataError(f"column {column!r} has null values inside its lists in {where}")
    return _numpy(values)  # a view of the values buffer (to_numpy would import pandas: 0.3-0.5 s)


def build_feeds(
    plan: FeaturePlan,
    segments: Sequence[tuple[str, pa.RecordBatch]],
    rows: int,
    padded_rows: int | None = None,
) -> dict[str, np.ndarray]:
    """Build the model's input arrays for one batch from Arrow segments.

    Each segment is ``(shard name, batch)``; together they hold ``rows`` rows.
    ``padded_rows`` (a fixed batch size) pads the arrays with zeros.
    """
    total = padded_rows or rows
    feeds: dict[str, np.ndarray] = {}
    for feed in plan.feeds:
        dtype = feed.np_dtype
        if feed.mode == "vector":
            want = (total,) if (feed.spec.shape is None or len(feed.spec.shape) <= 1) else (total, 1)
            if len(segments) == 1 and total == rows:
                where, batch = segments[0]
                arr = _column_numpy(batch.column(feed.columns[0]), dtype, feed.columns[0], where)
                feeds[feed.spec.name] = np.ascontiguousarray(arr, dtype=dtype).reshape(want)
                continue
            out = np.zeros(total, dtype=dtype) if dtype is not object else np.full(total, "", dtype=object)
            off = 0
            for where, batch in segments:
                n = batch.num_rows
                out[off : off + n] = _column_numpy(batch.column(feed.columns[0]), dtype, feed.columns[0], where)
                off += n
            feeds[feed.spec.name] = out.reshape(want)
        elif feed.mode == "matrix":
            width = len(feed.columns)
            out = np.empty((total, width), dtype=dtype) if total == rows else np.zeros((total, width), dtype=dtype)
            off = 0
            for where, batch in segments:
                n = batch.num_rows
                if n == 0:
                    continue
                block = out[off : off + n]
                for j, name in enumerate(feed.columns):
                    block[:, j] = _column_numpy(batch.column(name), dtype, name, where)
                off += n
            feeds[feed.spec.name] = out
        else:  # tensor
            per_row = int(np.prod(feed.row_shape)) if feed.row_shape else 1
            name = feed.columns[0]
            if len(segments) == 1 and total == rows:
                where, batch = segments[0]
                flat = _list_values(batch.column(name), per_row, name, where)
                feeds[feed.spec.name] = np.ascontiguousarray(flat, dtype=dtype).reshape((rows, *feed.row_shape))
                continue
            out = np.zeros((total, per_row), dtype=dtype)
            off = 0
            for where, batch in segments:
                n = batch.num_rows
                if n:
                    out[off : off + n] = _list_values(batch.column(name), per_row, name, where).reshape(n, per_row)
                off += n
            feeds[feed.spec.name] = out.reshape((total, *feed.row_shape))
    return feeds


def zero_feeds(plan: FeaturePlan, rows: int) -> dict[str, np.ndarray]:
    """Inputs of ``rows`` rows shaped like the features, all zeros (or empty strings):
    for probing a model's outputs and its batch size."""
    feeds = {}
    for feed in plan.feeds:
        if feed.spec.dtype == "string":
            arr = np.full((rows, *feed.row_shape), "", dtype=object)
        else:
            arr = np.zeros((rows, *feed.row_shape), dtype=feed.spec.dtype)
        if feed.mode == "vector" and feed.spec.shape is not None and len(feed.spec.shape) == 2:
            arr = arr.reshape(rows, 1)
        feeds[feed.spec.name] = arr
    return feeds


def check_prediction_names(kept: list[str], outputs: list[str], prefix: str) -> list[str]:
    """Prediction column names; a clash with a kept column is an error."""
    names = [prefix + o for o in outputs]
    clash = [n for n in names if n in kept]
    if clash:
        raise SchemaError(
            f"prediction column(s) {', '.join(clash)} would overwrite kept input column(s) of the same name: "
            "pass --prediction-prefix (e.g. --prediction-prefix pred_) or leave them out with --keep"
        )
    if len(set(names)) != len(names):
        raise UsageError("model outputs have duplicate names")
    return names


def _float_like(t: pa.DataType) -> bool:
    return pat.is_floating(_value_type(t))


def _compute():
    """pyarrow.compute, imported when first needed (70 ms)."""
    import pyarrow.compute as pc

    return pc


def find_bad_rows(plan: FeaturePlan, batch: pa.RecordBatch, allow_nan: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Rows the model cannot take: nulls in a feature column, and NaN or
    infinity unless ``allow_nan``. Returns (row indices, reasons) or None.

    The common case costs one aggregate per column (null counts are cached;
    a finite sum means no NaN or infinity); rows are only looked at when a
    column has something to report.
    """
    bad = None
    reasons = None
    for name in plan.columns:
        col = batch.column(name)
        values = col
        if _is_list(col.type):
            values = col.flatten()
            while _is_list(values.type):
                values = values.flatten()
        check_nan = not allow_nan and _float_like(values.type) and len(values)
        if not col.null_count and not values.null_count:
            if not check_nan:
                continue
            # numpy's SIMD sum over a zero-copy view is ~8x cheaper than pc.sum; a
            # finite sum means no NaN or infinity (an overflow just takes the slow path).
            if pat.is_dictionary(values.type) or pat.is_decimal(values.type):
                total = _compute().sum(values).as_py()
            else:
                with np.errstate(over="ignore", invalid="ignore"):
                    total = _numpy(values).sum()
            if total is not None and np.isfinite(total):
                continue
        # Each row gets the reason for what it holds (a null, or NaN/infinity).
        pc = _compute()  # only on this slow path: clean data never imports it

        found: list[tuple[np.ndarray, str]] = []
        nulls = None
        if col.null_count:
            nulls = col.is_null().to_numpy(zero_copy_only=False)
            found.append((nulls, f"null in column {name!r}"))
        if values is not col:  # lists: a null or non-finite value anywhere in a row's list
            inner = values.is_null()
            if check_nan:
                inner = pc.or_(inner, pc.invert(pc.fill_null(pc.is_finite(values), True)))
            if pc.any(inner).as_py():
                # Map each leaf value back to its top-level row, level by level.
                top = np.arange(len(col))
                level = col
                while _is_list(level.type):
                    top = top[pc.list_parent_indices(level).to_numpy()]
                    level = level.flatten()
                inside = np.zeros(batch.num_rows, dtype=bool)
                inside[np.unique(top[inner.to_numpy(zero_copy_only=False)])] = True
                found.append((inside, f"null, NaN or infinity inside column {name!r}"))
        elif check_nan:
            nonfinite = pc.invert(pc.fill_null(pc.is_finite(col), True)).to_numpy(zero_copy_only=False)
            if nulls is not None:
                nonfinite &= ~nulls
            if nonfinite.any():
                found.append((nonfinite, f"NaN or infinity in column {name!r}"))
        for mask, why in found:
            if not mask.any():
                continue
            if bad is None:
                bad = np.zeros(batch.num_rows, dtype=bool)
                reasons = np.empty(batch.num_rows, dtype=object)
            new = mask & ~bad
            reasons[new] = why
            bad |= mask
    if bad is None:
        return None
    idx = np.flatnonzero(bad)
    return idx, reasons[idx]
