"""Newline-delimited JSON shards, streamed with pyarrow's JSON reader."""

from __future__ import annotations

import os
from typing import Iterator

import pyarrow as pa
import pyarrow.json as pajson

from . import BAD_ROW_COLUMN, ShardReader, parse_text_columns

BLOCK_SIZE = 4 << 20


class Reader(ShardReader):
    def _reader(self, schema=None):
        parse = pajson.ParseOptions(explicit_schema=schema) if schema is not None else None
        return pajson.open_json(
            self.shard.path, read_options=pajson.ReadOptions(block_size=BLOCK_SIZE), parse_options=parse
        )

    def _open(self) -> None:
        if os.path.getsize(self.shard.path) == 0:
            self.schema, self.num_rows = None, 0
            return
        try:
            reader = self._reader()
        except pa.ArrowInvalid:
            if not self.lenient:
                raise
            self.schema = self._infer_lenient()
            return
        try:
            self.schema = reader.schema
        finally:
            reader.close()

    def _infer_lenient(self, lines: int = 10_000) -> pa.Schema:
        """A schema from the first lines, for files whose values disagree in type:
        a column with numbers and text is typed by its numbers (the text ones are bad rows)."""
        import gzip
        import json

        opener = gzip.open if self.shard.path.lower().endswith(".gz") else open
        seen: dict[str, set] = {}
        with opener(self.shard.path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= lines:
                    break
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    for k, v in obj.items():
                        seen.setdefault(k, set()).add(type(v).__name__)
        fields = []
        for k, kinds in seen.items():
            kinds.discard("NoneType")
            if kinds and kinds <= {"int"}:
                t = pa.int64()
            elif kinds & {"int", "float"}:
                t = pa.float64()
            elif kinds == {"bool"}:
                t = pa.bool_()
            else:
                t = pa.string()
            fields.append(pa.field(k, t))
        return pa.schema(fields)

    def _iter(self, columns: list[str], batch_size: int, schema=None) -> Iterator[pa.RecordBatch]:
        if self.schema is None:
            return
        if self.lenient and schema is not None:
            yield from self._iter_lenient(columns, batch_size, schema)
            return
        explicit = None
        if schema is not None:
            explicit = pa.schema([schema.field(n) for n in columns if schema.get_field_index(n) >= 0])
        reader = self._reader(explicit)
        try:
            for batch in reader:
                yield batch.select(columns)
        finally:
            reader.close()

    def scan_polars(self):
        import polars as pl

        return pl.scan_ndjson(self.shard.path)

    def _iter_lenient(self, columns: list[str], batch_size: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """Line by line (slower): a value of the wrong type, or a line that is not
        JSON, makes a bad row instead of failing the shard. Used with --on-error skip|quarantine."""
        import json

        def flush(rows: list, bad: list) -> pa.RecordBatch:
            arrays = []
            for name in columns:
                t = schema.field(name).type
                values = [r.get(name) if r is not None else None for r in rows]
                if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
                    arrays.append(pa.array([None if v is None else (json.dumps(v) if not isinstance(v, str) else v)
                                            for v in values], pa.string()))
                else:
                    try:
                        arrays.append(pa.array(values, t))
                    except (pa.ArrowInvalid, pa.ArrowTypeError):
                        arrays.append(pa.array([None if v is None else str(v) for v in values], pa.string()).cast(t))
            batch = parse_text_columns(pa.RecordBatch.from_arrays(arrays, names=columns), schema)
            if any(bad):
                reasons = batch.column(BAD_ROW_COLUMN).to_pylist() if BAD_ROW_COLUMN in batch.schema.names else [None] * len(rows)
                merged = pa.array([b or r for b, r in zip(bad, reasons)], pa.string())
                if BAD_ROW_COLUMN in batch.schema.names:
                    batch = batch.set_column(batch.schema.get_field_index(BAD_ROW_COLUMN), BAD_ROW_COLUMN, merged)
                else:
                    batch = batch.append_column(BAD_ROW_COLUMN, merged)
            return batch

        import gzip

        opener = gzip.open if self.shard.path.lower().endswith(".gz") else open
        rows: list = []
        bad: list = []
        with opener(self.shard.path, "rt", encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("not a JSON object")
                    rows.append(obj)
                    bad.append(None)
                except ValueError as exc:
                    rows.append(None)
                    bad.append(f"line {lineno} is not a JSON object: {str(exc)[:80]}")
                if len(rows) >= batch_size:
                    yield flush(rows, bad)
                    rows, bad = [], []
        if rows:
            yield flush(rows, bad)
