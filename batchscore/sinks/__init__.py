"""Output sinks. A sink has a lifecycle (after Ray Data's datasinks):

``open()`` checks ``--if-exists`` and prepares the destination;
``write(shard, batch)`` takes a shard's rows in order; ``commit_shard(shard)``
makes that shard's rows durable and visible; ``close()`` publishes the run
(``_SUCCESS``, a rename); ``abort()`` removes what is not committed.
Sinks are chosen by URL scheme; a plain path is Parquet.
"""

from __future__ import annotations

import errno
import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from ..errors import OutputError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from ..sources import Shard

#: URL scheme → module in this package.
SCHEMES = {"file": "parquet"}


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
    ):
        self.dest = dest
        #: Columns that come from hive-style folders (a file sink keeps them in the path).
        self.partition_columns = tuple(partition_columns)
        self.schema = schema
        self.if_exists = if_exists
        self.run_id = run_id
        self.metadata = metadata

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

    def describe(self) -> str:
        return self.dest


def scheme_of(dest: str) -> str:
    return dest.split("://", 1)[0].lower() if "://" in dest else "file"


def sink_class(dest: str) -> type[Sink]:
    scheme = scheme_of(dest)
    module = SCHEMES.get(scheme)
    if module is None:
        raise UsageError(f"--output {dest}: unknown destination scheme {scheme!r}; use a path (Parquet)")
    return importlib.import_module(f".{module}", __name__).Sink


def os_error(dest: str, exc: OSError) -> OutputError:
    """An OSError while writing, as a one-line error with the right exit code."""
    why = exc.strerror or str(exc)
    where = exc.filename or dest
    err = OutputError(f"cannot write output {where}: {why}: choose another --output or fix its permissions")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR):
        from ..errors import ExitStatus

        err.exit_status = ExitStatus.USAGE  # a retry will not fix permissions
    return err
