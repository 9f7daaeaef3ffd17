"""Parquet shards: schema and row count from the footer, batches with projection."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from . import ShardReader


class Reader(ShardReader):
    cheap_row_count = True

    def _open(self) -> None:
        meta = pq.read_metadata(self.shard.path)
        self.schema = meta.schema.to_arrow_schema().remove_metadata()
        self.num_rows = meta.num_rows
        self.num_row_groups = meta.num_row_groups

    def _iter(self, columns: list[str], batch_size: int, schema=None) -> Iterator[pa.RecordBatch]:
        if not self.num_rows:
            return
        # pre_buffer coalesces the column chunks of a row group into few reads.
        with pq.ParquetFile(self.shard.path, pre_buffer=True) as pf:
            yield from pf.iter_batches(batch_size=batch_size, columns=columns, use_threads=True)

    def scan_polars(self):
        import polars as pl

        return pl.scan_parquet(self.shard.path, hive_partitioning=False)
