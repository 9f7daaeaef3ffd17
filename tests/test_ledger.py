"""The run ledger: what --resume decides from it, and its tables (created,
migrated with a schema version, one commit of a shard per run) on SQLite
and PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from batchscore.errors import InputError, OutputExistsError, UsageError
from batchscore.ledger import LEDGER_VERSION, RunRecord, ShardRecord, SqlLedger, resume_point
from batchscore.sinks.database import quote
from tests import pg

KEYS = {"a.parquet": ("ka", "in/a.parquet"), "b.parquet": ("kb", "in/b.parquet")}


def shard(name: str, key: str, run_id: str = "r1", rows: int = 5) -> ShardRecord:
    return ShardRecord(run_id, name, key, "job", f"in/{name}", rows, run_id, 1.0, 1_700_000_000.0)


# -- what --resume decides ------------------------------------------------------------------
def test_nothing_recorded_and_nothing_there_starts_a_new_run():
    r = resume_point("out", None, [], "job", KEYS, unrecorded_rows=False)
    assert (r.run, r.done) == (None, {})


def test_rows_no_run_recorded_are_refused():
    with pytest.raises(OutputExistsError) as info:
        resume_point("out", None, [], "job", KEYS, unrecorded_rows=True)
    assert str(info.value) == (
        "output out holds rows that no batchscore run recorded, so --resume cannot tell what is done: "
        "pass --if-exists append to add to it, or --overwrite to replace it"
    )


def test_a_run_of_another_job_is_refused():
    run = RunRecord("r1", "other-job", "fail", "per-shard")
    with pytest.raises(OutputExistsError, match="was last written by run r1, a different job"):
        resume_point("out", run, [], "job", KEYS, unrecorded_rows=False)


def test_committed_shards_are_skipped():
    run = RunRecord("r1", "job", "fail", "per-shard")
    r = resume_point("out", run, [shard("a.parquet", "ka")], "job", KEYS, unrecorded_rows=False)
    assert r.run is run and set(r.done) == {"a.parquet"}


def test_a_changed_shard_is_an_error():
    run = RunRecord("r1", "job", "fail", "per-shard")
    with pytest.raises(InputError) as info:
        resume_point("out", run, [shard("b.parquet", "old-key", rows=7)], "job", KEYS, unrecorded_rows=False)
    assert str(info.value) == (
        "input in/b.parquet changed after run r1 committed its 7 rows to out at 2023-11-14 22:13:20 UTC: "
        "those predictions are stale; pass --overwrite to score everything again, or restore the file"
    )
    assert info.value.exit_status == 2


def test_a_committed_shard_no_longer_in_the_inputs_is_kept():
    run = RunRecord("r1", "job", "fail", "per-shard")
    r = resume_point("out", run, [shard("gone.parquet", "k")], "job", KEYS, unrecorded_rows=False)
    assert set(r.done) == {"gone.parquet"}


# -- the tables ---------------------------------------------------------------------------------
def sqlite_ledger(path):
    import adbc_driver_sqlite.dbapi as dbapi

    conn = dbapi.connect(str(path))
    led = SqlLedger(conn.cursor, quote, None, param=lambda i: "?",
                    ts=lambda i: "strftime('%Y-%m-%dT%H:%M:%fZ', ?, 'unixepoch')", ts_type="TEXT")
    return conn, led


def pg_ledger(server, db, schema=None):
    conn = server.connect(db)
    led = SqlLedger(conn.cursor, quote, schema, param=lambda i: f"${i}", ts=lambda i: f"to_timestamp(${i})",
                    ts_type="TIMESTAMPTZ", lock="SELECT pg_advisory_xact_lock(1)")
    return conn, led


def exercise(conn, led):
    assert led.version() == -1
    conn.rollback()
    led.migrate(conn.rollback, conn.commit)
    assert led.version() == LEDGER_VERSION
    led.migrate(conn.rollback, conn.commit)  # a second time: nothing to do
    assert led.latest_run("t") is None
    led.start_run("t", RunRecord("r1", "job", "fail", "per-shard", started_at=100.0), "0.1")
    led.start_run("t", RunRecord("r2", "job", "append", "at-end", started_at=200.0), "0.1")
    led.start_run("u", RunRecord("r3", "job", "fail", "per-shard", started_at=300.0), "0.1")
    conn.commit()
    assert led.latest_run("t").run_id == "r2"
    assert led.record_shard("t", shard("a.parquet", "ka", "r2")) is True
    assert led.record_shard("t", shard("a.parquet", "ka", "r2")) is False  # once per run
    assert led.record_shard("t", shard("a.parquet", "ka", "r1")) is True
    conn.commit()
    assert [(s.shard, s.shard_key, s.rows) for s in led.shards("t", "r2")] == [("a.parquet", "ka", 5)]
    led.set_status("t", "r2", "complete")
    assert (led.latest_run("t").status) == "complete"
    led.set_status("t", "r2", "running")
    led.forget("t", except_run="r2")
    assert [s.run_id for s in led.shards("t", "r1")] == []
    led.forget("t")
    conn.commit()
    assert led.latest_run("t") is None and led.latest_run("u").run_id == "r3"


def test_sqlite_ledger(tmp_path):
    conn, led = sqlite_ledger(tmp_path / "l.db")
    try:
        exercise(conn, led)
    finally:
        conn.close()


def test_postgres_ledger():
    server = pg.server()
    db = server.new_db()
    conn, led = pg_ledger(server, db)
    try:
        exercise(conn, led)
    finally:
        conn.close()


def test_a_newer_ledger_is_refused(tmp_path):
    conn, led = sqlite_ledger(tmp_path / "l.db")
    try:
        led.migrate(conn.rollback, conn.commit)
        cur = conn.cursor()
        cur.execute("UPDATE batchscore_meta SET value = '99' WHERE name = 'ledger_version'")
        cur.close()
        conn.commit()
        with pytest.raises(UsageError) as info:
            led.migrate(conn.rollback, conn.commit)
        assert str(info.value) == (
            f"the batchscore ledger in this database has version 99, newer than this batchscore understands "
            f"({LEDGER_VERSION}): upgrade batchscore"
        )
    finally:
        conn.close()


def test_concurrent_migrations_on_postgresql():
    server = pg.server()
    db = server.new_db()
    server.execute('CREATE SCHEMA "S"', db)
    errors = []

    def migrate():
        conn, led = pg_ledger(server, db, "S")
        try:
            led.migrate(conn.rollback, conn.commit)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert server.query('SELECT value FROM "S".batchscore_meta', db) == [(str(LEDGER_VERSION),)]
