"""Database outputs: what the SQLite and PostgreSQL sinks share.

Rows go in through ADBC's Arrow-native bulk ingest (PostgreSQL: binary COPY),
streamed: the first batch of a shard starts one ingest on a background thread
that reads batches from a bounded queue, so the database works while the model
scores the next batch. Each input shard is one transaction: its rows and its
ledger record (:mod:`batchscore.ledger`) commit together, so a crash at any
moment leaves a shard either fully committed or absent.

``--publish at-end`` writes into a staging table next to the target
(``batchscore_stage_<hash>``) and swaps or merges it in with one transaction
when the run ends. ``--upsert-key`` sends a shard's rows to a temporary table
and merges them with ``INSERT ... ON CONFLICT (key) DO UPDATE``.

A dialect module (``sqlite.py``, ``postgres.py``) fills in connecting, SQL
types, catalogue queries, transactions and error messages.

A sink may be a *guest* of another sink of the same run (SQLite: the
quarantine table in the output's own file, which takes one writer at a time):
it writes through its host's connection and transactions, so a shard's
quarantined rows, its predictions and both ledger records commit together,
and the two sinks never wait on each other's lock.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
from abc import abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .. import ledger as ledger_mod
from .._version import __version__
from ..errors import (
    BatchscoreError,
    DataError,
    ExitStatus,
    InputError,
    OutputError,
    OutputExistsError,
    SchemaError,
    UsageError,
)
from ..ledger import Resume, RunRecord, ShardRecord, SqlLedger, resume_point
from ..report import log
from . import PUBLISH, Sink, crash_point

if TYPE_CHECKING:
    from ..sources import Shard

STAGE_PREFIX = "batchscore_stage_"
UPSERT_TABLE = "batchscore_upsert"
GUEST_TABLE = "batchscore_guest"
SEQ = "__batchscore_seq"


# -- names ------------------------------------------------------------------------
def quote(ident: str) -> str:
    """One SQL identifier, quoted: case and every character kept, nothing executed."""
    return '"' + ident.replace('"', '""') + '"'


@dataclass(frozen=True)
class TableName:
    """``--table``: a name, or ``schema.name``; each part is an identifier, quoted as given."""

    schema: str | None
    name: str

    def sql(self) -> str:
        return (quote(self.schema) + "." if self.schema else "") + quote(self.name)

    def sibling(self, name: str) -> "TableName":
        return TableName(self.schema, name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def parse_table(text: str, *, max_bytes: int | None = None) -> TableName:
    """Split ``--table`` into (schema, name); reject what cannot be an identifier."""
    if text is None or not str(text).strip():
        raise UsageError("--table is empty: name the output table, e.g. --table predictions or --table analytics.scores")
    if "\x00" in text:
        raise UsageError(f"--table {text!r} holds a NUL byte: table names cannot")
    parts = text.split(".")
    if len(parts) > 2:
        raise UsageError(
            f"--table {text!r} has {len(parts)} dot-separated parts: give NAME or SCHEMA.NAME "
            "(names with dots are not supported)"
        )
    if any(p == "" for p in parts):
        raise UsageError(f"--table {text!r} has an empty part: give NAME or SCHEMA.NAME")
    if max_bytes is not None:
        for p in parts:
            if len(p.encode()) > max_bytes:
                raise UsageError(
                    f"--table {text!r}: {p!r} is {len(p.encode())} bytes; the database keeps only {max_bytes}"
                )
    schema, name = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    if name in ledger_mod.TABLES or name.startswith(STAGE_PREFIX) or name in (UPSERT_TABLE, GUEST_TABLE):
        raise UsageError(f"--table {text!r}: {name} is batchscore's own bookkeeping table; choose another name")
    return TableName(schema, name)


# -- Arrow conversions ----------------------------------------------------------------
def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _numeric_leaves(t: pa.DataType) -> bool:
    while _is_list(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _json_scalars(arr: pa.Array) -> pa.Array:
    """Numbers or booleans as JSON text; NaN and infinities as Python's json writes them."""
    text = arr.cast(pa.string())
    if pa.types.is_floating(arr.type):
        if pa.types.is_float16(arr.type):
            text = arr.cast(pa.float32()).cast(pa.string())
        text = pc.replace_substring_regex(text, "^nan$", "NaN")
        text = pc.replace_substring_regex(text, "^inf$", "Infinity")
        text = pc.replace_substring_regex(text, "^-inf$", "-Infinity")
    return pc.fill_null(text, "null")


def json_text(arr: pa.Array) -> pa.Array:
    """A list (or struct, or map) column as JSON text, vectorised; nulls stay null."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if _is_list(arr.type) and _numeric_leaves(arr.type):
        if pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
            arr = arr.cast(pa.list_(arr.type.value_type))
        child = arr.values
        child = json_text(child) if _is_list(child.type) else _json_scalars(child)
        if _is_list(arr.values.type):
            child = pc.fill_null(child, "null")
        joined = pc.binary_join(pa.ListArray.from_arrays(arr.offsets, child), ",")
        out = pc.binary_join_element_wise("[", joined, "]", "")
        return pc.if_else(arr.is_null(), pa.scalar(None, pa.string()), out)
    import polars as pl  # strings, structs and maps: polars escapes them properly

    encoded = pl.DataFrame({"v": pl.from_arrow(arr)}).select(pl.struct("v").struct.json_encode()).to_series()
    out = encoded.str.slice(5, encoded.str.len_chars() - 6).to_arrow()  # strip '{"v":' and '}'
    out = out.cast(pa.string())
    return pc.if_else(arr.is_null(), pa.scalar(None, pa.string()), out)


@dataclass
class Column:
    """One output column as a table column: its SQL type and the Arrow type sent for it."""

    name: str
    sql: str
    arrow: pa.DataType  # what the batch is cast to before ingest
    #: Turns the output column into ``arrow`` where a cast cannot (lists → JSON text).
    convert: Callable[[pa.Array], pa.Array] | None = None


_INT_RANK = {pa.int16(): 1, pa.int32(): 2, pa.int64(): 3}


def widens(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether every value of ``src`` fits ``dst`` exactly (an existing column may be wider)."""
    if src == dst:
        return True
    if src in _INT_RANK and dst in _INT_RANK:
        return _INT_RANK[src] <= _INT_RANK[dst]
    if dst == pa.float64() and (src == pa.float32() or src in (pa.int16(), pa.int32())):
        return True
    if _is_list(src) and _is_list(dst):
        return widens(src.value_type, dst.value_type)
    if pa.types.is_timestamp(src) and pa.types.is_timestamp(dst):
        return (src.tz is None) == (dst.tz is None)
    return False


# -- the streaming ingest ------------------------------------------------------------------
_END = object()


class _Aborted(Exception):
    pass


class _Ingest(threading.Thread):
    """One bulk ingest fed from a bounded queue: the database takes rows while the
    pipeline produces the next ones. The caller's transaction is the ingest's."""

    def __init__(self, sink: "DatabaseSink", table: TableName, schema: pa.Schema, temporary: bool):
        super().__init__(name="batchscore-ingest", daemon=True)
        self.sink, self.table, self.schema, self.temporary = sink, table, schema, temporary
        self.q: queue.Queue = queue.Queue(maxsize=sink.queue_batches)
        self.error: BaseException | None = None
        self.start()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self.q.get()
            if item is _END:
                return
            if item is None:
                raise _Aborted("aborted")
            yield item

    def run(self) -> None:
        cur = self.sink.conn.cursor()
        try:
            reader = pa.RecordBatchReader.from_batches(self.schema, self._batches())
            self.sink._ingest(cur, self.table, reader, self.temporary)
        except BaseException as exc:  # noqa: BLE001 - handed to the writer thread
            self.error = exc
        finally:
            try:
                cur.close()
            except Exception:  # noqa: BLE001
                pass

    def _raise(self) -> None:
        raise self.error  # type: ignore[misc]

    def put(self, item: Any) -> None:
        while True:
            if self.error is not None:
                self._raise()
            if not self.is_alive():
                raise RuntimeError("the ingest thread stopped")
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def finish(self) -> None:
        self.put(_END)
        self.join()
        if self.error is not None:
            self._raise()

    def cancel(self) -> None:
        while True:  # make room, then tell the reader to fail the ingest
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        try:
            self.q.put_nowait(None)
        except queue.Full:
            pass
        self.join(timeout=30)


# -- the sink --------------------------------------------------------------------------------
class DatabaseSink(Sink):
    """Base of SQL database outputs. Subclasses implement the dialect hooks."""

    #: The database, for messages ("SQLite", "PostgreSQL").
    kind = "database"
    #: The pip extra that installs the driver.
    extra = ""
    #: Longest identifier the database keeps (bytes), or None.
    max_identifier: int | None = None
    #: Batches queued for the ingest thread (backpressure beyond that).
    queue_batches = 8

    def __init__(self, dest: str, **kwargs: Any):
        super().__init__(dest, **kwargs)
        if not self.table:
            raise UsageError(
                f"--output {self.describe()} is a {self.kind} database: name the table with --table NAME"
            )
        if self.publish is not None and self.publish not in PUBLISH:
            raise UsageError(f"--publish {self.publish!r} is not one of: {', '.join(PUBLISH)}")
        self.target = self._normalise(parse_table(self.table, max_bytes=self.max_identifier))
        names = self.schema.names
        missing = [k for k in self.upsert_key if k not in names]
        if missing:
            raise SchemaError(
                f"--upsert-key {','.join(self.upsert_key)}: no output column {', '.join(missing)}; "
                f"the output has {', '.join(names)} (key columns must be kept: see --keep)"
            )
        self.where = f"table {self.target} in {self.describe()}"
        self.conn: Any = None
        self.ledger: SqlLedger | None = None
        self.columns: list[Column] = []
        self._run: RunRecord | None = None
        self._keys: dict[str, tuple[str, str]] = {}
        self._into: TableName = self.target
        self._publish = "per-shard"
        self._publish_mode = "fail"
        self._current: "Shard | None" = None
        self._started = 0.0
        self._stream: _Ingest | None = None
        self._ingest_schema: pa.Schema | None = None
        self._seq = 0
        #: A table this run created at open; dropped again by abort() when no shard committed.
        self._created: TableName | None = None
        self._commits = 0
        #: A guest's host: the sink whose connection and transactions this one shares.
        self._host: DatabaseSink | None = None
        #: A host's guests, and those with a shard in the transaction now open.
        self._guests: list[DatabaseSink] = []
        self._credit: list[DatabaseSink] = []
        #: A guest's rows of the shard in flight, held until its host's ingest pauses.
        self._held: list[pa.RecordBatch] = []
        self._held_bytes = 0
        #: A guest moved rows of the shard in flight to its temporary table (GUEST_TABLE).
        self._spilled = False

    # -- dialect hooks ------------------------------------------------------------------
    @abstractmethod
    def _connect(self) -> Any:
        """An ADBC DB-API connection (autocommit off), or a translated error."""

    @abstractmethod
    def _column(self, name: str, t: pa.DataType) -> Column:
        """How an output column of Arrow type ``t`` is stored in a new table."""

    @abstractmethod
    def _table_columns(self, t: TableName) -> list[tuple[str, str]] | None:
        """(name, SQL type) of an existing table's columns in order; None when it does not exist."""

    @abstractmethod
    def _existing(self, want: Column, have_sql: str) -> Column | None:
        """How to write ``want`` into an existing column of type ``have_sql``; None: incompatible."""

    @abstractmethod
    def _unique_keys(self, t: TableName) -> list[set[str]]:
        """The column sets of the table's unique indexes."""

    @abstractmethod
    def _make_ledger(self) -> SqlLedger:
        """The ledger in the target's schema."""

    @abstractmethod
    def _ingest(self, cur: Any, t: TableName, data: Any, temporary: bool) -> None:
        """Bulk-append ``data`` (a RecordBatchReader) to ``t``."""

    @abstractmethod
    def _translate(self, exc: Exception) -> BatchscoreError:
        """A driver error as a one-line batchscore error (password masked)."""

    def _normalise(self, t: TableName) -> TableName:
        """The table name as the database sees it; rejects schemas the database cannot have."""
        return t

    @property
    def dest_key(self) -> str:
        """The target as the ledger keys it (``dest``): one key per table."""
        return str(self.target)

    def _check_schema_exists(self) -> None:
        """Fail early when --table names a schema that does not exist."""

    @abstractmethod
    def _create_temp_upsert(self) -> list[str]:
        """SQL creating the temporary table (like the target, plus a sequence column) upserts go through."""

    @abstractmethod
    def _temp_upsert_sql(self) -> str:
        """That temporary table, as SQL."""

    @abstractmethod
    def _merge_sql(self, into: TableName, source: str, *, ordered: bool) -> str:
        """INSERT ... SELECT FROM ``source`` ON CONFLICT (key) DO UPDATE; last row of a key wins."""

    def _create_temp_like(self, name: str) -> str:
        """SQL creating the temporary table ``name`` with the columns of the table written into
        (a guest's rows of a shard wait there when there are too many to hold)."""
        raise NotImplementedError(f"{self.kind} sinks are never guests")

    def _temp_sql(self, name: str) -> str:
        """The temporary table ``name``, as SQL."""
        raise NotImplementedError(f"{self.kind} sinks are never guests")

    # -- transactions ------------------------------------------------------------------
    # Every statement goes through _cursor(), which opens a transaction first when
    # none is open; _commit() and _rollback() end it. A guest uses its host's.
    def _tx_begin(self) -> None:
        """Dialect hook: open a transaction if none is open (default: the driver
        keeps one open itself, autocommit being off)."""

    def _tx_commit(self) -> None:
        self.conn.commit()

    def _tx_rollback(self) -> None:
        self.conn.rollback()

    def _begin(self) -> None:
        if self._host is not None:
            self._host._begin()
        else:
            self._tx_begin()

    def _commit(self) -> None:
        if self._host is not None:
            self._host._commit()
            return
        self._tx_commit()
        for guest in self._credit:
            guest._commits += 1
        self._credit.clear()

    def _rollback(self) -> None:
        if self._host is not None:
            self._host._rollback()
            return
        self._credit.clear()
        for guest in self._guests:
            guest._spilled = False  # what it moved to its temporary table is rolled back too
        self._tx_rollback()

    def _cursor(self) -> Any:
        """A cursor for statements of the current transaction (opened if need be)."""
        self._begin()
        return self.conn.cursor()

    # -- guests --------------------------------------------------------------------------
    # A guest holds a shard's rows until its commit_shard(), which the host's follows at
    # once: the guest's ledger record goes first, so a copy of a shard another writer
    # already committed is discarded, and the host commits both. Past guest_buffer_bytes
    # the rows move to a temporary table (on disk, in the transaction) until then.

    #: Bytes of a shard's rows a guest holds in memory.
    guest_buffer_bytes = 64 << 20

    def _join(self, host: "DatabaseSink") -> Any:
        """Become ``host``'s guest; returns the connection to use (the host's)."""
        if self.upsert_key:
            raise UsageError(
                f"--upsert-key cannot be used for {self.where}, which shares {host.where}'s connection"
            )
        self._host = host
        host._guests.append(self)
        return host.conn

    def _pause_stream(self) -> None:
        """End the ingest in flight (its rows stay in the transaction): the
        connection is free for a guest's statements; the next write starts another."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.finish()

    def _host_quiet(self) -> None:
        """A guest is about to use the connection: its host's ingest ends first."""
        host = self._host
        with host._guard():
            host._pause_stream()

    def _ingest_held(self, into: TableName, temporary: bool) -> None:
        held, self._held, self._held_bytes = self._held, [], 0
        cur = self._cursor()
        try:
            self._ingest(cur, into, pa.RecordBatchReader.from_batches(self._ingest_schema, iter(held)), temporary)
        finally:
            cur.close()

    def _guest_write(self, rows: pa.RecordBatch) -> None:
        self._held.append(rows)
        self._held_bytes += rows.nbytes
        if self._held_bytes >= self.guest_buffer_bytes:
            self._host_quiet()
            with self._guard():
                self._ingest_held(TableName(None, GUEST_TABLE), True)
                self._spilled = True

    def _guest_commit_shard(self, shard: "Shard", rows: int) -> None:
        """The shard's record and rows go into the host's transaction; the
        host's commit_shard, which follows, commits them with its own."""
        self._host_quiet()
        with self._guard():
            if self.ledger.record_shard(self.dest_key, self._shard_record(shard, rows)):
                if self._spilled:
                    cols = ", ".join(quote(c.name) for c in self.columns)
                    self._sql(f"INSERT INTO {self._into.sql()} ({cols}) SELECT {cols} FROM {self._temp_sql(GUEST_TABLE)}")
                if self._held:
                    self._ingest_held(self._into, False)
                self._host._credit.append(self)
            else:
                log.warning(
                    f"warning: shard {shard.path} was committed to {self.where} by another writer of run "
                    f"{self._run.run_id}; this copy of its rows is discarded"
                )
            self._guest_discard()
        self._current = None

    def _guest_discard(self) -> None:
        self._held, self._held_bytes = [], 0
        if self._spilled:
            self._sql(f"DELETE FROM {self._temp_sql(GUEST_TABLE)}")
            self._spilled = False

    def _guest_abort_shard(self) -> None:
        if self._spilled and self.conn is not None:
            self._host_quiet()
            with self._guard():
                self._guest_discard()
        self._held, self._held_bytes, self._spilled = [], 0, False
        self._current = None

    @classmethod
    def _driver_error(cls) -> tuple[type[BaseException], ...]:
        try:
            import adbc_driver_manager
        except ImportError:
            return ()
        return (adbc_driver_manager.Error,)

    # -- helpers ---------------------------------------------------------------------------
    def _sql(self, sql: str, params: tuple = ()) -> list[tuple]:
        cur = self._cursor()
        try:
            cur.execute(sql, params) if params else cur.execute(sql)
            try:
                return cur.fetchall()
            except Exception:  # noqa: BLE001 - no result set
                return []
        finally:
            cur.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Driver errors (and ours raised from the ingest thread) as one-line errors."""
        try:
            yield
        except BatchscoreError:
            raise
        except self._driver_error() as exc:
            raise self._translate(exc) from None
        except OSError as exc:
            raise OutputError(f"cannot write {self.where}: {exc.strerror or exc}") from None

    def _stage_name(self) -> TableName:
        digest = hashlib.sha256(self.dest_key.encode()).hexdigest()[:16]
        return self.target.sibling(STAGE_PREFIX + digest)

    def _has_rows(self, t: TableName) -> bool:
        return bool(self._sql(f"SELECT 1 FROM {t.sql()} LIMIT 1"))

    def _create(self, t: TableName) -> None:
        cols = ", ".join(f"{quote(c.name)} {c.sql}" for c in self.columns)
        if self.upsert_key:
            cols += f", PRIMARY KEY ({', '.join(quote(k) for k in self.upsert_key)})"
        self._sql(f"CREATE TABLE {t.sql()} ({cols})")

    def _plan_columns(self, existing: list[tuple[str, str]] | None, t: TableName) -> None:
        """The columns to write: for a new table, from the output schema; for an
        existing one, matched by name, each widened to the table's type."""
        want = [self._column(f.name, f.type) for f in self.schema]
        if existing is None:
            self.columns = want
        else:
            have = dict(existing)
            problems = []
            missing = [c.name for c in want if c.name not in have]
            extra = [n for n, _ in existing if n not in {c.name for c in want}]
            if missing:
                problems.append(f"it lacks output column(s) {', '.join(missing)}")
            if extra:
                problems.append(f"it has column(s) {', '.join(extra)} that the output does not")
            cols = []
            for c in want:
                if c.name not in have:
                    continue
                got = self._existing(c, have[c.name])
                if got is None:
                    problems.append(f"column {c.name} is {have[c.name]} but the output's is {c.sql}")
                else:
                    cols.append(got)
            if problems:
                raise SchemaError(
                    f"table {t} exists and its columns do not match the output: {'; '.join(problems)}; "
                    "pass --overwrite to replace it, or choose another --table"
                )
            order = [n for n, _ in existing]
            self.columns = sorted(cols, key=lambda c: order.index(c.name))
        fields = [pa.field(c.name, c.arrow) for c in self.columns]
        if self.upsert_key:
            fields.append(pa.field(SEQ, pa.int64()))
        self._ingest_schema = pa.schema(fields)

    def _check_upsert(self, t: TableName) -> None:
        if not self.upsert_key or self._table_columns(t) is None:
            return
        if set(self.upsert_key) not in self._unique_keys(t):
            cols = ", ".join(quote(k) for k in self.upsert_key)
            raise SchemaError(
                f"--upsert-key {','.join(self.upsert_key)}: table {t} has no unique index on exactly those "
                f"columns; create one (CREATE UNIQUE INDEX ON {t.sql()} ({cols})) or pass --overwrite"
            )

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self, shards: list["Shard"]) -> set[str]:
        try:
            with self._guard():
                return self._open(shards)
        except BaseException:
            if self._host is not None and self.conn is not None:
                try:  # a guest's half-done open is in the host's connection: undo it
                    self._rollback()
                except Exception:  # noqa: BLE001
                    pass
            self._disconnect()
            raise

    def _open(self, shards: list["Shard"]) -> set[str]:
        from ..sources import shard_key

        self.conn = self._connect()
        self._check_schema_exists()
        self.ledger = led = self._make_ledger()
        # The transaction starts here, so that waiting for a lock fails here (the
        # ledger reads its version treating any error as "no ledger yet").
        self._begin()
        led.migrate(self._rollback, self._commit)
        try:
            self._keys = {s.output_name: (shard_key(s), s.path) for s in shards}
        except OSError as exc:
            raise InputError(f"cannot read input {exc.filename}: {exc.strerror}") from None
        dest, job_key = self.dest_key, self.metadata.get("job_key", "")
        stage = self._stage_name()
        target_cols = self._table_columns(self.target)
        mode, publish = self.if_exists, self.publish or "per-shard"
        resume = Resume(None, {})

        if mode == "resume":
            latest, stale = led.latest_run(dest), False
            if latest is not None:
                holder = stage if latest.publish == "at-end" and latest.status == "running" else self.target
                if self._table_columns(holder) is None:
                    log.warning(
                        f"warning: the ledger records run {latest.run_id} into {self.where}, but table {holder} "
                        "is gone: starting over"
                    )
                    latest, stale = None, True
            committed = led.shards(dest, latest.run_id) if latest is not None else []
            unrecorded = latest is None and not stale and target_cols is not None and self._has_rows(self.target)
            resume = resume_point(self.where, latest, committed, job_key, self._keys, unrecorded_rows=unrecorded)
            if resume.run is None:
                mode = "append" if target_cols is not None else "fail"
            else:
                run = resume.run
                if self.publish is not None and self.publish != run.publish:
                    raise UsageError(
                        f"--publish {self.publish}: run {run.run_id}, which --resume continues, publishes "
                        f"{run.publish}; pass --publish {run.publish}, or --overwrite to start over"
                    )
                publish = run.publish
        elif mode == "fail" and target_cols is not None:
            raise OutputExistsError(
                f"table {self.target} already exists in {self.describe()}: pass --overwrite to replace it, "
                "--if-exists append to add rows, or --resume to finish an interrupted run"
            )

        self._publish = publish
        self._into = stage if publish == "at-end" else self.target
        if resume.run is None:
            self._start_run(mode, publish, target_cols, stage, dest, job_key)
        else:
            self._continue_run(resume.run, target_cols, stage, dest)
        if self.upsert_key:
            for sql in self._create_temp_upsert():
                self._sql(sql)
        if self._host is not None:
            self._sql(self._create_temp_like(GUEST_TABLE))
        self._commit()
        return set(resume.done)

    def _start_run(self, mode, publish, target_cols, stage, dest, job_key) -> None:
        led = self.ledger
        self._run = RunRecord(self.run_id, job_key, mode, publish)
        self._publish_mode = mode
        if publish == "per-shard":
            if mode == "replace" and target_cols is not None:
                self._sql(f"DROP TABLE {self.target.sql()}")
                target_cols = None
            if target_cols is None or mode == "replace":
                led.forget(dest)  # records of a table that is gone
            self._plan_columns(target_cols, self.target)
            if target_cols is None:
                self._create(self.target)
                self._created = self.target
            self._check_upsert(self.target)
        else:
            if self._table_columns(stage) is not None:
                self._sql(f"DROP TABLE {stage.sql()}")
            if mode == "append" and target_cols is not None:
                # Staged like the target, so the final INSERT ... SELECT needs no casts.
                self._plan_columns(target_cols, self.target)
                self._check_upsert(self.target)
            else:
                self._plan_columns(None, stage)
            self._create(stage)
            self._created = stage
        led.start_run(dest, self._run, __version__)

    def _continue_run(self, run: RunRecord, target_cols, stage, dest) -> None:
        self._run = run
        log.info(f"resume: continuing run {run.run_id} into {self.where}")
        if run.publish == "per-shard":
            self._plan_columns(target_cols, self.target)
            self._check_upsert(self.target)
        elif run.status == "running":
            self._publish_mode = run.mode
            self._plan_columns(self._table_columns(stage), stage)
            self._check_upsert(stage)
        else:  # a complete at-end run: new shards are staged and appended
            self._publish_mode = "append"
            if self._table_columns(stage) is not None:
                self._sql(f"DROP TABLE {stage.sql()}")
            self._plan_columns(target_cols, self.target)
            self._create(stage)
        self.ledger.set_status(dest, run.run_id, "running")

    # -- writing ----------------------------------------------------------------------------
    def _prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = []
        for c in self.columns:
            arr = batch.column(c.name)
            if pa.types.is_dictionary(arr.type):
                arr = arr.dictionary_decode()
            if c.convert is not None:
                arr = c.convert(arr)
            elif arr.type != c.arrow:
                try:
                    arr = arr.cast(c.arrow)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise DataError(
                        f"column {c.name} ({arr.type}) cannot be stored as {c.sql} in {self.where}: "
                        f"{' '.join(str(exc).split())}"
                    ) from None
            arrays.append(arr)
        for k in self.upsert_key:
            nulls = batch.column(k).null_count
            if nulls:
                raise DataError(
                    f"--upsert-key {','.join(self.upsert_key)}: {nulls} row(s) of {self._current.path} have a null "
                    f"{k}; key columns must not be null"
                )
        if self.upsert_key:
            arrays.append(pa.array(range(self._seq, self._seq + batch.num_rows), pa.int64()))
            self._seq += batch.num_rows
        return pa.RecordBatch.from_arrays(arrays, schema=self._ingest_schema)

    def _begin_shard(self, shard: "Shard") -> None:
        self._current, self._started = shard, time.time()

    def write(self, shard: "Shard", batch: pa.RecordBatch) -> None:
        if self._current is not shard:
            self._begin_shard(shard)
        if not batch.num_rows:
            return
        rows = self._prepare(batch)
        if self._host is not None:
            self._guest_write(rows)
            return
        with self._guard():
            if self._stream is None:
                self._begin()  # before the ingest thread uses the connection
                if self.upsert_key:
                    self._stream = _Ingest(self, TableName(None, UPSERT_TABLE), self._ingest_schema, True)
                else:
                    self._stream = _Ingest(self, self._into, self._ingest_schema, False)
            self._stream.put(rows)

    def _shard_record(self, shard: "Shard", rows: int) -> ShardRecord:
        return ShardRecord(
            run_id=self._run.run_id, shard=shard.output_name, shard_key=self._keys[shard.output_name][0],
            job_key=self._run.job_key, source=shard.path, rows=rows, attempt=self.run_id,
            started_at=self._started, committed_at=time.time(),
        )

    def commit_shard(self, shard: "Shard", rows: int) -> None:
        if self._current is not shard:
            self._begin_shard(shard)  # an empty shard still gets its ledger record
        if self._host is not None:
            self._guest_commit_shard(shard, rows)
            return
        with self._guard():
            self._pause_stream()
            crash_point("after-copy")
            if self.upsert_key:
                self._sql(self._merge_sql(self._into, self._temp_upsert_sql(), ordered=True))
                self._sql(f"DELETE FROM {self._temp_upsert_sql()}")
            if not self.ledger.record_shard(self.dest_key, self._shard_record(shard, rows)):
                self._rollback()
                log.warning(
                    f"warning: shard {shard.path} was committed to {self.where} by another writer of run "
                    f"{self._run.run_id}; this copy of its rows is discarded"
                )
            else:
                crash_point("before-commit")
                self._commit()
                self._commits += 1
                crash_point("after-commit")
        self._current = None

    def abort_shard(self, shard: "Shard") -> None:
        """Roll back the shard's transaction: its rows are gone, the run goes on."""
        if self._host is not None:
            self._guest_abort_shard()
            return
        with self._guard():
            if self._stream is not None:
                stream, self._stream = self._stream, None
                stream.cancel()
            self._rollback()
        self._current = None

    def close(self) -> None:
        """Publish the run; a host publishes its guests' runs too, in the same
        transaction (a guest's own close() then has nothing left to do)."""
        if self._host is not None or self.conn is None:
            return
        try:
            for guest in self._guests:
                with guest._guard():
                    guest._finish()
            with self._guard():
                self._finish()
                self._commit()
        finally:
            self._disconnect()

    def _finish(self) -> None:
        if self._publish == "at-end":
            self._publish_staged()
        else:
            self.ledger.set_status(self.dest_key, self._run.run_id, "complete")

    def _publish_staged(self) -> None:
        """Swap the staging table in (fail, replace) or merge it (append), in one transaction."""
        crash_point("before-publish")
        stage, dest = self._into, self.dest_key
        target_cols = self._table_columns(self.target)
        if self._publish_mode in ("fail", "replace") or target_cols is None:
            if target_cols is not None:
                if self._publish_mode == "fail":
                    raise OutputExistsError(
                        f"table {self.target} appeared in {self.describe()} while this run was writing; "
                        f"the predictions wait in {stage}: rerun with --resume --publish at-end after "
                        "dropping it, or with --overwrite"
                    )
                self._sql(f"DROP TABLE {self.target.sql()}")
            self.ledger.forget(dest, except_run=self._run.run_id)
            self._sql(f"ALTER TABLE {stage.sql()} RENAME TO {quote(self.target.name)}")
            self._after_rename(stage)
        else:
            self._plan_columns(target_cols, self.target)
            cols = ", ".join(quote(c.name) for c in self.columns)
            if self.upsert_key:
                self._check_upsert(self.target)
                self._sql(self._merge_sql(self.target, stage.sql(), ordered=False))
            else:
                self._sql(f"INSERT INTO {self.target.sql()} ({cols}) SELECT {cols} FROM {stage.sql()}")
            self._sql(f"DROP TABLE {stage.sql()}")
        self.ledger.set_status(dest, self._run.run_id, "complete")
        crash_point("mid-publish")

    def _after_rename(self, stage: TableName) -> None:
        """Tidy names that followed the staging table (PostgreSQL's key index)."""

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None
        for guest in list(self._guests):  # while the connection they share is open
            guest.abort()
        if self.conn is not None:
            try:
                self._rollback()
                if self._created is not None and self._commits == 0:
                    # Nothing committed: leave the destination as it was, not an empty table.
                    self._before_cleanup()
                    self._sql(f"DROP TABLE {self._created.sql()}")
                    self.ledger.forget_run(self.dest_key, self._run.run_id)
                    self._commit()
            except Exception:  # noqa: BLE001 - cleaning up after a failure
                pass
        self._disconnect()

    def _before_cleanup(self) -> None:
        """Dialect hook: before abort() tidies up (SQLite: wait less for the lock)."""

    def _disconnect(self) -> None:
        conn, self.conn = self.conn, None
        self._held, self._held_bytes = [], 0
        host, self._host = self._host, None
        if host is not None:  # a guest leaves the connection to its host
            if self in host._guests:
                host._guests.remove(self)
            return
        for guest in self._guests:
            guest.conn = None
        self._guests.clear()
        self._credit.clear()
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


def with_status(exc: BatchscoreError, status: ExitStatus) -> BatchscoreError:
    """``exc`` with another exit status (an OutputError a retry will not fix)."""
    exc.exit_status = status
    return exc
