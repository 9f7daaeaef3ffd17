"""The run lock of a PostgreSQL output, against the tests' real server (tests/pg.py).

A run holds ``pg_try_advisory_lock(RUN_LOCK_CLASS, <table>)`` on a connection of
its own for its whole life: a second run into the same table exits 4 at once,
naming the holder's session; the lock goes when the run ends (success, failure,
interrupt) and, the server ending the session, when it is killed with SIGKILL;
``--no-lock`` takes none; ``batchscore unlock postgresql://...`` shows the holder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import batchscore
from batchscore.errors import LockedError
from batchscore.sinks.postgres import RUN_LOCK_CLASS, run_lock_key
from tests import pg
from tests.helpers import spawn, wait_for

FIX = "wait for that run, or pass --no-lock for knowingly parallel appends"


def run_locks(postgres, db: str) -> list[tuple]:
    """(pid, application_name) of the sessions holding a batchscore run lock in ``db``."""
    return postgres.query(
        "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        f"WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.classid::bigint = {RUN_LOCK_CLASS} "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        db,
    )


class Holder:
    """Another session holding a table's run lock, as a run of ``run_id`` would."""

    def __init__(self, postgres, db: str, table: str, schema: str = "public", run_id: str = "first-run"):
        import adbc_driver_postgresql.dbapi as dbapi

        url = postgres.url(db) + f"&application_name=batchscore%20{run_id}"
        self.conn = dbapi.connect(url, autocommit=True)
        cls, key = run_lock_key(db, schema, table)
        [(self.pid, self.since, got)] = self.query(
            "SELECT pg_backend_pid(), to_char(backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), "
            f"pg_try_advisory_lock({cls}, {key}) FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        )
        assert got

    def query(self, sql: str) -> list[tuple]:
        cur = self.conn.cursor()
        try:
            cur.execute(sql)
            return cur.fetchall()
        finally:
            cur.close()

    def text(self, run_id: str = "first-run") -> str:
        return (f"PostgreSQL session pid {self.pid}, application_name 'batchscore {run_id}', user postgres, "
                f"client local socket, connected {self.since} UTC")

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def holder(postgres, pg_db):
    made: list[Holder] = []

    def make(table: str, **kw) -> Holder:
        made.append(Holder(postgres, pg_db, table, **kw))
        return made[-1]

    yield make
    for h in made:
        h.close()


def committed(postgres, db: str) -> int:
    try:
        return postgres.query("SELECT count(*) FROM batchscore_shards", db)[0][0]
    except Exception:  # noqa: BLE001 - no ledger yet
        return 0


@pytest.fixture
def slow(data, model):
    """40 shards of 400 rows and the model: several seconds at --batch-size 1."""
    folder, table = data.shards("in", [400] * 40)
    return folder, table, model


# -- the key -------------------------------------------------------------------------------------------
def test_the_key_is_two_int4_and_tells_tables_apart():
    cls, key = run_lock_key("db", "public", "preds")
    assert cls == RUN_LOCK_CLASS and -2**31 <= key < 2**31
    assert run_lock_key("db", "public", "preds") == (cls, key)  # deterministic, across processes too
    others = {run_lock_key(*names)[1] for names in [("db", "public", "Preds"), ("db", "analytics", "preds"),
                                                    ("db2", "public", "preds"), ("db", "public", "preds2")]}
    assert key not in others and len(others) == 4


# -- a second run -----------------------------------------------------------------------------------------
def test_a_second_run_exits_4_naming_the_holder(cli, scored, postgres, pg_db, holder):
    folder, _, model = scored
    url = postgres.url(pg_db)
    h = holder("preds")
    t0 = time.monotonic()
    msg = cli.fails(folder, "--model", model, "--output", url, "--table", "preds", "--report", "r.json", code=4)
    assert time.monotonic() - t0 < 10
    assert msg == f"table preds in {url} is locked by another run ({h.text()}): {FIX}"
    # Nothing was written: no table, no ledger.
    assert postgres.query("SELECT count(*) FROM pg_class WHERE relname IN ('preds', 'batchscore_runs')", pg_db) == [(0,)]
    # The same table named with its schema is the same lock; another table is not locked.
    msg = cli.fails(folder, "--model", model, "--output", url, "--table", "public.preds", code=4)
    assert msg == f"table public.preds in {url} is locked by another run ({h.text()}): {FIX}"
    cli.run(folder, "--model", model, "--output", url, "--table", "other", "-q")
    assert [pid for pid, _ in run_locks(postgres, pg_db)] == [h.pid]  # the loser left the lock alone


def test_the_lock_of_an_unqualified_name_is_that_of_the_schema_it_resolves_to(cli, scored, postgres, pg_db, holder):
    folder, _, model = scored
    postgres.execute("CREATE SCHEMA analytics", pg_db)
    url = postgres.url(pg_db) + "&options=-csearch_path%3Danalytics"
    h = holder("preds", schema="analytics")
    msg = cli.fails(folder, "--model", model, "--output", url, "--table", "preds", code=4)
    assert h.text() in msg
    cli.run(folder, "--model", model, "--output", postgres.url(pg_db), "--table", "preds", "-q")  # public.preds


def test_a_running_run_blocks_a_second_and_releases_when_done(cli, scored, postgres, pg_db):
    folder, table, model = scored
    url = postgres.url(pg_db)
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "-q")
    # The first run waits for the table, so it is surely still running while the second one starts.
    blocker = postgres.connect(pg_db)
    blocker.cursor().execute("LOCK TABLE preds IN ACCESS EXCLUSIVE MODE")
    first = spawn(folder, "--model", model, "--output", url, "--table", "preds", "--if-exists", "append",
                  "--run-id", "first-run")
    try:
        wait_for(lambda: run_locks(postgres, pg_db) != [], first)
        [(pid, app)] = run_locks(postgres, pg_db)
        assert app == "batchscore first-run"
        msg = cli.fails(folder, "--model", model, "--output", url, "--table", "preds", "--if-exists", "append",
                        code=4)
        assert msg.startswith(f"table preds in {url} is locked by another run (PostgreSQL session pid {pid}, "
                              "application_name 'batchscore first-run', user postgres, client local socket, "
                              "connected 20")
        assert msg.endswith(f" UTC): {FIX}")
        assert first.poll() is None, "the first run must still be running"
        # Its other connection carries the run's name too.
        assert postgres.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'batchscore first-run'", pg_db
        ) == [(2,)]
    finally:
        blocker.rollback()
        blocker.close()
        first.wait(120)
    assert first.returncode == 0, first.stderr.read()
    assert run_locks(postgres, pg_db) == []
    assert postgres.query("SELECT count(*) FROM preds", pg_db) == [(2 * len(table),)]


def test_an_interrupted_run_releases_the_lock(cli, slow, postgres, pg_db):
    folder, table, model = slow
    url = postgres.url(pg_db)
    first = spawn(folder, "--model", model, "--output", url, "--table", "preds", "--batch-size", "1")
    wait_for(lambda: committed(postgres, pg_db) >= 1, first)
    assert len(run_locks(postgres, pg_db)) == 1
    first.send_signal(signal.SIGTERM)
    first.wait(60)
    if first.returncode == 0:
        pytest.skip("the run finished before the signal landed")
    assert first.returncode == 130, first.stderr.read()
    assert run_locks(postgres, pg_db) == []
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "--resume", "-q")
    assert postgres.query("SELECT count(*), count(DISTINCT id) FROM preds", pg_db) == [(len(table), len(table))]


@pytest.mark.parametrize("point", ["after-copy", "after-commit@2"])
def test_a_killed_run_leaves_no_lock(cli, data, model, postgres, pg_db, point):
    folder, table = data.shards("in", [100] * 4)
    url = postgres.url(pg_db)
    first = subprocess.run(
        [sys.executable, "-m", "batchscore", "run", folder, "--model", model, "--output", url, "--table", "preds",
         "--quiet"],
        env={**os.environ, "BATCHSCORE_TEST_CRASH_AT": point}, capture_output=True, text=True, timeout=120,
    )
    assert first.returncode == -signal.SIGKILL, first.stderr
    # At once: the server ends the killed run's sessions, and its lock with them.
    res = cli("run", folder, "--model", model, "--output", url, "--table", "preds", "--resume", "-q")
    assert res.exit_code == 0, res.stderr
    assert postgres.query("SELECT count(*), count(DISTINCT id) FROM preds", pg_db) == [(len(table), len(table))]
    assert run_locks(postgres, pg_db) == []


# -- released at the end of every run ---------------------------------------------------------------------
def test_the_lock_is_held_during_a_run_and_released_after_it(scored, postgres, pg_db, monkeypatch):
    folder, _, model = scored
    from batchscore.sinks import postgres as pg_sink

    seen = []
    real = pg_sink.Sink.commit_shard

    def commit_shard(self, shard, rows):
        seen.append(run_locks(postgres, pg_db))
        real(self, shard, rows)

    monkeypatch.setattr(pg_sink.Sink, "commit_shard", commit_shard)
    batchscore.score(folder, model, postgres.url(pg_db), table="preds", run_id="r1", quiet=True)
    assert seen and all([app for _, app in locks] == ["batchscore r1"] for locks in seen)
    assert run_locks(postgres, pg_db) == []


@pytest.mark.parametrize("why", ["exists", "missing-schema", "bad-rows"])
def test_the_lock_is_released_when_a_run_fails(cli, data, model, postgres, pg_db, why):
    folder, _ = data.shards("in", [3, 3])
    url = postgres.url(pg_db)
    table = "nope.preds" if why == "missing-schema" else "preds"
    if why == "exists":
        cli.run(folder, "--model", model, "--output", url, "--table", "preds", "-q")
    if why == "bad-rows":
        import pyarrow as pa

        from tests.helpers import Data

        t = Data.table(3, 100)
        t = t.set_column(t.schema.get_field_index("f0"), "f0", pa.array([1.0, None, 2.0]))
        data.write("in/part-002.parquet", t)
    res = cli("run", folder, "--model", model, "--output", url, "--table", table)
    assert res.exit_code == 2, res.stderr
    assert run_locks(postgres, pg_db) == []
    with Holder(postgres, pg_db, "preds").conn:  # and can be taken at once
        pass


def test_a_partial_run_with_a_quarantine_table_releases_both_locks(cli, data, model, postgres, pg_db):
    import pyarrow as pa

    from tests.helpers import Data

    folder, _ = data.shards("in", [3])
    t = Data.table(3, 100)
    data.write("in/part-001.parquet", t.set_column(t.schema.get_field_index("f0"), "f0", pa.array([1.0, None, 2.0])))
    res = cli("run", folder, "--model", model, "--output", postgres.url(pg_db), "--table", "preds",
              "--on-error", "quarantine")
    assert res.exit_code == 3, res.stderr
    assert postgres.query("SELECT count(*) FROM preds_quarantine", pg_db) == [(1,)]
    assert run_locks(postgres, pg_db) == []


# -- --no-lock ---------------------------------------------------------------------------------------------
def test_no_lock_ignores_a_held_lock_and_takes_none(cli, scored, postgres, pg_db, holder, monkeypatch):
    folder, table, model = scored
    url = postgres.url(pg_db)
    h = holder("preds")
    cli.run(folder, "--model", model, "--output", url, "--table", "preds", "--no-lock", "-q")
    assert [pid for pid, _ in run_locks(postgres, pg_db)] == [h.pid]
    h.close()
    # A run with --no-lock holds no lock while it writes.
    from batchscore.sinks import postgres as pg_sink

    seen = []
    real = pg_sink.Sink.commit_shard
    monkeypatch.setattr(pg_sink.Sink, "commit_shard",
                        lambda self, shard, rows: (seen.append(run_locks(postgres, pg_db)), real(self, shard, rows)))
    batchscore.score(folder, model, url, table="preds", if_exists="append", no_lock=True, quiet=True)
    assert seen and all(locks == [] for locks in seen)
    assert postgres.query("SELECT count(*) FROM preds", pg_db) == [(2 * len(table),)]


def test_no_lock_lets_two_runs_append_at_once(cli, slow, data, postgres, pg_db):
    folder, table, model = slow
    url = postgres.url(pg_db)
    more, _ = data.shards("more", [50, 50])
    cli.run(more, "--model", model, "--output", url, "--table", "preds", "-q")  # the table exists
    first = spawn(folder, "--model", model, "--output", url, "--table", "preds", "--batch-size", "1",
                  "--if-exists", "append", "--no-lock")
    try:
        wait_for(lambda: committed(postgres, pg_db) >= 3, first)  # 2 of the first table's, 1 of this run's
        res = cli("run", more, "--model", model, "--output", url, "--table", "preds", "--if-exists", "append",
                  "--no-lock", "-q")
        assert res.exit_code == 0, res.stderr
        assert first.poll() is None, "the runs must overlap"
    finally:
        first.wait(120)
    assert first.returncode == 0, first.stderr.read()
    assert postgres.query("SELECT count(*) FROM preds", pg_db) == [(len(table) + 200,)]
    assert postgres.query("SELECT count(*) FROM batchscore_runs WHERE status = 'complete'", pg_db) == [(3,)]


# -- batchscore unlock ---------------------------------------------------------------------------------------
def test_unlock_shows_the_holder_and_removes_nothing(cli, postgres, pg_db, holder):
    url = postgres.url(pg_db)
    res = cli("unlock", url)
    assert res.exit_code == 0, res.stderr
    assert res.stderr == (
        f"{url}: no batchscore run holds a lock in database {pg_db} (a run's lock ends with its session, "
        "so a killed run leaves none): nothing to unlock\n"
    )
    h = holder("preds")
    res = cli("unlock", url)
    assert res.exit_code == 4
    assert res.error == (
        f"{url}: batchscore run lock(s) in database {pg_db} held by {h.text()}: a PostgreSQL run lock ends with "
        "the session holding it and cannot be removed by hand; wait for that run, or if its machine is gone "
        f"end the session: SELECT pg_terminate_backend({h.pid})"
    )
    assert [pid for pid, _ in run_locks(postgres, pg_db)] == [h.pid]


def test_unlock_as_another_user_masks_the_password(cli, postgres, pg_db, holder):
    h = holder("preds")
    url = postgres.url(pg_db, user=pg.ALICE, password=pg.ALICE_PASSWORD, tcp=True)
    res = cli("unlock", url)
    assert res.exit_code == 4
    masked = f"postgresql://{pg.ALICE}:***@127.0.0.1:{postgres.port}/{pg_db}"
    # Another user's session: its pid, name and user, not its address or start.
    assert res.error.startswith(
        f"{masked}: batchscore run lock(s) in database {pg_db} held by PostgreSQL session pid {h.pid}, "
        "application_name 'batchscore first-run', user postgres: "
    )
    assert pg.ALICE_PASSWORD not in res.stderr and "s3cr" not in res.stderr


def test_api_raises_locked_error(scored, postgres, pg_db, holder):
    folder, _, model = scored
    holder("preds")
    with pytest.raises(LockedError) as info:
        batchscore.score(folder, model, postgres.url(pg_db), table="preds", quiet=True)
    assert info.value.exit_status == 4
