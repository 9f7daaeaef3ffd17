"""Newline-delimited JSON shards, streamed with pyarrow's JSON reader."""

from __future__ import annotations

import os
from typing import Iterator

import pyarrow as pa
import pyarrow.json as pajson

from . import ShardReader

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
        reader = self._reader()
        try:
            self.schema = reader.schema
        finally:
            reader.close()

    def _iter(self, columns: list[str], batch_size: int, schema=None) -> Iterator[pa.RecordBatch]:
        if self.schema is None:
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
