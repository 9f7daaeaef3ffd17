"""SQLite output: ``--output sqlite:///relative.db --table NAME`` (or
``sqlite:////absolute/path.db``, SQLAlchemy's spelling), through
adbc-driver-sqlite. Types: integers and booleans INTEGER, floats REAL, strings
and dates/timestamps TEXT (ISO 8601), bytes BLOB, lists JSON TEXT.

SQLite takes one writer at a time. Every transaction starts with ``BEGIN
IMMEDIATE``, which takes the write lock before the first read: a transaction
that read first (SQLite's default, deferred) and then wanted to write would get
"database is locked" at once, as SQLite never waits on a lock upgrade, which
could deadlock. ``BEGIN IMMEDIATE`` waits for another writer (the busy
timeout) for :data:`LOCK_WAIT` seconds; with ``--timeout T``, for T less a
second (T/2 when T is under 2 s), so that this error (exit 4), not the
--timeout watchdog (exit 1), ends a run whose write waited too long.

The quarantine table in the output's own file (``<table>_quarantine``) is a
guest of the output's sink (:mod:`.database`): one connection, one transaction.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import (
    BatchscoreError,
    DataError,
    ExitStatus,
    LockedError,
    MissingDependencyError,
    OutputError,
    OutputExistsError,
    SchemaError,
    UsageError,
)
from ..ledger import SqlLedger
from .database import SEQ, UPSERT_TABLE, Column, DatabaseSink, TableName, json_text, quote, with_status


#: How long to wait for another writer's lock (seconds), without --timeout.
LOCK_WAIT = 60.0
#: The longest abort() waits for the lock to tidy up (drop a table nothing was committed to).
CLEANUP_WAIT = 5.0

#: Sinks writing a SQLite file, by (real path, run id). A second sink of the same run on
#: the same file (the quarantine) joins the first as its guest: two connections would
#: wait on each other's lock.
_WRITING: dict[tuple[str, str], "Sink"] = {}
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def sqlite_path(url: str) -> str:
    """The file of a ``sqlite:///...`` URL (three slashes: relative, four: absolute)."""
    rest = url.split("://", 1)[1]
    if not rest.startswith("/"):
        raise UsageError(
            f"--output {url}: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    path = rest[1:]
    if "?" in path:
        raise UsageError(f"--output {url}: SQLite URL options (?...) are not supported; give just the file")
    if path in ("", ":memory:"):
        raise UsageError(
            f"--output {url}: an in-memory database vanishes when the run ends; name a file, e.g. sqlite:///scores.db"
        )
    return path


def _tz_text(arr: pa.Array) -> pa.Array:
    return pc.strftime(arr.cast(pa.timestamp("us", "UTC")), format="%Y-%m-%dT%H:%M:%SZ")


def affinity(decl: str) -> str:
    """SQLite's type affinity of a declared column type (its documented rules; NONE is BLOB by default)."""
    d = decl.upper()
    if "INT" in d:
        return "INTEGER"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "TEXT"
    if not d:
        return "NONE"  # no declared type: values are stored as given
    if "BLOB" in d:
        return "BLOB"
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "REAL"
    return "NUMERIC"


#: Output type (as created) → affinities of existing columns that take it unchanged.
_TAKES = {
    "INTEGER": ("INTEGER", "NUMERIC", "NONE"),
    "REAL": ("REAL", "NUMERIC", "NONE"),
    "TEXT": ("TEXT", "NONE"),
    "BLOB": ("BLOB", "NONE"),
}


class Sink(DatabaseSink):
    kind = "SQLite"
    extra = "sqlite"

    def __init__(self, dest: str, **kwargs: Any):
        self.path = sqlite_path(dest)
        super().__init__(dest, **kwargs)
        #: Seconds a transaction waits for another writer's lock.
        self.lock_wait = max(self.timeout / 2, self.timeout - 1.0) if self.timeout else LOCK_WAIT
        self._in_tx = False
        self._writing: tuple[str, str] | None = None
        #: A lock wait ran out (abort() then does not wait again).
        self._waited_out = False

    def _normalise(self, t: TableName) -> TableName:
        if t.schema not in (None, "main"):
            raise UsageError(
                f"--table {self.table}: SQLite has no schema {t.schema!r}; give a plain table name"
            )
        return TableName(None, t.name)

    @property
    def dest_key(self) -> str:
        # SQLite matches table names without regard to ASCII case: "Preds" is "preds".
        return self.target.name.translate(_ASCII_LOWER)

    # -- connecting --------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            import adbc_driver_sqlite.dbapi as dbapi
        except ImportError:
            raise MissingDependencyError.for_extra("the SQLite driver (adbc-driver-sqlite)", "sqlite") from None
        if os.path.isdir(self.path):
            raise UsageError(f"--output {self.dest}: {self.path} is a directory; name a database file")
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise with_status(
                OutputError(f"cannot create {parent} for {self.dest}: {exc.strerror}"), ExitStatus.USAGE
            ) from None
        key = (os.path.realpath(self.path), self.run_id)
        host = _WRITING.get(key)
        if host is not None and host.conn is not None:
            return self._join(host)
        # Autocommit as far as the driver knows: transactions are ours (BEGIN IMMEDIATE).
        conn = dbapi.connect(self.path, autocommit=True)
        try:
            self._set_busy_timeout(conn, self.lock_wait)
        except BaseException:
            conn.close()
            raise
        _WRITING[key] = self
        self._writing = key
        return conn

    @staticmethod
    def _set_busy_timeout(conn: Any, seconds: float) -> None:
        cur = conn.cursor()
        try:
            cur.execute(f"PRAGMA busy_timeout = {max(0, round(seconds * 1000))}")
        finally:
            cur.close()

    def _disconnect(self) -> None:
        super()._disconnect()
        self._in_tx = False
        key, self._writing = self._writing, None
        if key is not None and _WRITING.get(key) is self:
            del _WRITING[key]

    # -- transactions: BEGIN IMMEDIATE, so the write lock is waited for, not upgraded to --
    def _execute(self, sql: str) -> None:
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
        finally:
            cur.close()

    def _tx_begin(self) -> None:
        if not self._in_tx:
            self._execute("BEGIN IMMEDIATE")
            self._in_tx = True

    def _tx_commit(self) -> None:
        if self._in_tx:
            self._execute("COMMIT")  # on error (busy) the transaction is still open
            self._in_tx = False

    def _tx_rollback(self) -> None:
        if self._in_tx:
            self._in_tx = False
            try:
                self._execute("ROLLBACK")
            except self._driver_error() as exc:
                # SQLite rolls back by itself after some errors (disk full, I/O).
                if "no transaction is active" not in str(exc):
                    raise

    def _before_cleanup(self) -> None:
        # After a lock wait that ran out, one try: the other writer is still there.
        waited_out = (self._host or self)._waited_out
        self._set_busy_timeout(self.conn, 0 if waited_out else min(self.lock_wait, CLEANUP_WAIT))

    def _make_ledger(self) -> SqlLedger:
        return SqlLedger(
            self._cursor, quote, None,
            param=lambda i: "?",
            ts=lambda i: "strftime('%Y-%m-%dT%H:%M:%fZ', ?, 'unixepoch')",
            ts_type="TEXT",
        )

    def _ingest(self, cur: Any, t: TableName, data: Any, temporary: bool) -> None:
        cur.adbc_ingest(t.name, data, mode="append", temporary=temporary)

    # -- types and catalogue -------------------------------------------------------------
    def _column(self, name: str, t: pa.DataType) -> Column:
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_integer(t):
            return Column(name, "INTEGER", pa.int64())
        if pa.types.is_boolean(t):
            return Column(name, "INTEGER", pa.bool_())
        if pa.types.is_floating(t):
            return Column(name, "REAL", pa.float64())
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return Column(name, "TEXT", pa.string())
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            return Column(name, "BLOB", pa.binary())
        if pa.types.is_date(t):
            return Column(name, "TEXT", pa.date32())
        if pa.types.is_timestamp(t):
            if t.tz is not None:
                return Column(name, "TEXT", pa.string(), _tz_text)
            return Column(name, "TEXT", t)
        if pa.types.is_decimal(t) or pa.types.is_time(t):
            return Column(name, "TEXT", pa.string())
        if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
                or pa.types.is_struct(t) or pa.types.is_map(t)):
            return Column(name, "TEXT", pa.string(), json_text)
        raise SchemaError(
            f"column {name} is {t}, which a SQLite output cannot store: leave it out (--keep) or cast it upstream"
        )

    def _table_columns(self, t: TableName) -> list[tuple[str, str]] | None:
        rows = self._sql("SELECT name, type FROM pragma_table_info(?, 'main')", (t.name,))
        return [(n, ty or "") for n, ty in rows] or None

    def _existing(self, want: Column, have_sql: str) -> Column | None:
        if affinity(have_sql) in _TAKES[want.sql]:
            return Column(want.name, have_sql, want.arrow, want.convert)
        return None

    def _unique_keys(self, t: TableName) -> list[set[str]]:
        keys = []
        for name, unique, partial in self._sql(
            'SELECT name, "unique", partial FROM pragma_index_list(?, \'main\')', (t.name,)
        ):
            if unique and not partial:
                cols = self._sql("SELECT name FROM pragma_index_info(?, 'main')", (name,))
                keys.append({c for (c,) in cols})
        pk = self._sql("SELECT name, type FROM pragma_table_info(?, 'main') WHERE pk > 0", (t.name,))
        if len(pk) == 1 and (pk[0][1] or "").upper() == "INTEGER":  # a rowid alias has no index
            keys.append({pk[0][0]})
        return keys

    def _create_temp_upsert(self) -> list[str]:
        return [
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(UPSERT_TABLE)} AS SELECT * FROM main.{self._into.sql()} WHERE 0",
            f"ALTER TABLE temp.{quote(UPSERT_TABLE)} ADD COLUMN {quote(SEQ)} INTEGER",
        ]

    def _temp_upsert_sql(self) -> str:
        return f"temp.{quote(UPSERT_TABLE)}"

    def _create_temp_like(self, name: str) -> str:
        return f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(name)} AS SELECT * FROM main.{self._into.sql()} WHERE 0"

    def _temp_sql(self, name: str) -> str:
        return f"temp.{quote(name)}"

    def _merge_sql(self, into: TableName, source: str, *, ordered: bool) -> str:
        cols = [quote(c.name) for c in self.columns]
        keys = [quote(k) for k in self.upsert_key]
        sets = [f"{c} = excluded.{c}" for c in cols if c not in keys]
        action = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
        order = f" ORDER BY {quote(SEQ)}" if ordered else ""
        # "WHERE true" keeps SQLite from reading ON CONFLICT as a join's ON.
        return (f"INSERT INTO {into.sql()} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM {source} "
                f"WHERE true{order} ON CONFLICT ({', '.join(keys)}) {action}")

    # -- errors --------------------------------------------------------------------------
    def _translate(self, exc: Exception) -> BatchscoreError:
        msg = " ".join(str(exc).split())
        detail = msg.split("] ", 1)[-1] if "[SQLite]" in msg else msg
        low = msg.lower()
        if "database is locked" in low or "database table is locked" in low:
            (self._host or self)._waited_out = True  # the connection's: a guest shares its host's
            return LockedError(
                f"{self.path} is locked by another writer (waited {self.lock_wait:g} s): retry when it is done, "
                "or pass a longer --timeout to wait longer"
            )
        if "readonly" in low or "read-only" in low or "unable to open" in low or "permission" in low:
            return with_status(
                OutputError(f"permission denied writing {self.path}: {detail}: fix its permissions or choose another --output"),
                ExitStatus.USAGE,
            )
        if "not a database" in low:
            return with_status(
                OutputError(f"{self.path} is not a SQLite database: choose another --output"), ExitStatus.USAGE
            )
        if "constraint" in low:
            return DataError(f"{self.where}: {detail}")
        if "already exists" in low:
            return OutputExistsError(f"{self.where}: {detail}")
        return OutputError(f"SQLite error writing {self.where}: {detail}")
