"""The run ledger: which input shards each run committed to an output.

Exactly once per input shard: a shard's rows and its ledger record are
committed together (one database transaction; for Parquet, a file renamed into
place and then recorded in the manifest, which is what counts). A database
output keeps the ledger in three tables next to the predictions:

``batchscore_meta``
    ``name``/``value`` pairs; ``ledger_version`` is the ledger's schema version
    (:data:`LEDGER_VERSION`), which :meth:`SqlLedger.migrate` brings up to date.
``batchscore_runs``
    One row a run and output table: run id, job key, ``--if-exists`` mode,
    ``--publish``, status (``running``/``complete``), start and finish times.
``batchscore_shards``
    One row a committed shard: run id, shard (its output name), shard key,
    job key, source path, rows, the attempt (process run id) that committed it,
    started and committed times. Its primary key (output, run, shard) makes a
    second commit of a shard in one run fail, even with concurrent writers.

A Parquet directory keeps the same records in its manifest.

``--resume`` continues the output's latest run when its job key matches
(:func:`resume_point`), skipping the shards that run committed.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import InputError, OutputExistsError, UsageError

LEDGER_VERSION = 1
META, RUNS, SHARDS = "batchscore_meta", "batchscore_runs", "batchscore_shards"
TABLES = (META, RUNS, SHARDS)


@dataclass
class RunRecord:
    """One run of a job into one output."""

    run_id: str
    job_key: str
    mode: str  # the --if-exists it started with: fail, replace, append (resume starts as fail)
    publish: str  # per-shard or at-end
    status: str = "running"  # running, complete
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ShardRecord:
    """One input shard committed by a run."""

    run_id: str
    shard: str  # Shard.output_name
    shard_key: str  # sources.shard_key when it was read
    job_key: str
    source: str  # the input path
    rows: int
    attempt: str  # run id of the process that committed it (not run_id after --resume)
    started_at: float
    committed_at: float
    file: str | None = None  # Parquet: the file it was written to

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Resume:
    """Where ``--resume`` starts: the run it continues (None: a new run) and
    the shards that run committed, by name."""

    run: RunRecord | None
    done: dict[str, ShardRecord]


def when(t: float | str | dt.datetime | None) -> str:
    """A ledger time for a message."""
    if t is None:
        return "?"
    if isinstance(t, (int, float)):
        t = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    if isinstance(t, dt.datetime):
        return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(t)


def resume_point(
    where: str,
    latest: RunRecord | None,
    committed: Iterable[ShardRecord],
    job_key: str,
    keys: dict[str, tuple[str, str]],
    *,
    unrecorded_rows: bool,
) -> Resume:
    """Decide what ``--resume`` does.

    Args:
        where: the output, for messages (no password).
        latest: the output's latest run, or None when the ledger records none.
        committed: the shards ``latest`` committed.
        job_key: this run's job key.
        keys: this run's shards: output name → (shard key, input path).
        unrecorded_rows: the output holds rows no recorded run explains.

    Raises:
        OutputExistsError: the output holds another job's rows, or rows no run recorded.
        InputError: an input committed earlier has changed since (its shard key differs).
    """
    if latest is None:
        if unrecorded_rows:
            raise OutputExistsError(
                f"output {where} holds rows that no batchscore run recorded, so --resume cannot tell "
                "what is done: pass --if-exists append to add to it, or --overwrite to replace it"
            )
        return Resume(None, {})
    if latest.job_key != job_key:
        raise OutputExistsError(
            f"output {where} was last written by run {latest.run_id}, a different job (the model, "
            "features, --keep, --where or output columns differ): --resume would mix the two; "
            "pass --overwrite to start over, or --if-exists append to add this job's rows"
        )
    done = {r.shard: r for r in committed}
    for name, rec in done.items():
        if name in keys and keys[name][0] != rec.shard_key:
            raise InputError(
                f"input {keys[name][1]} changed after run {latest.run_id} committed its {rec.rows:,} rows "
                f"to {where} at {when(rec.committed_at)}: those predictions are stale; pass --overwrite "
                "to score everything again, or restore the file"
            )
    return Resume(latest, done)


class SqlLedger:
    """The ledger tables of one database schema, on an open DB-API connection.

    The caller owns the transaction: every method but :meth:`migrate` runs
    inside the caller's current transaction, so a shard's record commits with
    its rows.

    Args:
        cursor: a function returning a fresh DB-API cursor.
        quote: quotes one identifier.
        schema: the schema holding the tables (None: the connection's default).
        param: the placeholder for the i-th (1-based) parameter.
        ts: an SQL expression turning the i-th parameter (epoch seconds) into a time.
        ts_type: the SQL type of times.
        lock: SQL that serialises migrations across connections, or None.
    """

    def __init__(
        self,
        cursor: Callable[[], Any],
        quote: Callable[[str], str],
        schema: str | None,
        *,
        param: Callable[[int], str],
        ts: Callable[[int], str],
        ts_type: str,
        lock: str | None = None,
    ):
        self._cursor, self._quote, self.schema = cursor, quote, schema
        self._param, self._ts, self._ts_type, self._lock = param, ts, ts_type, lock

    def name(self, table: str) -> str:
        return (self._quote(self.schema) + "." if self.schema else "") + self._quote(table)

    def _run(self, sql: str, params: tuple = ()) -> list[tuple]:
        cur = self._cursor()
        try:
            cur.execute(sql, params) if params else cur.execute(sql)
            try:
                return cur.fetchall()
            except Exception:  # noqa: BLE001 - statements without a result set
                return []
        finally:
            cur.close()

    # -- schema ------------------------------------------------------------------
    def _migrations(self) -> dict[int, list[str]]:
        t = self._ts_type
        return {
            1: [
                f"CREATE TABLE IF NOT EXISTS {self.name(RUNS)} ("
                "dest TEXT NOT NULL, run_id TEXT NOT NULL, job_key TEXT NOT NULL, mode TEXT NOT NULL, "
                "publish TEXT NOT NULL, status TEXT NOT NULL, batchscore_version TEXT NOT NULL, "
                f"started_at {t} NOT NULL, finished_at {t}, PRIMARY KEY (dest, run_id))",
                f"CREATE TABLE IF NOT EXISTS {self.name(SHARDS)} ("
                "dest TEXT NOT NULL, run_id TEXT NOT NULL, shard TEXT NOT NULL, shard_key TEXT NOT NULL, "
                "job_key TEXT NOT NULL, source TEXT NOT NULL, rows BIGINT NOT NULL, attempt TEXT NOT NULL, "
                f"started_at {t} NOT NULL, committed_at {t} NOT NULL, PRIMARY KEY (dest, run_id, shard))",
            ],
        }

    def version(self) -> int:
        """The ledger's schema version here (0: no ledger yet)."""
        try:
            rows = self._run(f"SELECT value FROM {self.name(META)} WHERE name = 'ledger_version'")
        except Exception:  # noqa: BLE001 - no meta table: no ledger
            return -1
        return int(rows[0][0]) if rows else 0

    def migrate(self, rollback: Callable[[], None], commit: Callable[[], None]) -> None:
        """Create the ledger tables, or bring them to :data:`LEDGER_VERSION`; commits."""
        current = self.version()
        if current < 0:
            rollback()  # the failed SELECT aborted the transaction (PostgreSQL)
        if current >= LEDGER_VERSION:
            if current > LEDGER_VERSION:
                raise UsageError(
                    f"the batchscore ledger in {self.schema or 'this database'} has version {current}, "
                    f"newer than this batchscore understands ({LEDGER_VERSION}): upgrade batchscore"
                )
            return
        if self._lock:
            self._run(self._lock)
        self._run(f"CREATE TABLE IF NOT EXISTS {self.name(META)} (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        current = max(self.version(), 0)  # another process may have migrated meanwhile
        for v in range(current + 1, LEDGER_VERSION + 1):
            for sql in self._migrations()[v]:
                self._run(sql)
        if current < LEDGER_VERSION:
            p = self._param
            self._run(f"DELETE FROM {self.name(META)} WHERE name = 'ledger_version'")
            self._run(f"INSERT INTO {self.name(META)} (name, value) VALUES ({p(1)}, {p(2)})",
                      ("ledger_version", str(LEDGER_VERSION)))
        commit()

    # -- runs --------------------------------------------------------------------
    def latest_run(self, dest: str) -> RunRecord | None:
        rows = self._run(
            f"SELECT run_id, job_key, mode, publish, status FROM {self.name(RUNS)} "
            f"WHERE dest = {self._param(1)} ORDER BY started_at DESC, run_id DESC LIMIT 1",
            (dest,),
        )
        if not rows:
            return None
        run_id, job_key, mode, publish, status = rows[0]
        return RunRecord(run_id, job_key, mode, publish, status)

    def shards(self, dest: str, run_id: str) -> list[ShardRecord]:
        p = self._param
        rows = self._run(
            f"SELECT shard, shard_key, job_key, source, rows, attempt, started_at, committed_at "
            f"FROM {self.name(SHARDS)} WHERE dest = {p(1)} AND run_id = {p(2)}",
            (dest, run_id),
        )
        return [ShardRecord(run_id, s, k, j, src, int(n), a, st, ct) for s, k, j, src, n, a, st, ct in rows]

    def start_run(self, dest: str, run: RunRecord, version: str) -> None:
        p = self._param
        self._run(
            f"INSERT INTO {self.name(RUNS)} (dest, run_id, job_key, mode, publish, status, batchscore_version, "
            f"started_at) VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)}, {p(6)}, {p(7)}, {self._ts(8)})",
            (dest, run.run_id, run.job_key, run.mode, run.publish, run.status, version, float(run.started_at)),
        )

    def set_status(self, dest: str, run_id: str, status: str) -> None:
        p = self._param
        # Placeholders numbered in order of appearance: SQLite's "?" are positional.
        if status == "complete":
            sql = (f"UPDATE {self.name(RUNS)} SET status = {p(1)}, finished_at = {self._ts(2)} "
                   f"WHERE dest = {p(3)} AND run_id = {p(4)}")
            self._run(sql, (status, time.time(), dest, run_id))
        else:
            sql = (f"UPDATE {self.name(RUNS)} SET status = {p(1)}, finished_at = NULL "
                   f"WHERE dest = {p(2)} AND run_id = {p(3)}")
            self._run(sql, (status, dest, run_id))

    def forget(self, dest: str, *, except_run: str | None = None) -> None:
        """Delete the records of ``dest`` (its table was dropped or replaced)."""
        p = self._param
        for table in (SHARDS, RUNS):
            if except_run is None:
                self._run(f"DELETE FROM {self.name(table)} WHERE dest = {p(1)}", (dest,))
            else:
                self._run(f"DELETE FROM {self.name(table)} WHERE dest = {p(1)} AND run_id <> {p(2)}",
                          (dest, except_run))

    def forget_run(self, dest: str, run_id: str) -> None:
        """Delete one run's records (it was abandoned before committing anything)."""
        p = self._param
        for table in (SHARDS, RUNS):
            self._run(f"DELETE FROM {self.name(table)} WHERE dest = {p(1)} AND run_id = {p(2)}", (dest, run_id))

    def record_shard(self, dest: str, rec: ShardRecord) -> bool:
        """Record a committed shard; False when this run already has it (another writer won)."""
        p = self._param
        rows = self._run(
            f"INSERT INTO {self.name(SHARDS)} (dest, run_id, shard, shard_key, job_key, source, rows, attempt, "
            f"started_at, committed_at) VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)}, {p(5)}, {p(6)}, {p(7)}, {p(8)}, "
            f"{self._ts(9)}, {self._ts(10)}) ON CONFLICT DO NOTHING RETURNING shard",
            (dest, rec.run_id, rec.shard, rec.shard_key, rec.job_key, rec.source, int(rec.rows), rec.attempt,
             float(rec.started_at), float(rec.committed_at)),
        )
        return bool(rows)
