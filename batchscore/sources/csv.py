"""CSV (and TSV) shards, streamed block by block with pyarrow's reader."""

from __future__ import annotations

import os
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from . import ShardReader, _strip_compression, parse_text_columns

BLOCK_SIZE = 4 << 20
#: pyarrow's default null spellings minus the NaN ones: `nan` in a CSV is NaN (a
#: value --allow-nan lets through), not a missing value.
NULL_VALUES = ["", "#N/A", "#N/A N/A", "#NA", "N/A", "NA", "NULL", "n/a", "null"]


class Reader(ShardReader):
    def _delimiter(self) -> str:
        return "\t" if _strip_compression(self.shard.path).lower().endswith(".tsv") else ","

    def _reader(self, column_types=None, include_columns=None):
        return pacsv.open_csv(
            self.shard.path,
            read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE),
            parse_options=pacsv.ParseOptions(delimiter=self._delimiter()),
            convert_options=pacsv.ConvertOptions(
                column_types=column_types or {}, include_columns=include_columns or [],
                strings_can_be_null=self.lenient, null_values=NULL_VALUES,
            ),
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
        types = {}
        if schema is not None:
            # Parse straight into the dataset's types, so shards agree.
            types = {n: schema.field(n).type for n in columns if schema.get_field_index(n) >= 0}
            if self.lenient:  # numbers as text first: a bad cell is a bad row, not a bad shard
                types = {n: (pa.string() if _numeric(t) else t) for n, t in types.items()}
        reader = None
        try:
            reader = self._reader(types, columns)  # reads (and converts) the first block already
            for batch in reader:
                yield parse_text_columns(batch, schema) if self.lenient else batch
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc) or schema is None:
                raise
            raise self._locate_bad_cell(columns, schema) or exc
        finally:
            if reader is not None:
                reader.close()

    def _locate_bad_cell(self, columns: list[str], schema: pa.Schema):
        """A DataError naming the column, value and line of the first cell that does
        not parse (pyarrow's message names neither the column nor the line)."""
        from ..errors import DataError
        from . import BAD_ROW_COLUMN

        lenient = type(self)(self.shard, lenient=True)
        seen = 0
        for batch in lenient._iter(columns, 65_536, schema):
            if BAD_ROW_COLUMN in batch.schema.names:
                reasons = batch.column(BAD_ROW_COLUMN)
                if reasons.null_count < len(reasons):
                    row = next(i for i, r in enumerate(reasons.to_pylist()) if r is not None)
                    return DataError(
                        f"{self.shard.path}: {reasons[row].as_py()} at line {seen + row + 2}: "
                        "fix the data, or pass --on-error skip|quarantine"
                    )
            seen += batch.num_rows
        return None

    def scan_polars(self):
        import polars as pl

        return pl.scan_csv(self.shard.path, separator=self._delimiter(), try_parse_dates=True)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)
