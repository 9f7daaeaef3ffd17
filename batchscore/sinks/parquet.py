"""Parquet output: a directory with one file per input shard, or one file.

Files are written under hidden temporary names and renamed when complete; a
directory gets a manifest (``_batchscore_manifest.json``) and a ``_SUCCESS``
marker last. Readers (Arrow, Spark, DuckDB, polars) skip names that start with
``_`` or ``.``.

The manifest is the directory's ledger (see :mod:`batchscore.ledger`): its
``runs`` and, per file, the shard that made it (shard key, job key, rows, run).
A shard counts as committed once its file is renamed into place *and* the
manifest lists it; ``--resume`` skips those and rescores the rest, replacing
any file a crash left unrecorded. ``--if-exists append`` adds a run's files
next to the old ones (a name already taken gets the run id). ``--publish
at-end`` writes into a hidden staging directory beside the output and renames
it into place when the run ends.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError, OutputExistsError, UsageError
from ..ledger import RunRecord, ShardRecord, resume_point
from ..report import log
from . import Sink as BaseSink
from . import crash_point, os_error

if TYPE_CHECKING:
    from ..sources import Shard

#: A row group is written once this many rows (or bytes) are buffered.
ROW_GROUP_ROWS = 131_072
ROW_GROUP_BYTES = 64 << 20
MANIFEST = "_batchscore_manifest.json"
MANIFEST_VERSION = 1  # runs and per-shard keys were added compatibly
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


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _data_files(root: str) -> list[str]:
    """Visible data files under ``root``, relative (what a reader would load)."""
    out = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "_")) or "=" in d]
        for f in files:
            if not f.startswith((".", "_")):
                out.append(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return out


def _remove_temp_files(root: str) -> None:
    """Temporary files a killed run left (``.name.tmp-RUNID``)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.startswith(".") and ".tmp" in f:
                try:
                    os.remove(os.path.join(dirpath, f))
                except OSError:
                    pass


def load_manifest(root: str) -> dict[str, Any] | None:
    path = os.path.join(root, MANIFEST)
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputExistsError(
            f"{path} is unreadable ({exc}): batchscore cannot tell what this output holds; "
            "remove the directory or pass --overwrite"
        ) from None
    manifest.setdefault("runs", [])
    manifest.setdefault("shards", {})
    if manifest.get("batchscore_manifest") != MANIFEST_VERSION:
        raise OutputExistsError(
            f"{path} was written by another batchscore version (manifest version "
            f"{manifest.get('batchscore_manifest')}, this one reads {MANIFEST_VERSION}): pass --overwrite to rewrite it"
        )
    return manifest


class Sink(BaseSink):
    compression = "snappy"

    def __init__(self, dest: str, **kwargs: Any):
        if dest.startswith("file://"):
            dest = dest[len("file://"):]
        super().__init__(dest, **kwargs)
        if self.table:
            raise UsageError(
                f"--table names a database table, but --output {dest} is Parquet: write to "
                "sqlite:///FILE.db or postgresql://USER@HOST/DB, or leave out --table"
            )
        if self.upsert_key:
            raise UsageError(
                f"--upsert-key needs a database output (sqlite:///, postgresql://); --output {dest} is Parquet"
            )
        self.single = dest.lower().endswith(".parquet") and not os.path.isdir(dest)
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None
        self._current: "Shard | None" = None
        self._single_shards: set = set()  # shards with rows in a single-file output
        self._buf: list[pa.RecordBatch] = []
        self._buf_rows = self._buf_bytes = 0
        self._started = 0.0
        self._manifest: dict[str, Any] = {}
        self._run: RunRecord | None = None
        self._keys: dict[str, tuple[str, str]] = {}
        self._publish = self.publish or "per-shard"
        self._publish_mode = "fail"
        parent = os.path.dirname(os.path.abspath(dest.rstrip("/\\") or "."))
        base = os.path.basename(os.path.abspath(dest.rstrip("/\\") or "."))
        #: Where --publish at-end writes, and where the replaced output goes while it is swapped.
        self._staging = os.path.join(parent, f".{base}.batchscore-staging")
        self._old = os.path.join(parent, f".{base}.batchscore-old")
        self.root = self.dest
        schema = self.schema
        self._drop: list[str] = []
        if not self.single:
            # Like the input, a directory output keeps hive columns in its key=value/
            # folders only: readers that infer partitions would see them twice.
            self._drop = [c for c in self.partition_columns if c in schema.names]
            schema = pa.schema([f for f in schema if f.name not in self._drop])
        self._schema = schema.with_metadata({b"batchscore": json.dumps(self.metadata).encode()})
        # Dictionary encoding pays for repeated values (strings, categories), not for
        # float predictions or unique ids, where trying it first only costs time.
        self._dictionary = [
            f.name for f in schema
            if not (pa.types.is_floating(f.type) or pa.types.is_integer(f.type) or pa.types.is_fixed_size_list(f.type))
        ]

    # -- lifecycle ---------------------------------------------------------
    def open(self, shards: list["Shard"]) -> set[str]:
        try:
            return self._open(shards)
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def _open(self, shards: list["Shard"]) -> set[str]:
        inputs = {os.path.realpath(s.path) for s in shards}
        if self.single:
            self._open_single(inputs)
            return set()
        real = os.path.realpath(self.dest)
        if any(p == real or p.startswith(real + os.sep) for p in inputs):
            raise UsageError(f"--output {self.dest} holds input files: choose an --output outside the inputs")
        if os.path.exists(self.dest) and not os.path.isdir(self.dest):
            raise OutputExistsError(
                f"output {self.dest} exists and is not a directory: remove it, or name a .parquet file"
            )
        from ..sources import shard_key

        try:
            self._keys = {s.output_name: (shard_key(s), s.path) for s in shards}
        except OSError as exc:
            raise InputError(f"cannot read input {exc.filename}: {exc.strerror}") from None
        self._recover_publish()
        job_key = self.metadata.get("job_key", "")
        occupied = os.path.isdir(self.dest) and bool(os.listdir(self.dest))
        manifest = load_manifest(self.dest) if occupied else None
        mode = self.if_exists

        if mode == "fail" and occupied:
            raise OutputExistsError(_exists_message(self.dest))
        if mode in ("replace", "append") and occupied and manifest is None:
            raise OutputExistsError(
                f"refusing to {'replace' if mode == 'replace' else 'add to'} {self.dest}: batchscore did not "
                f"create it (no {MANIFEST}); remove it yourself or choose another --output"
            )
        if mode == "append" and self._publish == "at-end":
            raise UsageError(
                "--publish at-end with --if-exists append needs a database output: a directory is "
                "published whole by a rename (use --if-exists fail or replace)"
            )
        if mode == "resume":
            return self._resume(manifest, occupied, job_key)
        if self._publish == "at-end":
            self._clear(self._staging)
            self._new_run(job_key, mode, self._staging, None)
            return set()
        if mode == "replace" and occupied:
            shutil.rmtree(self.dest)
            manifest = None
        self._new_run(job_key, mode, self.dest, manifest)
        return set()

    def _recover_publish(self) -> None:
        """Tidy after a killed --publish at-end: it moves the old output aside, then renames
        the staging directory into place."""
        if not os.path.isdir(self._old):
            return
        if os.path.isdir(self.dest):
            shutil.rmtree(self._old)  # killed after the last rename: the new output is in place
        elif self.if_exists != "resume" or load_manifest(self._staging) is None:
            log.warning(f"warning: restoring {self.dest}, moved aside by a run killed while publishing")
            os.rename(self._old, self.dest)
        # else: --resume publishes the staged run, then removes the old output

    def _open_single(self, inputs: set[str]) -> None:
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
        self._writer = self._new_writer(self._tmp)

    @staticmethod
    def _clear(path: str) -> None:
        if os.path.isdir(path):
            shutil.rmtree(path)

    def _new_run(self, job_key: str, mode: str, root: str, manifest: dict[str, Any] | None) -> None:
        self.root = root
        self._run = RunRecord(self.run_id, job_key, mode, self._publish)
        self._publish_mode = mode
        if manifest is None:
            manifest = {"batchscore_manifest": MANIFEST_VERSION, "runs": [], "shards": {}}
        else:
            self._tidy(root, manifest)
        manifest["runs"].append(self._run.to_dict())
        manifest.update(run_id=self._run.run_id, metadata=self.metadata, started_at=self._run.started_at,
                        complete=False)
        manifest.pop("finished_at", None)
        self._manifest = manifest
        os.makedirs(root, exist_ok=True)
        self._save_manifest()

    def _tidy(self, root: str, manifest: dict[str, Any]) -> None:
        """Before adding to a directory: no _SUCCESS while writing; no leftovers of a killed run."""
        try:
            os.remove(os.path.join(root, SUCCESS))
        except FileNotFoundError:
            pass
        if not self.locked:
            return  # --no-lock: temporary and unrecorded files may be another live run's
        _remove_temp_files(root)
        recorded = set(manifest.get("shards", {}))
        for rel in _data_files(root):
            if rel not in recorded:
                log.warning(f"warning: removing {os.path.join(root, rel)}: a killed run wrote it but never recorded it")
                os.remove(os.path.join(root, rel))

    def _resume(self, manifest: dict[str, Any] | None, occupied: bool, job_key: str) -> set[str]:
        root = self.dest
        staged = load_manifest(self._staging) if os.path.isdir(self._staging) else None
        if staged is not None and staged["runs"]:
            manifest, root, occupied = staged, self._staging, True  # an at-end run, not yet published
        else:
            self._clear(self._staging)
        latest = None
        if manifest is not None:
            # A manifest without runs predates them: its job is unknown, so it cannot be resumed.
            latest = RunRecord(**manifest["runs"][-1]) if manifest["runs"] else RunRecord(
                manifest.get("run_id", "?"), "", "fail", "per-shard", "complete")
        committed = []
        if latest is not None:
            for file, rec in manifest["shards"].items():
                if rec["run_id"] == latest.run_id and os.path.exists(os.path.join(root, file)):
                    committed.append(ShardRecord(**rec))
        unrecorded = manifest is None and occupied and bool(_data_files(self.dest))
        where = self.dest
        resume = resume_point(where, latest, committed, job_key, self._keys, unrecorded_rows=unrecorded)
        if resume.run is None:
            if occupied and manifest is None:
                raise OutputExistsError(
                    f"refusing to write into {self.dest}: batchscore did not create it (no {MANIFEST}); "
                    "remove it yourself or choose another --output"
                )
            if self._publish == "at-end":
                self._new_run(job_key, "fail", self._staging, None)
            else:
                self._new_run(job_key, "fail" if manifest is None else "append", self.dest, manifest)
            return set()
        run = resume.run
        if self.publish is not None and self.publish != run.publish:
            raise UsageError(
                f"--publish {self.publish}: run {run.run_id}, which --resume continues, publishes "
                f"{run.publish}; pass --publish {run.publish}, or --overwrite to start over"
            )
        log.info(f"resume: continuing run {run.run_id} into {self.dest}")
        self.root, self._run, self._publish = root, run, run.publish
        self._publish_mode = run.mode if root == self._staging else "append"
        if root != self._staging and run.publish == "at-end":
            self._publish = "per-shard"  # the staged run was published; new shards go straight in
        run.status, run.finished_at = "running", None
        manifest["runs"][-1] = run.to_dict()
        manifest["complete"] = False
        manifest.pop("finished_at", None)
        self._tidy(root, manifest)
        self._manifest = manifest
        self._save_manifest()
        return set(resume.done)

    def _save_manifest(self) -> None:
        """Write the manifest, merged with what other runs recorded meanwhile
        (--no-lock appends): read, merge and replace under an flock."""
        import fcntl

        path = os.path.join(self.root, MANIFEST)
        guard = os.open(self.root, os.O_RDONLY)  # flock the directory itself: no extra file
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                on_disk = load_manifest(self.root) if os.path.exists(path) else None
            except Exception:  # noqa: BLE001 - an unreadable manifest: ours is the record
                on_disk = None
            if on_disk and on_disk is not self._manifest:
                shards = dict(on_disk.get("shards", {}))
                shards.update(self._manifest.get("shards", {}))
                self._manifest["shards"] = shards
                mine = {r.get("run_id") for r in self._manifest.get("runs", [])}
                others = [r for r in on_disk.get("runs", []) if r.get("run_id") not in mine]
                if others:
                    self._manifest["runs"] = others + list(self._manifest.get("runs", []))
            _atomic_write_text(path, json.dumps(self._manifest, indent=1))
        finally:
            os.close(guard)  # releases the flock

    def _file_for(self, shard: "Shard") -> str:
        """The shard's file: its output name, unless another run's file has it (append)."""
        name = shard.output_name
        rec = self._manifest["shards"].get(name)
        if rec is None or rec["run_id"] == self._run.run_id:
            return name
        stem = name[: -len(".parquet")] if name.endswith(".parquet") else name
        return f"{stem}.{self._run.run_id}.parquet"

    def _start_shard(self, shard: "Shard") -> None:
        final = os.path.join(self.root, self._file_for(shard))
        folder = os.path.dirname(final)
        os.makedirs(folder, exist_ok=True)
        self._tmp = os.path.join(folder, f".{os.path.basename(final)}.tmp-{self.run_id}")
        self._writer = self._new_writer(self._tmp)
        self._current, self._started = shard, time.time()

    def _new_writer(self, path: str) -> pq.ParquetWriter:
        return pq.ParquetWriter(path, self._schema, compression=self.compression, use_dictionary=self._dictionary)

    def write(self, shard: "Shard", batch: pa.RecordBatch) -> None:
        try:
            if not self.single and self._current is not shard:
                self._start_shard(shard)
            if self._drop:
                batch = batch.drop_columns(self._drop)
            if self.single and batch.num_rows:
                self._single_shards.add(shard)
            if batch.num_rows:
                self._buf.append(batch)
                self._buf_rows += batch.num_rows
                self._buf_bytes += batch.nbytes
                if self._buf_rows >= ROW_GROUP_ROWS or self._buf_bytes >= ROW_GROUP_BYTES:
                    self._flush()
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def _flush(self) -> None:
        """Write the buffered batches as one row group (model batches are often
        small; readers prefer row groups of ~100k rows)."""
        if self._buf:
            self._writer.write_table(pa.Table.from_batches(self._buf), row_group_size=self._buf_rows)
        self._buf, self._buf_rows, self._buf_bytes = [], 0, 0

    def commit_shard(self, shard: "Shard", rows: int) -> None:
        if self.single:
            return
        try:
            if self._current is not shard:
                self._start_shard(shard)  # an empty shard still gets its (empty) file
            file = self._file_for(shard)
            self._flush()
            self._writer.close()
            self._writer = None
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            crash_point("after-write")
            final = os.path.join(self.root, file)
            os.replace(self._tmp, final)
            _fsync_dir(os.path.dirname(final))
            crash_point("after-rename")
            self._tmp, self._current = None, None
            self._manifest["shards"][file] = ShardRecord(
                run_id=self._run.run_id, shard=shard.output_name, shard_key=self._keys[shard.output_name][0],
                job_key=self._run.job_key, source=shard.path, rows=rows, attempt=self.run_id,
                started_at=self._started, committed_at=time.time(), file=file,
            ).to_dict()
            self._save_manifest()
            crash_point("after-manifest")
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def close(self) -> None:
        try:
            if self.single:
                self._flush()
                self._writer.close()
                self._writer = None
                os.replace(self._tmp, self.dest)
                self._tmp = None
                return
            self._run.status, self._run.finished_at = "complete", time.time()
            self._manifest["runs"][-1] = self._run.to_dict()
            self._manifest.update(complete=True, finished_at=self._run.finished_at)
            self._save_manifest()
            with open(os.path.join(self.root, SUCCESS), "w"):
                pass
            if self.root == self._staging:
                self._publish_staged()
        except OSError as exc:
            raise os_error(self.dest, exc) from None

    def _publish_staged(self) -> None:
        """Rename the staging directory into place (the old output, if any, moved aside first)."""
        crash_point("before-publish")
        if os.path.isdir(self.dest) and os.listdir(self.dest):
            if self._publish_mode == "fail":
                raise OutputExistsError(
                    f"output {self.dest} appeared while this run was writing; the predictions wait in "
                    f"{self._staging}: pass --overwrite, or remove {self.dest} and rerun with --resume"
                )
            self._clear(self._old)
            os.rename(self.dest, self._old)
            crash_point("mid-publish")
        elif os.path.isdir(self.dest):
            os.rmdir(self.dest)
        os.rename(self._staging, self.dest)
        _fsync_dir(os.path.dirname(os.path.abspath(self.dest)))
        self._clear(self._old)
        self.root = self.dest

    def abort_shard(self, shard: "Shard") -> None:
        if self.single:
            if shard in self._single_shards:
                from ..errors import InputError

                raise InputError(
                    f"shard {shard.path} failed after some of its rows were written to the single file "
                    f"{self.dest}, which is all-or-nothing: write to a directory to skip bad shards"
                )
            return
        if self._current is shard:
            self._buf, self._buf_rows, self._buf_bytes = [], 0, 0
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - the rows are being dropped anyway
                pass
            self._writer = None
            if self._tmp and os.path.exists(self._tmp):
                os.remove(self._tmp)
            self._tmp, self._current = None, None

    def abort(self) -> None:
        self._buf, self._buf_rows, self._buf_bytes = [], 0, 0
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
