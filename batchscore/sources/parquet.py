"""Parquet shards: schema and row count from the footer, batches with projection."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from . import ShardReader

#: Row groups up to this many rows are decoded whole (columns in parallel),
#: which keeps memory to about one row group; larger ones are streamed.
WHOLE_ROW_GROUP_ROWS = 1 << 20


class Reader(ShardReader):
    cheap_row_count = True
    pushdown = True

    def _open(self) -> None:
        meta = pq.read_metadata(self.shard.path)
        self.schema = meta.schema.to_arrow_schema().remove_metadata()
        self.num_rows = meta.num_rows
        self.row_group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def _iter(self, columns: list[str], batch_size: int, schema=None) -> Iterator[pa.RecordBatch]:
        if not self.num_rows:
            return
        with pq.ParquetFile(self.shard.path) as pf:
            if max(self.row_group_rows) > WHOLE_ROW_GROUP_ROWS:
                yield from pf.iter_batches(batch_size=batch_size, columns=columns, use_threads=True)
                return
            for i, rows in enumerate(self.row_group_rows):
                if rows == 0:
                    continue
                table = pf.read_row_group(i, columns=columns, use_threads=True)
                yield from table.to_batches(max_chunksize=batch_size)

    def scan_polars(self):
        import polars as pl

        return pl.scan_parquet(self.shard.path, hive_partitioning=False)
