"""One run at a time per output: the lock file beside the output (issue 5).

A second run on a locked output exits 4 at once, naming the holder (host,
pid, run, start time); a lock left by a run killed with SIGKILL is taken over
(with a warning); ``batchscore unlock OUTPUT`` clears one by hand; --no-lock
skips the lock. The first run of each race is a real ``python -m batchscore``
subprocess, slowed by --batch-size 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

import batchscore
from batchscore.lock import _proc_start, lock_path
from tests.helpers import output_files, read_output, spawn, wait_for

HOST = socket.gethostname()


def committed(out: str) -> int:
    """Shards the output's manifest lists as committed (0 when there is none yet)."""
    try:
        return len(json.load(open(os.path.join(out, "_batchscore_manifest.json")))["shards"])
    except (OSError, ValueError):
        return 0


def started(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def holder_text(holder: dict) -> str:
    return f"host {holder['host']}, pid {holder['pid']}, run {holder['run_id']}, started {started(holder['started_at'])}"


def write_lock(output: str, **fields) -> dict:
    holder = {"host": HOST, "pid": os.getpid(), "proc_start": _proc_start(os.getpid()), "run_id": "other-run",
              "started_at": 1_796_000_000.0, "output": output}
    holder.update(fields)
    with open(lock_path(output), "w") as fh:
        json.dump(holder, fh)
    return holder


@pytest.fixture
def slow(data, model):
    """8 shards of 300 rows and the model: a few seconds at --batch-size 1."""
    folder, table = data.shards("in", [300] * 8)
    return folder, table, model


@pytest.fixture
def sleeper():
    """A live process that is not batchscore: a lock holder that never lets go."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def locked_message(output: str, holder: dict) -> str:
    return (
        f"output {output} is locked by another run ({holder_text(holder)}): wait for it, "
        f"or if that run is gone, run: batchscore unlock {output}"
    )


# -- a second run while the first is running --------------------------------------------------------
def test_a_second_run_exits_4_naming_the_holder(cli, slow):
    folder, _, model = slow
    first = spawn(folder, "--model", model, "--output", "out", "--batch-size", "1", "--run-id", "first-run")
    try:
        lock = lock_path("out")
        assert lock == os.path.abspath(".out.batchscore.lock")  # beside the output, not in it
        wait_for(lambda: os.path.exists(lock) and os.path.getsize(lock) > 0, first)
        holder = json.load(open(lock))
        assert (holder["host"], holder["pid"], holder["run_id"]) == (HOST, first.pid, "first-run")

        t0 = time.monotonic()
        msg = cli.fails(folder, "--model", model, "--output", "out", "--overwrite", "--report", "r.json", code=4)
        assert time.monotonic() - t0 < 10  # at once: it does not wait for the lock
        assert msg == locked_message("out", holder)
        report = json.load(open("r.json"))
        assert (report["status"], report["exit_code"], report["error"]) == ("failed", 4, msg)
        assert first.poll() is None, "the first run must still be running"
        assert json.load(open(lock)) == holder  # the loser left the lock alone
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(60)
    assert first.returncode == 130, first.stderr.read()
    assert not os.path.exists(lock), "an interrupted run releases its lock"
    assert [f for f in os.listdir("out") if "lock" in f] == []


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(cli, slow):
    folder, table, model = slow
    first = spawn(folder, "--model", model, "--output", "out", "--batch-size", "1", "--run-id", "killed-run")
    lock = lock_path("out")
    wait_for(lambda: committed("out") >= 1, first)
    holder = json.load(open(lock))
    first.kill()  # SIGKILL: no cleanup runs
    first.wait(30)
    assert first.returncode == -signal.SIGKILL
    assert json.load(open(lock)) == holder

    res = cli("run", folder, "--model", model, "--output", "out", "--resume")
    assert res.exit_code == 0, res.stderr
    assert f"batchscore: warning: removing a stale lock on out left by {holder_text(holder)}" in res.stderr.splitlines()
    assert not os.path.exists(lock)
    out = read_output("out")
    assert sorted(out.column("id").to_pylist()) == list(range(len(table)))


# -- stale or foreign locks, by hand ---------------------------------------------------------------------------
def test_lock_of_a_live_process_blocks_and_unlock_clears_it(cli, scored, sleeper):
    folder, _, model = scored
    holder = write_lock("out", pid=sleeper.pid, proc_start=_proc_start(sleeper.pid))
    assert cli.fails(folder, "--model", model, "--output", "out", code=4) == locked_message("out", holder)
    assert not os.path.exists("out")

    res = cli("unlock", "out")
    assert res.exit_code == 0, res.stderr
    assert res.stderr == f"removed the lock on out held by {holder_text(holder)}\n"
    assert not os.path.exists(lock_path("out"))
    assert cli("run", folder, "--model", model, "--output", "out").exit_code == 0


def test_lock_from_another_host_is_never_taken_over(cli, scored):
    # batchscore cannot tell whether a run on another machine is alive: only unlock clears it.
    folder, _, model = scored
    holder = write_lock("out", host="elsewhere.example", pid=1)
    assert cli.fails(folder, "--model", model, "--output", "out", code=4) == locked_message("out", holder)
    assert cli("unlock", "out").exit_code == 0
    assert cli("run", folder, "--model", model, "--output", "out").exit_code == 0


def test_lock_whose_pid_was_reused_is_stale(cli, scored, sleeper):
    folder, _, model = scored
    holder = write_lock("out", pid=sleeper.pid, proc_start="1")  # the pid now belongs to another process
    res = cli("run", folder, "--model", model, "--output", "out")
    assert res.exit_code == 0, res.stderr
    assert f"batchscore: warning: removing a stale lock on out left by {holder_text(holder)}" in res.stderr.splitlines()


def test_lock_of_a_dead_pid_is_stale(cli, scored):
    folder, _, model = scored
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_lock("out", pid=dead.pid)
    res = cli("run", folder, "--model", model, "--output", "out")
    assert res.exit_code == 0, res.stderr
    assert "batchscore: warning: removing a stale lock on out left by host" in res.stderr


def test_a_half_written_lock_is_respected_while_fresh_and_stale_when_old(cli, scored):
    folder, _, model = scored
    path = lock_path("out")
    open(path, "w").close()  # its holder is writing it right now
    res = cli("run", folder, "--model", model, "--output", "out")
    assert res.exit_code == 4, res.stderr
    assert res.error.startswith("output out is locked by another run (")
    os.utime(path, (time.time() - 60, time.time() - 60))  # ...or died while writing it
    res = cli("run", folder, "--model", model, "--output", "out")
    assert res.exit_code == 0, res.stderr
    assert "batchscore: warning: removing a stale lock on out" in res.stderr.splitlines()


def test_a_half_written_lock_does_not_name_a_holder_of_none(cli, scored):
    folder, _, model = scored
    open(lock_path("out"), "w").close()
    msg = cli.fails(folder, "--model", model, "--output", "out", code=4)
    assert "None" not in msg, msg


# -- batchscore unlock ----------------------------------------------------------------------------------------
def test_unlock_without_a_lock(cli):
    res = cli("unlock", "out")
    assert (res.exit_code, res.stderr) == (0, "out is not locked\n")


def test_unlock_a_sqlite_output(cli, scored, sleeper):
    folder, _, model = scored
    assert lock_path("sqlite:///scores.db") == os.path.abspath(".scores.db.batchscore.lock")
    write_lock("scores.db", pid=sleeper.pid, proc_start=_proc_start(sleeper.pid))
    assert cli("run", folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds").exit_code == 4
    res = cli("unlock", "sqlite:///scores.db")
    assert res.exit_code == 0 and res.stderr.startswith("removed the lock on sqlite:///scores.db held by host ")
    assert cli("run", folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds").exit_code == 0


def test_unlock_of_a_database_server_asks_the_server(cli):
    # A PostgreSQL run lock is an advisory lock: unlock connects to show its holder
    # (tests/sinks/test_postgres_lock.py); here no server listens.
    pytest.importorskip("adbc_driver_postgresql")
    from tests.pg import _free_port

    port = _free_port()
    res = cli("unlock", f"postgresql://scorer@127.0.0.1:{port}/analytics")
    assert res.exit_code == 1
    assert res.error == (
        f"cannot connect to PostgreSQL at 127.0.0.1:{port}: Connection refused (is the server running and "
        f"reachable? --output postgresql://scorer@127.0.0.1:{port}/analytics)"
    )


def test_unlock_does_not_print_a_password(cli):
    pytest.importorskip("adbc_driver_postgresql")
    from tests.pg import _free_port

    res = cli("unlock", f"postgresql://scorer:hunter2@127.0.0.1:{_free_port()}/analytics")
    assert res.exit_code == 1
    assert "hunter2" not in res.stderr and "postgresql://scorer:***@127.0.0.1:" in res.stderr


# -- the lock is released, and never inside the output ----------------------------------------------------------
@pytest.mark.parametrize("output", ["out", "all.parquet", "sqlite:///scores.db"])
def test_the_lock_is_beside_the_output_and_released(cli, scored, output):
    folder, _, model = scored
    extra = ["--table", "preds"] if output.startswith("sqlite") else []
    assert cli("run", folder, "--model", model, "--output", output, *extra).exit_code == 0
    assert [f for f in os.listdir(".") if f.endswith(".batchscore.lock")] == []
    if output == "out":
        assert "lock" not in " ".join(os.listdir("out"))


@pytest.mark.parametrize("flags, code", [(["--features", "nope"], 2), (["--on-error", "skip"], 0)])
def test_the_lock_is_released_when_a_run_fails_or_is_partial(cli, data, model, flags, code):
    folder, _ = data.shards("in", [3, 3])
    res = cli("run", folder, "--model", model, "--output", "out", *flags)
    assert res.exit_code == code, res.stderr
    assert not os.path.exists(lock_path("out"))


def test_no_lock_ignores_and_keeps_a_held_lock(cli, scored, sleeper):
    folder, table, model = scored
    holder = write_lock("out", pid=sleeper.pid, proc_start=_proc_start(sleeper.pid))
    res = cli("run", folder, "--model", model, "--output", "out", "--no-lock")
    assert res.exit_code == 0, res.stderr
    assert json.load(open(lock_path("out"))) == holder
    assert len(read_output("out")) == len(table)


def test_api_raises_locked_error(scored, sleeper):
    folder, _, model = scored
    write_lock("out", pid=sleeper.pid, proc_start=_proc_start(sleeper.pid))
    with pytest.raises(batchscore.errors.LockedError) as info:
        batchscore.score(folder, model, "out", quiet=True)
    assert info.value.exit_status == 4


# -- --no-lock: knowingly parallel appends -------------------------------------------------------------------
def _second_input(data) -> str:
    for i in range(2):
        data.write(f"more/more-{i}.parquet", data.table(50, 10_000 + 50 * i))
    return str(data.root / "more")


#: Another process (a parallel --no-lock run, or anything else) holding a write transaction on the
#: SQLite file argv[1] from "go" (or at once) until its stdin closes.
HOLDER = (
    "import sqlite3, sys\n"
    "if len(sys.argv) > 2: sys.stdin.readline()\n"
    "con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)\n"
    "con.execute('BEGIN IMMEDIATE'); con.execute('CREATE TABLE other (x)')\n"
    "print('holding', flush=True); sys.stdin.read(); con.execute('COMMIT')\n"
)


def hold_sqlite(path: str) -> subprocess.Popen:
    """A process holding the write lock of ``path`` (taken when this returns) until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "holding\n"
    return proc


def release(holder: subprocess.Popen) -> None:
    """Let the holder commit; its commit must succeed (the waiting run held no lock in its way)."""
    holder.stdin.close()
    assert holder.wait(30) == 0
    con = sqlite3.connect("scores.db")
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'other'").fetchone() == (1,)
    con.close()


def sqlite_ids(path: str = "scores.db", table: str = "preds") -> list[int]:
    con = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in con.execute(f'SELECT id FROM "{table}"'))
    finally:
        con.close()


def test_an_append_to_sqlite_waits_for_another_writer(cli, scored, data):
    folder, table, model = scored
    url = "sqlite:///scores.db"
    assert cli("run", _second_input(data), "--model", model, "--output", url, "--table", "preds").exit_code == 0
    holder = hold_sqlite("scores.db")
    timer = threading.Timer(1.5, holder.stdin.close)  # the other writer commits 1.5 s from now
    t0 = time.monotonic()
    timer.start()
    try:
        res = cli("run", folder, "--model", model, "--output", url, "--table", "preds", "--if-exists", "append",
                  "--no-lock")
        waited = time.monotonic() - t0
    finally:
        timer.join()
        assert holder.wait(30) == 0  # its commit went through: the waiting run held no lock in its way
    assert res.exit_code == 0, res.stderr
    assert waited >= 1.4  # it could only finish once the other writer had committed
    assert sqlite_ids() == list(range(len(table))) + list(range(10_000, 10_100))
    con = sqlite3.connect("scores.db")
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'other'").fetchone() == (1,)
    con.close()


def locked_sqlite(wait: str) -> str:
    return (f"scores.db is locked by another writer (waited {wait} s): retry when it is done, "
            "or pass a longer --timeout to wait longer")


@pytest.mark.parametrize("flags, wait", [([], "2"), (["--timeout", "4"], "3"), (["--timeout", "1"], "0.5")])
def test_a_sqlite_writer_that_holds_on_fails_the_run_after_the_wait(cli, scored, data, monkeypatch, flags, wait):
    """The wait is bounded: 60 s (here patched to 2 s), or --timeout less a second (half of one under
    2 s); then exit 4, one line, after one wait (not one per statement the run tries)."""
    import batchscore.sinks.sqlite as sqlite_sink

    monkeypatch.setattr(sqlite_sink, "LOCK_WAIT", 2.0)
    folder, _, model = scored
    url = "sqlite:///scores.db"
    assert cli("run", _second_input(data), "--model", model, "--output", url, "--table", "preds").exit_code == 0
    holder = hold_sqlite("scores.db")
    try:
        t0 = time.monotonic()
        msg = cli.fails(folder, "--model", model, "--output", url, "--table", "preds", "--if-exists", "append",
                        "--report", "r.json", *flags, code=4)
        waited = time.monotonic() - t0
    finally:
        release(holder)
    assert msg == locked_sqlite(wait)
    assert float(wait) <= waited < 1.5 * float(wait) + 0.7
    report = json.load(open("r.json"))
    assert (report["status"], report["exit_code"], report["error"]) == ("failed", 4, msg)
    assert sqlite_ids() == list(range(10_000, 10_100))  # nothing of the failed run
    assert not os.path.exists(lock_path(url))


#: ``batchscore run`` (argv[3:]) whose first transaction after argv[2] shard commits finds the file
#: locked by another process (the holder, argv[1], started up front and told to take the lock
#: then): a wait in the middle of the run, under the --timeout watchdog. Prints how long the run
#: went on from there.
MID_RUN = r"""
import subprocess, sys, time
import batchscore.sinks.sqlite as sq
holder = subprocess.Popen([sys.executable, "-c", sys.argv[1], "scores.db", "on-go"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True)
after, taken, orig = int(sys.argv[2]), [], sq.Sink._tx_begin
def tx_begin(self):
    if not self._in_tx and self._run is not None and self._commits == after and not taken:
        holder.stdin.write("go\n"); holder.stdin.flush()
        assert holder.stdout.readline() == "holding\n"
        taken.append(time.monotonic())
    orig(self)
sq.Sink._tx_begin = tx_begin
from batchscore.cli import main
try:
    main(sys.argv[3:])
finally:
    print(f"after the lock was taken: {time.monotonic() - taken[0]:.3f} s", file=sys.stderr)
    holder.stdin.close(); holder.wait()
"""


def run_locked_mid_run(args: list[str], after_commits: int) -> tuple[int, str, float]:
    """(exit code, error line, seconds from the lock being taken to the end)."""
    proc = subprocess.run([sys.executable, "-c", MID_RUN, HOLDER, str(after_commits), "run", *args],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("after the lock was taken: "), proc.stderr
    return proc.returncode, lines[-2], float(lines[-1].split(": ")[1].split()[0])


def test_a_lock_wait_in_mid_run_ends_with_exit_4_before_the_watchdog(cli, scored):
    folder, table, model = scored
    args = [folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds", "--quiet"]
    code, error, waited = run_locked_mid_run([*args, "--timeout", "3"], after_commits=1)
    assert (code, error) == (4, f"batchscore: error: {locked_sqlite('2')}")
    assert 2 <= waited < 3  # within --timeout: this error, not the watchdog's (exit 1)
    con = sqlite3.connect("scores.db")
    committed = con.execute("SELECT shard, rows FROM batchscore_shards").fetchall()
    con.close()
    assert committed == [("part-000.parquet", 5)]  # the first shard, whole; the rest waits for --resume
    assert sqlite_ids() == list(range(5))
    res = cli("run", *args, "--resume")
    assert res.exit_code == 0, res.stderr
    assert sqlite_ids() == list(range(len(table)))


def test_a_lock_wait_before_the_first_commit_does_not_wait_again_to_tidy_up(cli, scored):
    """abort() drops the table a run created when nothing was committed to it, but after a lock
    wait that ran out it tries once: the table stays (empty, its run recorded) and --resume
    finishes it."""
    folder, table, model = scored
    args = [folder, "--model", model, "--output", "sqlite:///scores.db", "--table", "preds", "--quiet"]
    code, error, waited = run_locked_mid_run([*args, "--timeout", "3"], after_commits=0)
    assert (code, error) == (4, f"batchscore: error: {locked_sqlite('2')}")
    assert 2 <= waited < 3
    assert sqlite_ids() == []
    res = cli("run", *args, "--resume")
    assert res.exit_code == 0, res.stderr
    assert sqlite_ids() == list(range(len(table)))


def test_parallel_appends_to_a_parquet_directory_with_no_lock_lose_nothing(cli, slow, data):
    folder, table, model = slow
    more = _second_input(data)
    first = spawn(folder, "--model", model, "--output", "out", "--if-exists", "append", "--no-lock", "--batch-size", "1")
    wait_for(lambda: committed("out") >= 1, first)
    res = cli("run", more, "--model", model, "--output", "out", "--if-exists", "append", "--no-lock")
    assert res.exit_code == 0, res.stderr
    assert first.wait(120) == 0, first.stderr.read()
    manifest = json.load(open("out/_batchscore_manifest.json"))
    assert sorted(manifest["shards"]) == output_files("out")
    # A later append keeps what both runs wrote.
    data.write("late/late-0.parquet", data.table(5, 20_000))
    assert cli("run", str(data.root / "late"), "--model", model, "--output", "out", "--if-exists", "append").exit_code == 0
    assert len(read_output("out")) == len(table) + 100 + 5
