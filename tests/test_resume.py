"""Exactly once across crashes, for SQLite, PostgreSQL and Parquet.

A run is killed with SIGKILL partway — by a real ``kill -9`` once some shards
are committed, and at the moments a timer cannot hit reliably through the
test-only hook ``BATCHSCORE_TEST_CRASH_AT`` (after the COPY before COMMIT,
between the ledger row and COMMIT, right after COMMIT, after the file rename
before the manifest, mid-publish). Right after the kill every shard is either
fully there or absent; after ``--resume`` the output holds exactly the rows
of a clean run. Also: Parquet's resume, append and at-end semantics.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import time

import pytest

import batchscore
from batchscore.errors import BatchscoreError
from tests import pg
from tests.helpers import Data, all_files, output_files, read_output

SIZES = [300, 0, 250, 300, 280, 300, 120, 300]  # 8 shards, one empty


@pytest.fixture
def work(data, models):
    folder, table = data.shards("in", SIZES)
    return folder, models.linear()


#: For real kills: enough shards that a kill lands while the run is writing.
MANY = [400] * 40


_forkserver = None


def _context():
    """Crash runs are forked from a server that has imported batchscore once:
    a fresh process each, without paying the imports (seconds) each time."""
    global _forkserver
    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload([
            "batchscore.cli", "batchscore.api", "batchscore.pipeline", "batchscore.backends.onnx", "onnx",
            "onnxruntime", "polars", "pyarrow.parquet", "batchscore.sinks.sqlite", "batchscore.sinks.postgres",
            "adbc_driver_sqlite.dbapi", "adbc_driver_postgresql.dbapi",
        ])
    return _forkserver


def _run_cli(argv: list[str], env: dict[str, str], cwd: str) -> None:
    os.chdir(cwd)
    for k in [k for k in os.environ if k.startswith("BATCHSCORE_")]:
        del os.environ[k]
    os.environ.update(env)
    from batchscore.cli import main

    main(argv)


class CliProcess:
    """``batchscore run ARGS`` in a child process (``--quiet --batch-size 128``)."""

    def __init__(self, args: list[str], crash_at: str | None = None):
        env = {"BATCHSCORE_TEST_CRASH_AT": crash_at} if crash_at else {}
        argv = ["run", *map(str, args), "--quiet", "--batch-size", "128"]
        self.proc = _context().Process(target=_run_cli, args=(argv, env, os.getcwd()))
        self.proc.start()

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode

    def poll(self) -> int | None:
        return self.proc.exitcode

    def kill(self) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()

    def wait(self, timeout: float = 120) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode


def killed_at(args: list[str], point: str) -> None:
    proc = CliProcess(args, point)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}, not killed at {point}"


def killed_when(args: list[str], committed) -> None:
    """A real kill -9, as soon as ``committed()`` reports a shard done."""
    proc = CliProcess(args)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if committed() >= 1:
                break
        except Exception:  # noqa: BLE001 - the output may not exist yet
            pass
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the run finished before the kill landed")
    assert proc.returncode == -signal.SIGKILL, f"exit {proc.returncode}"


def resume(folder, model, output, **kw):
    return batchscore.score(folder, model, output, if_exists="resume", batch_size=128, quiet=True, **kw)


# -- SQLite ---------------------------------------------------------------------------------
class SqliteDest:
    def __init__(self):
        self.url, self.path = "sqlite:///out.db", "out.db"

    def rows(self, table: str) -> list[tuple]:
        con = sqlite3.connect(self.path)
        try:
            return con.execute(f'SELECT * FROM "{table}" ORDER BY id').fetchall()
        finally:
            con.close()

    def committed(self, table: str = "preds") -> list[tuple[str, int]]:
        con = sqlite3.connect(self.path)
        try:
            return con.execute("SELECT shard, rows FROM batchscore_shards WHERE dest = ?", (table.lower(),)).fetchall()
        finally:
            con.close()


# -- PostgreSQL -------------------------------------------------------------------------------
class PgDest:
    def __init__(self):
        self.server = pg.server()
        self.db = self.server.new_db()
        self.url = self.server.url(self.db)

    def rows(self, table: str) -> list[tuple]:
        return self.server.query(f'SELECT * FROM "{table}" ORDER BY id', self.db)

    def committed(self, table: str = "preds") -> list[tuple[str, int]]:
        return self.server.query("SELECT shard, rows FROM batchscore_shards WHERE dest = $1", self.db, (table,))


DESTS = {"sqlite": SqliteDest, "postgres": PgDest}


def assert_whole_shards(dest, table: str, sizes: list[int], *, at_least: int = 0) -> None:
    """Right after a kill: every committed shard is all there, nothing else is."""
    try:
        got = dest.rows(table)
    except Exception:  # noqa: BLE001 - no table yet: nothing committed
        assert at_least == 0
        return
    committed = dest.committed(table)
    assert all(sizes[int(s.split("-")[1].split(".")[0])] == n for s, n in committed)
    assert len(got) == sum(n for _, n in committed)
    assert len(committed) >= at_least


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize(
    "point, committed_before",
    [("after-copy@3", 2), ("before-commit@2", 1), ("after-commit@4", 4), ("real", 1)],
)
def test_a_killed_database_run_resumes_to_exactly_a_clean_run(work, data, kind, point, committed_before):
    folder, model = work
    sizes = SIZES
    if point == "real":
        folder, _ = data.shards("many", MANY)
        sizes = MANY
    dest = DESTS[kind]()
    batchscore.score(folder, model, dest.url, table="clean", batch_size=128, quiet=True)
    args = [folder, "--model", model, "--output", dest.url, "--table", "preds"]
    if point == "real":
        killed_when(args, lambda: len(dest.committed()))
    else:
        killed_at(args, point)
    assert_whole_shards(dest, "preds", sizes, at_least=committed_before)
    before = len(dest.committed())
    summary = resume(folder, model, dest.url, table="preds")
    assert summary.shards_skipped == before
    assert dest.rows("preds") == dest.rows("clean")
    assert len(dest.committed()) == len(sizes)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
@pytest.mark.parametrize("point", ["after-commit@3", "mid-publish"])
def test_a_killed_at_end_run_publishes_nothing_until_resumed(work, kind, point):
    folder, model = work
    dest = DESTS[kind]()
    batchscore.score(folder, model, dest.url, table="clean", batch_size=128, quiet=True)
    killed_at([folder, "--model", model, "--output", dest.url, "--table", "preds", "--publish", "at-end"], point)
    with pytest.raises(Exception):  # the target does not exist before the publish
        dest.rows("preds")
    summary = resume(folder, model, dest.url, table="preds")
    assert summary.shards_skipped == (3 if point == "after-commit@3" else len(SIZES))
    assert dest.rows("preds") == dest.rows("clean")


def test_a_resumed_upsert_run_equals_a_clean_one(work):
    folder, model = work
    dest = PgDest()
    batchscore.score(folder, model, dest.url, table="clean", batch_size=128, quiet=True)
    args = [folder, "--model", model, "--output", dest.url, "--table", "preds", "--upsert-key", "id"]
    killed_at(args, "after-copy@4")
    resume(folder, model, dest.url, table="preds", upsert_key=["id"])
    assert dest.rows("preds") == dest.rows("clean")


@pytest.mark.parametrize("point", ["after-copy@3", "before-commit@2", "after-commit@4"])
def test_a_killed_run_quarantining_into_its_sqlite_file_resumes_exactly_once(data, models, point):
    """The quarantine table in the output's own SQLite file commits with the output, shard by shard:
    after a kill, a shard's good rows, its bad rows and both ledger records are all there or none."""
    from tests.test_faults import poisoned

    sizes = [150, 0, 140, 160, 130, 150]
    bad = {0: {3: None}, 2: {0: None, 139: None}, 3: {}, 4: {7: None}, 5: {100: None}}
    start = 0
    for i, n in enumerate(sizes):
        data.write(f"q/part-{i:03d}.parquet", poisoned(data, n, start, "f1", bad.get(i, {})))
        start += n
    folder, model = str(data.root / "q"), models.linear()
    clean = batchscore.score(folder, model, "sqlite:///clean.db", table="preds", on_error="quarantine",
                             batch_size=128, quiet=True)
    assert clean.rows_quarantined == 5
    dest = SqliteDest()
    killed_at([folder, "--model", model, "--output", dest.url, "--table", "preds", "--on-error", "quarantine"], point)
    done = dict(dest.committed("preds"))
    quarantined = dict(dest.committed("preds_quarantine"))
    assert len(dest.rows("preds")) == sum(done.values())
    assert len(dest.rows("preds_quarantine")) == sum(quarantined.values())
    # A shard's bad rows are recorded exactly when its good rows are.
    assert quarantined == {f"part-{i:03d}.parquet": len(bad[i]) for i in bad
                           if bad[i] and f"part-{i:03d}.parquet" in done}
    summary = resume(folder, model, dest.url, table="preds", on_error="quarantine")
    assert summary.shards_skipped == len(done)
    clean_rows = SqliteDest()
    clean_rows.path = "clean.db"
    assert dest.rows("preds") == clean_rows.rows("preds")
    assert dest.rows("preds_quarantine") == clean_rows.rows("preds_quarantine")
    assert len(dest.rows("preds_quarantine")) == 5


# -- Parquet ------------------------------------------------------------------------------------
def parquet_committed(root: str = "out") -> int:
    with open(os.path.join(root, "_batchscore_manifest.json")) as fh:
        return len(json.load(fh)["shards"])


def assert_parquet_whole(sizes: list[int], root: str = "out") -> None:
    """Every visible file is a complete shard, recorded or not; no _SUCCESS before the end."""
    if not os.path.isdir(root):
        return
    manifest = json.load(open(os.path.join(root, "_batchscore_manifest.json")))
    assert not os.path.exists(os.path.join(root, "_SUCCESS"))
    for f in output_files(root):
        assert read_output(os.path.join(root, f)).num_rows == sizes[int(f.split("-")[1].split(".")[0])]
    for f, rec in manifest["shards"].items():
        assert os.path.exists(os.path.join(root, f)) and rec["rows"] == sizes[int(f.split("-")[1].split(".")[0])]


@pytest.mark.parametrize("point", ["after-write@2", "after-rename@3", "after-manifest@5", "real"])
def test_a_killed_parquet_run_resumes_to_exactly_a_clean_run(work, data, point):
    folder, model = work
    sizes = SIZES
    if point == "real":
        folder, _ = data.shards("many", MANY)
        sizes = MANY
    batchscore.score(folder, model, "clean", batch_size=128, quiet=True)
    args = [folder, "--model", model, "--output", "out"]
    if point == "real":
        killed_when(args, parquet_committed)
    else:
        killed_at(args, point)
    assert_parquet_whole(sizes)
    resume(folder, model, "out")
    assert output_files("out") == output_files("clean")
    assert read_output("out").equals(read_output("clean"))
    assert [f for f in all_files("out") if os.path.basename(f).startswith(".")] == []
    assert os.path.exists("out/_SUCCESS")


@pytest.mark.parametrize("point", ["after-manifest@2", "mid-publish"])
def test_a_killed_at_end_parquet_run_leaves_the_old_output_or_none(work, point):
    folder, model = work
    batchscore.score(folder, model, "clean", batch_size=128, quiet=True)
    batchscore.score(folder, model, "out", batch_size=128, quiet=True)  # an earlier output to replace
    args = [folder, "--model", model, "--output", "out", "--publish", "at-end", "--overwrite"]
    killed_at(args, point)
    if point == "after-manifest@2":
        assert read_output("out").equals(read_output("clean"))  # the old output, untouched
    summary = resume(folder, model, "out")
    assert summary.shards_skipped == (2 if point == "after-manifest@2" else len(SIZES))
    assert read_output("out").equals(read_output("clean"))
    assert sorted(os.listdir(".")) == ["clean", "out"]  # no staging or old directory left


def test_parquet_resume_append_and_changed_shards(work, data):
    folder, model = work
    resume(folder, model, "out")  # --resume on nothing simply runs
    summary = resume(folder, model, "out")
    assert (summary.shards_skipped, summary.rows_written) == (len(SIZES), 0)
    batchscore.score(folder, model, "out", if_exists="append", run_id="r2", quiet=True)
    files = output_files("out")
    assert len(files) == 2 * len(SIZES) and "part-000.r2.parquet" in files
    assert read_output("out").num_rows == 2 * sum(SIZES)
    manifest = json.load(open("out/_batchscore_manifest.json"))
    assert [r["mode"] for r in manifest["runs"]] == ["fail", "append"] and manifest["complete"] is True
    rec = manifest["shards"]["part-000.r2.parquet"]
    assert (rec["shard"], rec["rows"], rec["run_id"], len(rec["shard_key"])) == ("part-000.parquet", 300, "r2", 64)
    data.write("in/part-003.parquet", Data.table(3, 0))
    with pytest.raises(BatchscoreError) as info:
        resume(folder, model, "out")
    assert str(info.value).startswith(f"input {folder}/part-003.parquet changed after run r2 committed its 300 rows to out at ")
    assert info.value.exit_status == 2


def test_parquet_refuses_what_it_did_not_write(work):
    folder, model = work
    os.makedirs("out")
    open("out/notes.txt", "w").close()
    for mode in ("append", "resume", "replace"):
        with pytest.raises(BatchscoreError) as info:
            batchscore.score(folder, model, "out", if_exists=mode, quiet=True)
        assert "batchscore did not create it" in str(info.value) or "no batchscore run recorded" in str(info.value)
    assert os.listdir("out") == ["notes.txt"]


def test_an_unrecorded_file_is_replaced_not_kept(work):
    folder, model = work
    killed_at([folder, "--model", model, "--output", "out"], "after-rename@2")
    manifest = json.load(open("out/_batchscore_manifest.json"))
    assert list(manifest["shards"]) == ["part-000.parquet"] and os.path.exists("out/part-001.parquet")
    batchscore.score(folder, model, "out", if_exists="append", run_id="r2", quiet=True)
    # The append run removed the file the killed run never recorded, then wrote its own.
    assert read_output("out").num_rows == SIZES[0] + sum(SIZES)
