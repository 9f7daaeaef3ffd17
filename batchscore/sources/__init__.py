"""Input sources: find the shards behind INPUT arguments and read them as Arrow.

One module per format (``parquet``, ``csv``, ``ndjson``, ``ipc``); each defines a
:class:`ShardReader` subclass. Everything downstream sees ``pyarrow.RecordBatch``.
"""

from __future__ import annotations

import glob as globmod
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..errors import InputError, NoInputError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

#: Extension (lower case, compression suffix removed) → format name.
EXTENSIONS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".parq": "parquet",
    ".csv": "csv",
    ".tsv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "ndjson",
    ".arrow": "ipc",
    ".arrows": "ipc",
    ".ipc": "ipc",
    ".feather": "ipc",
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst", ".lz4")
_GLOB_CHARS = set("*?[")
#: A reader in lenient mode adds this column: why a row's cells did not parse (null: fine).
BAD_ROW_COLUMN = "__batchscore_bad_row__"


@dataclass(frozen=True)
class Shard:
    """One input file: the unit of reading, writing and (later) committing."""

    path: str
    #: Output-relative name, e.g. ``day=2026-12-01/part-0.parquet``.
    output_name: str
    format: str
    #: Hive-style ``key=value`` folders between the input argument and the file.
    partitions: tuple[tuple[str, str], ...] = ()
    index: int = 0

    @property
    def name(self) -> str:
        return self.path


def _strip_compression(name: str) -> str:
    lower = name.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def format_of(path: str, forced: str = "auto") -> str | None:
    """The format of a file by extension, or the forced one."""
    if forced != "auto":
        return forced
    return EXTENSIONS.get(Path(_strip_compression(path)).suffix.lower())


def _hidden(part: str) -> bool:
    # Spark, Hive, Arrow and polars skip these: so do we (markers, temp files).
    return part.startswith(("_", ".")) and "=" not in part


def _output_name(rel: str) -> str:
    stem = Path(_strip_compression(rel))
    if stem.suffix.lower() in EXTENSIONS:
        stem = stem.with_suffix("")
    return stem.as_posix() + ".parquet"


def _partitions(rel_dir: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in Path(rel_dir).parts:
        if "=" in part:
            key, _, value = part.partition("=")
            if key:
                out.append((key, value))
    return tuple(out)


def _walk(root: str) -> list[str]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        files.extend(os.path.join(dirpath, f) for f in filenames if not _hidden(f))
    return sorted(files)


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if _GLOB_CHARS & set(part):
            break
        base.append(part)
    return str(Path(*base)) if base else "."


def discover(inputs: list[str], input_format: str = "auto", allow_empty: bool = False) -> list[Shard]:
    """Expand files, directories and globs into shards, in the order given.

    Each directory or glob is sorted by path; a file named twice is read once.
    """
    found: list[tuple[str, str, str, tuple]] = []  # (path, output name, format, partitions)
    for arg in inputs:
        if _GLOB_CHARS & set(arg) and not os.path.exists(arg):
            base = _glob_base(arg)
            matches = sorted(globmod.glob(arg, recursive=True))
            for match in matches:
                # Named relative to the glob's fixed prefix: `d/*.parquet` gives file
                # names, `d/day=*/*.parquet` keeps the day=.../ folders (and values).
                if os.path.isdir(match):
                    for f in _walk(match):
                        fmt = format_of(f, input_format)
                        if fmt:
                            rel = os.path.relpath(f, base)
                            found.append((f, _output_name(rel), fmt, _partitions(os.path.dirname(rel))))
                elif os.path.isfile(match) and not _hidden(os.path.basename(match)):
                    fmt = format_of(match, input_format)
                    if fmt:
                        rel = os.path.relpath(match, base)
                        found.append((match, _output_name(rel), fmt, _partitions(os.path.dirname(rel))))
        elif os.path.isdir(arg):
            for f in _walk(arg):
                fmt = format_of(f, input_format)
                if fmt:
                    rel = os.path.relpath(f, arg)
                    found.append((f, _output_name(rel), fmt, _partitions(os.path.dirname(rel))))
        elif os.path.isfile(arg):
            fmt = format_of(arg, input_format)
            if fmt is None:
                raise UsageError(
                    f"cannot tell the format of {arg} from its extension: pass --input-format parquet|csv|ndjson|ipc"
                )
            found.append((arg, _output_name(os.path.basename(arg)), fmt, ()))
        elif os.path.exists(arg):
            raise InputError(f"input {arg} is neither a file nor a directory")
        else:
            raise NoInputError(f"input {arg} does not exist: check the path")
    shards: list[Shard] = []
    seen: set[str] = set()
    for path, out_name, fmt, parts in found:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        shards.append(Shard(path, out_name, fmt, parts, len(shards)))
    if not shards and not allow_empty:
        raise NoInputError(
            f"no input matches {' '.join(inputs)}: check the paths (or pass --allow-empty for a nightly glob that may match nothing)"
        )
    return shards


class ShardReader:
    """Reads one shard. Subclasses fill in :meth:`_open` and :meth:`_iter`."""

    #: Readers whose schema and row count come cheaply from a footer.
    cheap_row_count = False
    #: Whether --where can be pushed into a polars scan of this file.
    pushdown = False
    #: Text formats: cells that do not parse become bad rows (BAD_ROW_COLUMN), not a failed shard.
    lenient = False

    def __init__(self, shard: Shard, lenient: bool = False):
        self.shard = shard
        self.lenient = lenient
        self.schema: pa.Schema | None = None  # None: an empty file with no columns
        self.num_rows: int | None = None
        self._guard(self._open)

    def _guard(self, fn, *args):
        import pyarrow as pa

        try:
            return fn(*args)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise self.corrupt(exc) from exc

    def corrupt(self, exc: BaseException) -> InputError:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return InputError(
            f"cannot read {self.shard.path} as {self.shard.format}: {msg} "
            "(the file is corrupt, truncated or not of that format; fix or remove it, or set --input-format)"
        )

    def _open(self) -> None:
        raise NotImplementedError

    def _iter(self, columns: list[str], batch_size: int, schema=None) -> Iterator["pa.RecordBatch"]:
        """Batches of ``columns``; ``schema`` (the dataset's) lets text formats parse into its types."""
        raise NotImplementedError

    def scan_polars(self):
        """A polars LazyFrame over the file (used for --where pushdown)."""
        raise NotImplementedError

    def iter_batches(self, columns: list[str], batch_size: int, schema=None) -> Iterator["pa.RecordBatch"]:
        it = self._iter(columns, batch_size, schema)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except InputError:
                raise
            except Exception as exc:  # noqa: BLE001 - any decode failure names the file
                import pyarrow as pa

                if isinstance(exc, (pa.ArrowException, OSError, ValueError, EOFError)):
                    raise self.corrupt(exc) from exc
                raise
            yield batch


_FORMATS = {"parquet": "parquet", "csv": "csv", "ndjson": "ndjson", "ipc": "ipc"}


def open_shard(shard: Shard, lenient: bool = False) -> ShardReader:
    """Open a shard with the reader for its format (``lenient``: bad cells make bad rows)."""
    module = importlib.import_module(f".{_FORMATS[shard.format]}", __name__)
    return module.Reader(shard, lenient)


def shard_key(shard: Shard) -> str:
    """A cheap fingerprint of a shard's content: path, size, mtime and, for
    Parquet, the footer. Never a second full read."""
    import hashlib
    import struct

    st = os.stat(shard.path)
    h = hashlib.sha256(f"{os.path.abspath(shard.path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    if shard.format == "parquet" and st.st_size >= 12:
        with open(shard.path, "rb") as fh:
            fh.seek(-8, os.SEEK_END)
            tail = fh.read(8)
            (footer_len,) = struct.unpack("<i", tail[:4])
            if tail[4:] == b"PAR1" and 0 < footer_len <= st.st_size - 8:
                fh.seek(-8 - footer_len, os.SEEK_END)
                h.update(fh.read(footer_len))
    return h.hexdigest()


def parse_text_columns(batch: "pa.RecordBatch", schema: "pa.Schema | None") -> "pa.RecordBatch":
    """Cast text columns of ``batch`` to the dataset's numeric and boolean types,
    cell by cell: a cell that does not parse makes its row bad (a reason in
    BAD_ROW_COLUMN) instead of failing the whole shard."""
    import numpy as np
    import pyarrow as pa

    if schema is None:
        return batch
    arrays, reasons = [], None
    for name, col in zip(batch.schema.names, batch.columns):
        i = schema.get_field_index(name)
        target = schema.field(i).type if i >= 0 else None
        if target is None or not pa.types.is_string(col.type) or not (
            pa.types.is_integer(target) or pa.types.is_floating(target) or pa.types.is_boolean(target)
            or pa.types.is_decimal(target)
        ):
            arrays.append(col)
            continue
        try:
            arrays.append(col.cast(target))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        import polars as pl

        dtype = pl.from_arrow(pa.array([], target)).dtype
        parsed = pl.from_arrow(col).str.strip_chars().cast(dtype, strict=False).to_arrow().cast(target)
        bad = np.logical_and(col.is_valid().to_numpy(zero_copy_only=False),
                             parsed.is_null().to_numpy(zero_copy_only=False))
        if bad.any():
            if reasons is None:
                reasons = np.full(batch.num_rows, None, dtype=object)
            values = col.to_numpy(zero_copy_only=False)
            for r in np.flatnonzero(bad & (reasons == None)):  # noqa: E711 - numpy elementwise
                reasons[r] = f"cannot parse {values[r]!r} as {target} in column {name!r}"
        arrays.append(parsed)
    out = pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
    if reasons is not None:
        out = out.append_column(BAD_ROW_COLUMN, pa.array(list(reasons), pa.string()))
    return out
