"""Arrow IPC shards (the file format, also called Feather v2, or the stream format)."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from . import ShardReader


class Reader(ShardReader):
    cheap_row_count = True

    def _open(self) -> None:
        with pa.memory_map(self.shard.path) as source:
            try:
                reader = pa.ipc.open_file(source)
            except pa.ArrowInvalid:
                self._stream = True
                self.pushdown = False  # polars scans the file format only
                source.seek(0)
                self.schema = pa.ipc.open_stream(source).schema.remove_metadata()
                self.num_rows = None
                return
            self._stream = False
            self.pushdown = True
            self.schema = reader.schema.remove_metadata()
            self.num_rows = sum(
                reader.get_record_batch(i).num_rows for i in range(reader.num_record_batches)
            )

    def _iter(self, columns: list[str], batch_size: int, schema=None) -> Iterator[pa.RecordBatch]:
        with pa.memory_map(self.shard.path) as source:
            if self._stream:
                for batch in pa.ipc.open_stream(source):
                    yield batch.select(columns)
            else:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield reader.get_record_batch(i).select(columns)

    def scan_polars(self):
        import polars as pl

        return pl.scan_ipc(self.shard.path)
