"""The one error hierarchy of batchscore and its exit codes.

Every error a user can cause is a :class:`BatchscoreError` subclass whose
message is one line saying what is wrong and how to fix it. The CLI prints
that line and exits with the class's ``exit_status``; anything else is a bug
(exit 70, with a traceback).
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes. Documented in README.md; schedulers branch on them.

    99 is never used: Airflow reads it as "skip".
    """

    SUCCESS = 0
    #: The run failed and a retry may help (I/O, database, out of memory).
    RETRYABLE = 1
    #: Usage, config, model, schema or corrupt input: a retry will not fix it.
    USAGE = 2
    #: Finished, but rows or shards were skipped or quarantined.
    PARTIAL = 3
    #: The output is locked by another run.
    LOCKED = 4
    #: An internal error (a bug).
    INTERNAL = 70
    #: Interrupted by SIGINT or SIGTERM; the run can be resumed.
    INTERRUPTED = 130


class BatchscoreError(Exception):
    """Base of every error batchscore reports to a user."""

    exit_status: ExitStatus = ExitStatus.USAGE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line of printable text, always
        text = " ".join(self.message.split())
        return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


class UsageError(BatchscoreError):
    """A flag, option or config value is invalid."""


class ConfigError(UsageError):
    """The TOML config file or an environment variable is invalid."""


class NoInputError(UsageError):
    """The inputs match no file."""


class InputError(BatchscoreError):
    """An input shard is corrupt, truncated, unreadable or has an unexpected schema."""


class SchemaError(BatchscoreError):
    """Columns are missing, of the wrong type, or shards disagree."""


class ModelError(BatchscoreError):
    """The model is missing, unreadable, or does not fit the features."""


class DeviceError(BatchscoreError):
    """The requested device is not available."""


class OutputExistsError(BatchscoreError):
    """The output exists and --if-exists does not allow writing to it."""


class OutputError(BatchscoreError):
    """The output cannot be written (permissions, disk, database). A retry may help."""

    exit_status = ExitStatus.RETRYABLE


class DataError(BatchscoreError):
    """Rows hold values the model cannot take (nulls, NaN, unparsable cells)."""


class LockedError(BatchscoreError):
    """Another run holds the output's lock."""

    exit_status = ExitStatus.LOCKED


class Interrupted(BatchscoreError):
    """The run was stopped by SIGINT or SIGTERM."""

    exit_status = ExitStatus.INTERRUPTED


class MissingDependencyError(UsageError):
    """An optional dependency is not installed."""

    @classmethod
    def for_extra(cls, what: str, extra: str) -> "MissingDependencyError":
        return cls(f"{what} is not installed: pip install 'batchscore[{extra}]'")


class TooManyErrors(BatchscoreError):
    """More rows were bad than --max-errors / --max-error-rate allow."""

    exit_status = ExitStatus.RETRYABLE
