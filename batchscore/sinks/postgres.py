"""PostgreSQL output: ``--output postgresql://user[:password]@host[:port]/db
--table [schema.]NAME``, through adbc-driver-postgresql (binary COPY).

The URL is libpq's, so ``?host=/run/postgresql`` (a unix socket), ``sslmode``
and the ``PG*`` variables (``PGPASSWORD``, ``PGHOST``, ~/.pgpass) work as in
psql. A password is never shown: :meth:`Sink.mask` replaces it with ``***``.

A run holds a session-level advisory lock on its table for its whole life
(:func:`run_lock_key`, on a connection of its own, so no transaction ends it):
a second run into the same table exits 4 naming the holder's session. The
server releases it when that session ends, so a run killed with SIGKILL leaves
no stale lock. ``--no-lock`` takes none.

Types: smallint/integer/bigint, real/double precision, boolean, text, bytea,
date, timestamp[tz], time, interval, numeric(p,s); one-dimensional lists as
arrays (``real[]``); deeper lists, structs and maps as JSON text.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from urllib.parse import quote as url_quote

import pyarrow as pa

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
from .database import SEQ, UPSERT_TABLE, Column, DatabaseSink, TableName, json_text, quote, widens, with_status

#: Serialises ledger migrations across connections (pg_advisory_xact_lock key).
MIGRATION_LOCK = 0x6273_6C65  # "bsle"
#: The first key of every run lock, pg_try_advisory_lock(RUN_LOCK_CLASS, <table>): "bslk".
RUN_LOCK_CLASS = 0x6273_6C6B

_SCALARS: dict[str, pa.DataType] = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "text": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "timestamp without time zone": pa.timestamp("us"),
    "timestamp with time zone": pa.timestamp("us", "UTC"),
    "time without time zone": pa.time64("us"),
    "interval": pa.duration("us"),
}
_TEXT_RE = re.compile(r"^(character varying|character|varchar|char)(\(\d+\))?$")


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` option) as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # The user part ends at the last "@" before the options: a password may hold "/", "#" or "@".
    q = rest.find("?")
    at = rest.rfind("@", 0, q if q >= 0 else len(rest))
    if at >= 0 and ":" in rest[:at]:
        rest = rest[:at].split(":", 1)[0] + ":***" + rest[at:]
    rest = re.sub(r"([?&]password=)[^&#]*", r"\1***", rest, flags=re.IGNORECASE)
    return f"{scheme}://{rest}"


def secrets_of(url: str) -> list[str]:
    """The password(s) in ``url`` (and PGPASSWORD), raw and decoded, for scrubbing messages."""
    out: list[str] = []
    rest = url.partition("://")[2]
    q = rest.find("?")
    at = rest.rfind("@", 0, q if q >= 0 else len(rest))
    if at >= 0 and ":" in rest[:at]:
        out.append(rest[:at].split(":", 1)[1])
    out += re.findall(r"[?&]password=([^&#]*)", rest, flags=re.IGNORECASE)
    if os.environ.get("PGPASSWORD"):
        out.append(os.environ["PGPASSWORD"])
    return [s for s in {*out, *(unquote(s) for s in out)} if s]


def run_lock_key(database: str, schema: str, table: str) -> tuple[int, int]:
    """The advisory lock (two int4 keys) a run holds on ``schema.table`` in ``database``:
    :data:`RUN_LOCK_CLASS`, and 32 bits of a SHA-256 of the three names (exact, case kept)."""
    digest = hashlib.sha256("\0".join(("batchscore run lock", database, schema, table)).encode()).digest()
    return RUN_LOCK_CLASS, int.from_bytes(digest[:4], "big", signed=True)


#: The sessions holding batchscore run locks in the current database (keys filled in as integers).
_HOLDERS_SQL = (
    "SELECT l.pid, a.application_name, a.usename, host(a.client_addr), "
    "to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') "
    "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.pid <> pg_backend_pid() "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::bigint = {cls}{objid} ORDER BY a.backend_start, l.pid"
)


def _holder_text(row: tuple) -> str:
    """One lock holder's session, as far as the server lets this user see it."""
    pid, app, user, client, since = row
    parts = [f"PostgreSQL session pid {pid}"]
    if app:
        parts.append(f"application_name {app!r}")
    if user:
        parts.append(f"user {user}")
    if since:  # visible: the client address too (none: a unix socket)
        parts.append(f"client {client or 'local socket'}")
        parts.append(f"connected {since} UTC")
    return ", ".join(parts)


class Sink(DatabaseSink):
    kind = "PostgreSQL"
    extra = "postgres"
    max_identifier = 63

    @classmethod
    def mask(cls, dest: str) -> str:
        return mask_url(dest)

    def _scrub(self, text: str) -> str:
        for secret in sorted(secrets_of(self.dest), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    # -- where the server is, for messages -------------------------------------------------
    def _address(self) -> tuple[str, str, str, str]:
        """(host, port, user, database) as libpq will use them."""
        u = urlsplit(self.dest)
        q = dict(parse_qsl(u.query))
        host = u.hostname or q.get("host") or os.environ.get("PGHOST") or "localhost (local socket)"
        try:
            port = u.port
        except ValueError:
            port = None
        port = str(port or q.get("port") or os.environ.get("PGPORT") or 5432)
        user = unquote(u.username or "") or q.get("user") or os.environ.get("PGUSER") or "(the OS user)"
        db = unquote(u.path.lstrip("/")) or q.get("dbname") or os.environ.get("PGDATABASE") or user
        return host, port, user, db

    # -- connecting --------------------------------------------------------------------
    #: The connection holding the run lock (autocommit: no transaction ever ends it).
    _lock_conn: Any = None
    _lock_key: tuple[int, int] | None = None

    def _connect_url(self) -> str:
        """--output with ``application_name=batchscore <run id>`` (unless it or PGAPPNAME sets one), so
        that pg_stat_activity, and a second run's lock error, name the run."""
        if re.search(r"[?&]application_name=", self.dest, flags=re.IGNORECASE) or os.environ.get("PGAPPNAME"):
            return self.dest
        name = f"batchscore {getattr(self, 'run_id', None) or 'unlock'}"[:63]
        return f"{self.dest}{'&' if '?' in self.dest else '?'}application_name={url_quote(name, safe='')}"

    def _connect(self, *, autocommit: bool = False) -> Any:
        try:
            import adbc_driver_postgresql.dbapi as dbapi
        except ImportError:
            raise MissingDependencyError.for_extra(
                "the PostgreSQL driver (adbc-driver-postgresql)", "postgres"
            ) from None
        try:
            return dbapi.connect(self._connect_url(), autocommit=autocommit)
        except self._driver_error() as exc:
            raise self._connect_error(exc) from None

    def _connect_error(self, exc: Exception) -> BatchscoreError:
        host, port, user, db = self._address()
        msg = self._scrub(str(exc))
        reason = msg.split("Failed to connect:", 1)[-1]
        if " failed: " in reason:
            reason = reason.rsplit(" failed: ", 1)[1]
        reason = reason.strip().splitlines()[0] if reason.strip() else msg
        reason = re.sub(r"^FATAL:\s*", "", reason).strip()
        low = reason.lower()
        where = f"{host}:{port}"
        if ("password" in low or "authentication" in low or "pg_hba" in low
                or re.search(r'role ".*" does not exist', low)):
            return with_status(
                OutputError(
                    f"cannot log in to PostgreSQL at {where} as {user}: {reason}: check the user and the password "
                    "(in --output, PGPASSWORD or ~/.pgpass)"
                ),
                ExitStatus.USAGE,
            )
        if re.search(r'database ".*" does not exist', low):
            return with_status(
                OutputError(f"database {db} does not exist on PostgreSQL at {where}: create it, or fix --output"),
                ExitStatus.USAGE,
            )
        return OutputError(
            f"cannot connect to PostgreSQL at {where}: {reason} (is the server running and reachable? "
            f"--output {self.describe()})"
        )

    # -- the run lock --------------------------------------------------------------------
    def _open(self, shards: list) -> set[str]:
        if self.locked:
            self._lock_run()  # before anything is read or written
        return super()._open(shards)

    def _disconnect(self) -> None:
        super()._disconnect()
        conn, self._lock_conn = self._lock_conn, None
        if conn is not None:  # ending the session releases the lock; unlocking first makes it synchronous
            try:
                if self._lock_key is not None:
                    self._query(conn, "SELECT pg_advisory_unlock({}, {})".format(*self._lock_key))
            except Exception:  # noqa: BLE001
                pass
            self._lock_key = None
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    @staticmethod
    def _query(conn: Any, sql: str, params: tuple = ()) -> list[tuple]:
        cur = conn.cursor()
        try:
            cur.execute(sql, params) if params else cur.execute(sql)
            return cur.fetchall()
        finally:
            cur.close()

    def _lock_run(self) -> None:
        """Take the table's run lock on a connection of its own, or raise LockedError
        naming the session that holds it. Released by :meth:`_disconnect` (close, abort,
        a failed open) or by the server when this process dies."""
        self._lock_conn = conn = self._connect(autocommit=True)
        with self._guard():
            if self.target.schema is not None:
                [(db,)] = self._query(conn, "SELECT current_database()")
                schema = self.target.schema
            else:  # where the name resolves (an existing table) or would be created
                [(db, schema)] = self._query(
                    conn,
                    "SELECT current_database(), coalesce((SELECT n.nspname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)), current_schema(), '')",
                    (self.target.sql(),),
                )
            cls, key = run_lock_key(db, schema, self.target.name)
            holders: list[tuple] = []
            # A few tries in 0.7 s: the session of a run killed a moment ago may still be ending.
            for delay in (0.1, 0.2, 0.4, None):
                if self._query(conn, f"SELECT pg_try_advisory_lock({cls}, {key})") == [(True,)]:
                    self._lock_key = (cls, key)
                    return
                holders = self._query(conn, _HOLDERS_SQL.format(cls=cls, objid=f" AND l.objid::bigint = {key % 2 ** 32}"))
                if delay is not None:
                    time.sleep(delay)
            if holders:
                raise LockedError(
                    f"{self.where} is locked by another run ({_holder_text(holders[0])}): wait for that run, "
                    "or pass --no-lock for knowingly parallel appends"
                )
            raise LockedError(f"{self.where} is being locked and unlocked by other runs: try again")

    def _check_schema_exists(self) -> None:
        if self.target.schema is None:
            return
        if not self._sql("SELECT 1 FROM pg_namespace WHERE nspname = $1", (self.target.schema,)):
            _, _, _, db = self._address()
            raise UsageError(
                f"--table {self.target}: schema {self.target.schema!r} does not exist in database {db}: "
                f"create it (CREATE SCHEMA {quote(self.target.schema)}) or fix --table"
            )

    def _make_ledger(self) -> SqlLedger:
        return SqlLedger(
            self.conn.cursor, quote, self.target.schema,
            param=lambda i: f"${i}",
            ts=lambda i: f"to_timestamp(${i})",
            ts_type="TIMESTAMPTZ",
            lock=f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})",
        )

    def _ingest(self, cur: Any, t: TableName, data: Any, temporary: bool) -> None:
        if temporary:
            cur.adbc_ingest(t.name, data, mode="append", temporary=True)
        else:
            cur.adbc_ingest(t.name, data, mode="append", db_schema_name=t.schema)

    # -- types and catalogue -------------------------------------------------------------
    def _scalar(self, t: pa.DataType) -> tuple[str, pa.DataType] | None:
        if pa.types.is_dictionary(t):
            t = t.value_type
        if pa.types.is_int8(t) or pa.types.is_int16(t) or pa.types.is_uint8(t):
            return "smallint", pa.int16()
        if pa.types.is_int32(t) or pa.types.is_uint16(t):
            return "integer", pa.int32()
        if pa.types.is_integer(t):
            return "bigint", pa.int64()
        if pa.types.is_float16(t) or pa.types.is_float32(t):
            return "real", pa.float32()
        if pa.types.is_float64(t):
            return "double precision", pa.float64()
        if pa.types.is_boolean(t):
            return "boolean", pa.bool_()
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return "text", pa.string()
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            return "bytea", pa.binary()
        if pa.types.is_date(t):
            return "date", pa.date32()
        if pa.types.is_timestamp(t):
            if t.tz is not None:
                return "timestamp with time zone", pa.timestamp("us", "UTC")
            return "timestamp without time zone", pa.timestamp("us")
        if pa.types.is_time(t):
            return "time without time zone", pa.time64("us")
        if pa.types.is_duration(t):
            return "interval", pa.duration("us")
        if pa.types.is_decimal128(t):
            return f"numeric({t.precision},{t.scale})", t
        return None

    def _column(self, name: str, t: pa.DataType) -> Column:
        scalar = self._scalar(t)
        if scalar is not None:
            return Column(name, *scalar)
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            inner = self._scalar(t.value_type)
            if inner is not None:
                return Column(name, inner[0] + "[]", pa.list_(inner[1]))
            return Column(name, "text", pa.string(), json_text)  # nested: JSON text
        if pa.types.is_struct(t) or pa.types.is_map(t):
            return Column(name, "text", pa.string(), json_text)
        raise SchemaError(
            f"column {name} is {t}, which a PostgreSQL output cannot store: leave it out (--keep) or cast it upstream"
        )

    def _table_columns(self, t: TableName) -> list[tuple[str, str]] | None:
        rows = self._sql(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid AND c.relkind IN ('r', 'p') "
            "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (t.sql(),),
        )
        return [(n, ty) for n, ty in rows] or None

    @staticmethod
    def _arrow_of(sql: str) -> pa.DataType | None:
        if sql.endswith("[]"):
            inner = Sink._arrow_of(sql[:-2])
            return pa.list_(inner) if inner is not None else None
        if _TEXT_RE.match(sql):
            return pa.string()
        return _SCALARS.get(sql)

    def _existing(self, want: Column, have_sql: str) -> Column | None:
        if have_sql == want.sql:
            return Column(want.name, have_sql, want.arrow, want.convert)
        have = self._arrow_of(have_sql)
        if have is None:
            return None
        if want.convert is not None:  # JSON text goes into any text column
            return Column(want.name, have_sql, pa.string(), want.convert) if have == pa.string() else None
        if widens(want.arrow, have):
            return Column(want.name, have_sql, have)
        return None

    def _unique_keys(self, t: TableName) -> list[set[str]]:
        rows = self._sql(
            "SELECT i.indexrelid::bigint, a.attname FROM pg_index i "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = to_regclass($1) AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL",
            (t.sql(),),
        )
        keys: dict[int, set[str]] = {}
        for idx, col in rows:
            keys.setdefault(idx, set()).add(col)
        return list(keys.values())

    def _create_temp_upsert(self) -> list[str]:
        return [
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(UPSERT_TABLE)} "
            f"(LIKE {self._into.sql()}, {quote(SEQ)} bigint)"
        ]

    def _temp_upsert_sql(self) -> str:
        return f"pg_temp.{quote(UPSERT_TABLE)}"

    def _merge_sql(self, into: TableName, source: str, *, ordered: bool) -> str:
        cols = [quote(c.name) for c in self.columns]
        keys = [quote(k) for k in self.upsert_key]
        sets = [f"{c} = EXCLUDED.{c}" for c in cols if c not in keys]
        action = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
        if ordered:  # the last row of a key wins, as if the rows were upserted one by one
            select = (f"SELECT DISTINCT ON ({', '.join(keys)}) {', '.join(cols)} FROM {source} "
                      f"ORDER BY {', '.join(keys)}, {quote(SEQ)} DESC")
        else:
            select = f"SELECT {', '.join(cols)} FROM {source}"
        return f"INSERT INTO {into.sql()} ({', '.join(cols)}) {select} ON CONFLICT ({', '.join(keys)}) {action}"

    def _after_rename(self, stage: TableName) -> None:
        if self.upsert_key:
            index = self.target.sibling(f"{stage.name}_pkey")
            self._sql(f"ALTER INDEX {index.sql()} RENAME TO {quote(self.target.name[:58] + '_pkey')}")

    # -- errors --------------------------------------------------------------------------
    def _translate(self, exc: Exception) -> BatchscoreError:
        msg = self._scrub(" ".join(str(exc).split()))
        state = getattr(exc, "sqlstate", None) or ""
        m = re.search(r"ERROR:\s+(.*?)(?:\s+(?:CONTEXT|LINE \d+|DETAIL|HINT):|\. SQLSTATE|$)", msg)
        detail = m.group(1).strip() if m else msg
        if "Failed to connect" in msg or state.startswith("08") or "server closed the connection" in msg:
            host, port, _, _ = self._address()
            return OutputError(f"lost the connection to PostgreSQL at {host}:{port}: {detail}: retry (or --resume)")
        if state == "42501":
            return with_status(
                OutputError(
                    f"permission denied writing {self.where}: {detail}: grant the user CREATE on the schema "
                    "and INSERT on the table, or choose another --table"
                ),
                ExitStatus.USAGE,
            )
        if state == "42P07":
            return OutputExistsError(f"{self.where}: {detail}")
        if state == "55P03":
            return LockedError(f"{self.where} is locked by another session: {detail}")
        if state.startswith(("22", "23")):
            return DataError(f"{self.where}: {detail}")
        if state.startswith(("40", "53", "57", "58")):
            return OutputError(f"PostgreSQL could not write {self.where}: {detail}: retry (or --resume)")
        return OutputError(f"PostgreSQL error writing {self.where}: {detail}")


def unlock(url: str) -> str:
    """``batchscore unlock postgresql://...``: a run lock cannot be removed by hand, it ends
    with the session holding it. Returns "not locked" when no batchscore run holds one in
    the database; otherwise raises LockedError naming the sessions, and how to end one."""
    probe = Sink.__new__(Sink)  # only its connecting half: no table, no schema
    probe.dest = url
    conn = probe._connect(autocommit=True)
    try:
        [(db,)] = probe._query(conn, "SELECT current_database()")
        holders = probe._query(conn, _HOLDERS_SQL.format(cls=RUN_LOCK_CLASS, objid=""))
    except probe._driver_error() as exc:
        why = probe._scrub(" ".join(str(exc).split()))
        raise OutputError(f"cannot read the locks of {probe.describe()}: {why}") from None
    finally:
        conn.close()
    if not holders:
        return (
            f"{probe.describe()}: no batchscore run holds a lock in database {db} (a run's lock ends with "
            "its session, so a killed run leaves none): nothing to unlock"
        )
    sessions = "; ".join(_holder_text(h) for h in holders)
    raise LockedError(
        f"{probe.describe()}: batchscore run lock(s) in database {db} held by {sessions}: a PostgreSQL run lock "
        "ends with the session holding it and cannot be removed by hand; wait for that run, or if its machine is "
        f"gone end the session: SELECT pg_terminate_backend({holders[0][0]})"
    )
