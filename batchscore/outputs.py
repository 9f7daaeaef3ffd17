"""Model outputs as Arrow columns: ``[N]``/``[N,1]`` → scalar, ``[N,K]`` →
``fixed_size_list<K>`` (nested for more dimensions); types are kept."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .errors import ModelError


def arrow_type_for(dtype: str | np.dtype, row_shape: Sequence[int]) -> pa.DataType:
    """The column type of an output with this dtype and per-row shape."""
    if dtype == "string" or (isinstance(dtype, np.dtype) and dtype.kind in "OUS"):
        t: pa.DataType = pa.string()
    else:
        t = pa.from_numpy_dtype(np.dtype(dtype))
    for dim in reversed(list(row_shape)):
        t = pa.list_(t, int(dim))
    return t


def row_shape_of(arr: np.ndarray) -> tuple[int, ...]:
    """Per-row shape of a prediction array; a trailing ``[N, 1]`` becomes a scalar."""
    shape = tuple(arr.shape[1:])
    if shape == (1,):
        return ()
    return shape


def to_arrow(name: str, arr: Any, rows: int, expected: pa.DataType | None = None) -> pa.Array:
    """Convert one output array (first ``rows`` rows) to an Arrow column."""
    if isinstance(arr, list):  # e.g. sequence outputs the backend could not make columnar
        raise ModelError(f"model output {name!r} is a sequence, not a tensor; batchscore cannot store it")
    arr = np.asarray(arr)
    if arr.ndim == 0:
        raise ModelError(f"model output {name!r} is a scalar, not one value per row")
    if arr.shape[0] < rows:
        raise ModelError(
            f"model output {name!r} has {arr.shape[0]} rows for a batch of {rows}: "
            "the model must keep the batch dimension first"
        )
    arr = arr[:rows]
    shape = row_shape_of(arr)
    if arr.dtype.kind in "OUS":
        flat = pa.array(arr.reshape(-1).tolist(), type=pa.string())
    elif arr.dtype.kind in "iuf":
        # Zero-copy from the numpy buffer (pa.array would import pandas to inspect it).
        values = np.ascontiguousarray(arr).reshape(-1)
        flat = pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])
    else:
        flat = pa.array(np.ascontiguousarray(arr).reshape(-1))
    out: pa.Array = flat
    for dim in reversed(shape):
        out = pa.FixedSizeListArray.from_arrays(out, int(dim))
    if expected is not None and out.type != expected:
        try:
            out = out.cast(expected)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ModelError(
                f"model output {name!r} changed type between batches ({expected} then {out.type})"
            ) from None
    return out
