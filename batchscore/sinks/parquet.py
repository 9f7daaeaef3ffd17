"""Parquet output: a directory with one file per input shard, or one file.

Files are written under hidden temporary names and renamed when complete; a
directory gets a manifest (``_batchscore_manifest.json``, updated as shards
commit) and a ``_SUCCESS`` marker last. Readers (Arrow, Spark, DuckDB, polars)
skip names that start with ``_`` or ``.``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import OutputExistsError, UsageError
from . import Sink as BaseSink
from . import os_error

if TYPE_CHECKING:
    from ..sources import Shard

MANIFEST = "_batchscore_manifest.json"
SUCCESS = "_SUCCESS"


def _exists_message(dest: str) -> str:
    return (
        f"output {dest} already exists: pass --overwrite to replace it, or --resume to finish "
        "an interrupted run (--if-exists fail|replace|append|resume)"
    )


def _atomic_write_text(path: str, text: str) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Sink(BaseSink):
    compression = "snappy"

    def __init__(self, dest: str, **kwargs: Any):
        if dest.startswith("file://"):
            dest = dest[len("file://"):]
        super().__init__(dest, **kwargs)
        self.single = dest.lower().endswith(".parquet") and not os.path.isdir(dest)
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None
        self._current: "Shard | None" = None
        self._manifest: dict[str, Any] = {}
        schema = self.schema
        self._drop: list[str] = []
        if not self.single:
            # Like the input, a directory output keeps hive columns in its key=value/
            # folders only: readers that infer partitions would see them twice.
            self._drop = [c for c in self.partition_columns if c in schema.names]
            schema = pa.schema([f for f in schema if f.name not in self._drop])
        self._schema = schema.with_metadata({b"batchscore": json.dumps(self.metadata).encode()})

    # -- lifecycle ---------------------------------------------------------
    def open(self, shards: list["Shard"]) -> None:
        try:
            self._open(shards)
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def _open(self, shards: list["Shard"]) -> None:
        inputs = {os.path.realpath(s.path) for s in shards}
        if self.single:
            if os.path.realpath(self.dest) in inputs:
                raise UsageError(f"--output {self.dest} is also an input: choose another --output")
            if os.path.exists(self.dest) and self.if_exists == "fail":
                raise OutputExistsError(_exists_message(self.dest))
            if self.if_exists in ("append", "resume") and os.path.exists(self.dest):
                raise UsageError(
                    f"--if-exists {self.if_exists} needs a directory output; {self.dest} is a single file "
                    "(written all-or-nothing): use --overwrite"
                )
            parent = os.path.dirname(os.path.abspath(self.dest))
            os.makedirs(parent, exist_ok=True)
            self._tmp = os.path.join(parent, f".{os.path.basename(self.dest)}.tmp-{self.run_id}")
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression=self.compression)
            return
        real = os.path.realpath(self.dest)
        if any(p == real or p.startswith(real + os.sep) for p in inputs):
            raise UsageError(f"--output {self.dest} holds input files: choose an --output outside the inputs")
        if os.path.exists(self.dest):
            if not os.path.isdir(self.dest):
                raise OutputExistsError(
                    f"output {self.dest} exists and is not a directory: remove it, or name a .parquet file"
                )
            if os.listdir(self.dest):
                owned = os.path.exists(os.path.join(self.dest, MANIFEST))
                if self.if_exists == "fail":
                    raise OutputExistsError(_exists_message(self.dest))
                if self.if_exists == "replace":
                    if not owned:
                        raise OutputExistsError(
                            f"refusing to replace {self.dest}: batchscore did not create it (no {MANIFEST}); "
                            "remove it yourself or choose another --output"
                        )
                    shutil.rmtree(self.dest)
                else:
                    raise UsageError(
                        f"--if-exists {self.if_exists} is not supported for Parquet output yet: use --overwrite"
                    )
        os.makedirs(self.dest, exist_ok=True)
        self._manifest = {
            "batchscore_manifest": 1,
            "run_id": self.run_id,
            "metadata": self.metadata,
            "started_at": time.time(),
            "complete": False,
            "shards": {},
        }
        self._save_manifest()

    def _save_manifest(self) -> None:
        _atomic_write_text(os.path.join(self.dest, MANIFEST), json.dumps(self._manifest, indent=1))

    def _start_shard(self, shard: "Shard") -> None:
        final = os.path.join(self.dest, shard.output_name)
        folder = os.path.dirname(final)
        os.makedirs(folder, exist_ok=True)
        self._tmp = os.path.join(folder, f".{os.path.basename(final)}.tmp-{self.run_id}")
        self._writer = pq.ParquetWriter(self._tmp, self._schema, compression=self.compression)
        self._current = shard

    def write(self, shard: "Shard", batch: pa.RecordBatch) -> None:
        try:
            if not self.single and self._current is not shard:
                self._start_shard(shard)
            if self._drop:
                batch = batch.drop_columns(self._drop)
            self._writer.write_batch(batch)
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def commit_shard(self, shard: "Shard", rows: int) -> None:
        if self.single:
            return
        try:
            if self._current is not shard:
                self._start_shard(shard)  # an empty shard still gets its (empty) file
            self._writer.close()
            self._writer = None
            final = os.path.join(self.dest, shard.output_name)
            os.replace(self._tmp, final)
            self._tmp, self._current = None, None
            self._manifest["shards"][shard.output_name] = {
                "source": shard.path,
                "rows": rows,
                "committed_at": time.time(),
            }
            self._save_manifest()
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def close(self) -> None:
        try:
            if self.single:
                self._writer.close()
                self._writer = None
                os.replace(self._tmp, self.dest)
                self._tmp = None
                return
            self._manifest["complete"] = True
            self._manifest["finished_at"] = time.time()
            self._save_manifest()
            with open(os.path.join(self.dest, SUCCESS), "w"):
                pass
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - we are cleaning up after a failure
                pass
            self._writer = None
        if self._tmp and os.path.exists(self._tmp):
            try:
                os.remove(self._tmp)
            except OSError:
                pass
        self._tmp = None
