"""Output sinks. A sink has a lifecycle (after Ray Data's datasinks):

``open()`` checks ``--if-exists`` and prepares the destination;
``write(shard, batch)`` takes a shard's rows in order; ``commit_shard(shard)``
makes that shard's rows durable and visible, together with its ledger record
(exactly once per input shard); ``close()`` publishes the run (``_SUCCESS``,
a rename, a staging table swapped in); ``abort()`` removes what is not
committed. Sinks are chosen by URL scheme; a plain path is Parquet.
"""

from __future__ import annotations

import errno
import importlib
import os
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from ..sources import Shard

#: URL scheme → module in this package.
SCHEMES = {"file": "parquet", "sqlite": "sqlite", "postgresql": "postgres", "postgres": "postgres"}
#: How each run publishes its rows (--publish).
PUBLISH = ("per-shard", "at-end")


class Sink(ABC):
    """Base class of output destinations."""

    def __init__(
        self,
        dest: str,
        *,
        schema: "pa.Schema",
        if_exists: str,
        run_id: str,
        metadata: dict[str, Any],
        partition_columns: tuple[str, ...] = (),
        table: str | None = None,
        upsert_key: tuple[str, ...] = (),
        publish: str | None = None,
        locked: bool = True,
        timeout: float | None = None,
    ):
        self.dest = dest
        #: --timeout: seconds one output write may take (None: no limit). A SQLite
        #: output waits for another writer's lock for a share of it.
        self.timeout = timeout
        #: False with --no-lock: other runs may be writing here at the same time.
        self.locked = locked
        #: Columns that come from hive-style folders (a file sink keeps them in the path).
        self.partition_columns = tuple(partition_columns)
        self.schema = schema
        self.if_exists = if_exists
        self.run_id = run_id
        self.metadata = metadata
        #: --table, for database sinks.
        self.table = table
        #: --upsert-key: columns that identify a row; writes become upserts.
        self.upsert_key = tuple(upsert_key)
        #: --publish: "per-shard" (each shard visible as it commits) or "at-end";
        #: None: per-shard, or what the run being resumed used.
        self.publish = publish

    @abstractmethod
    def open(self, shards: list["Shard"]) -> set[str] | None:
        """Check --if-exists and prepare the destination.

        Returns the ``output_name`` of shards already committed by an earlier
        run of the same job (``--if-exists resume``): the pipeline skips them.
        """

    @abstractmethod
    def write(self, shard: "Shard", batch: "pa.RecordBatch") -> None:
        """Write rows of one shard (called in the shard's row order)."""

    @abstractmethod
    def commit_shard(self, shard: "Shard", rows: int) -> None:
        """Make the shard's rows durable and visible."""

    @abstractmethod
    def close(self) -> None:
        """Publish the whole run."""

    @abstractmethod
    def abort(self) -> None:
        """Remove whatever was not committed."""

    def abort_shard(self, shard: "Shard") -> None:
        """Drop the uncommitted rows of a shard that failed part-way
        (``--on-error skip|quarantine``); the run goes on with the next shard."""
        from ..errors import InputError

        raise InputError(
            f"shard {shard.path} failed part-way and {self.describe()} cannot drop its rows: "
            "fix or remove the shard"
        )

    def describe(self) -> str:
        """The destination as it may be shown: in logs, the summary, errors (no password)."""
        return self.mask(self.dest)

    @classmethod
    def mask(cls, dest: str) -> str:
        """``dest`` with any secret in it replaced by ``***``."""
        return dest


def describe(dest: str) -> str:
    """``--output`` as it may be shown (a database password masked)."""
    return sink_class(dest).mask(dest)


def scheme_of(dest: str) -> str:
    return dest.split("://", 1)[0].lower() if "://" in dest else "file"


def sink_class(dest: str) -> type[Sink]:
    scheme = scheme_of(dest)
    module = SCHEMES.get(scheme)
    if module is None:
        shown = dest.split("://", 1)[0] + "://..."  # the rest may hold a password
        raise UsageError(
            f"--output {shown}: unknown destination scheme {scheme!r}; use a path (Parquet), "
            "sqlite:///FILE.db or postgresql://USER@HOST/DB"
        )
    return importlib.import_module(f".{module}", __name__).Sink


def os_error(dest: str, exc: OSError) -> OutputError:
    """An OSError while writing, as a one-line error with the right exit code."""
    why = exc.strerror or str(exc)
    where = exc.filename or dest
    err = OutputError(f"cannot write output {where}: {why}: choose another --output or fix its permissions")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        from ..errors import ExitStatus

        err.exit_status = ExitStatus.USAGE  # a retry will not fix permissions
    return err


_crash_counts: dict[str, int] = {}


def crash_point(name: str) -> None:
    """Test-only fault injection: ``BATCHSCORE_TEST_CRASH_AT=NAME[@N]`` kills
    this process with SIGKILL the N-th time (default: the first) a run reaches
    the point ``NAME``, e.g. ``after-copy`` (a shard's rows sent, not committed).

    Points: ``after-copy``, ``before-commit``, ``after-commit`` (databases),
    ``after-write``, ``after-rename``, ``after-manifest`` (Parquet),
    ``before-publish``, ``mid-publish`` (``--publish at-end``). Documented in
    docs/databases.md; never set it outside tests.
    """
    want = os.environ.get("BATCHSCORE_TEST_CRASH_AT")
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] == int(nth or 1):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
