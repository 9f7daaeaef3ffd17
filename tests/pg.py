"""A throwaway PostgreSQL server for the tests.

``initdb`` + ``pg_ctl`` into a temporary directory, listening on a unix socket
in that directory and on a loopback port; as root the server runs as the
``postgres`` user (``runuser -u postgres``). One server serves the whole test
session (:func:`server`); each test gets its own database (:meth:`Server.new_db`).

Where the binaries are missing the PostgreSQL tests skip with the reason,
except when ``CI`` is set: there a missing server is a failure. The binaries
are looked up in ``$BATCHSCORE_TEST_PG_BIN``, ``pg_config --bindir``,
``/usr/lib/postgresql/*/bin`` and ``$PATH``.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from urllib.parse import quote

import pytest

#: A login role with a password (special characters on purpose) and no rights of its own.
ALICE, ALICE_PASSWORD = "alice", "s3cr:et@p/w?"

_server: "Server | None" = None
_problem: str | None = None


def find_bindir() -> str | None:
    candidates = []
    if os.environ.get("BATCHSCORE_TEST_PG_BIN"):
        candidates.append(os.environ["BATCHSCORE_TEST_PG_BIN"])
    if shutil.which("pg_config"):
        try:
            candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    if shutil.which("initdb"):
        candidates.append(os.path.dirname(shutil.which("initdb")))
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running PostgreSQL cluster in a temporary directory."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="batchscore-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self._dbs = itertools.count()
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o755)

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, timeout=120)

    def start(self) -> "Server":
        r = self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()}")
        with open(os.path.join(self.data, "pg_hba.conf"), "w") as fh:
            fh.write(
                "local all postgres trust\n"
                "local all all scram-sha-256\n"
                "host all postgres 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
        # Durability is the client's business in these tests (they kill the client, not the server).
        opts = (f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
        r = self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.root, "log"), "-w", "start")
        if r.returncode:
            log = open(os.path.join(self.root, "log")).read() if os.path.exists(os.path.join(self.root, "log")) else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} {log[-500:]}")
        self.execute(f"CREATE ROLE {ALICE} LOGIN PASSWORD '{ALICE_PASSWORD}'")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- URLs and SQL ------------------------------------------------------------------
    def url(self, db: str = "postgres", *, user: str = "postgres", password: str | None = None, tcp: bool = False) -> str:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        if tcp:
            return f"postgresql://{auth}@127.0.0.1:{self.port}/{db}"
        return f"postgresql://{auth}@/{db}?host={self.root}&port={self.port}"

    def connect(self, db: str = "postgres", **kw):
        import adbc_driver_postgresql.dbapi as dbapi

        return dbapi.connect(self.url(db, **kw))

    def execute(self, sql: str, db: str = "postgres") -> None:
        """Run SQL outside a transaction (CREATE DATABASE needs that)."""
        import adbc_driver_postgresql.dbapi as dbapi

        conn = dbapi.connect(self.url(db), autocommit=True)
        try:
            cur = conn.cursor()
            cur.execute(sql)
            cur.close()
        finally:
            conn.close()

    def query(self, sql: str, db: str = "postgres", params: tuple = ()) -> list[tuple]:
        conn = self.connect(db)
        try:
            cur = conn.cursor()
            cur.execute(sql, params) if params else cur.execute(sql)
            rows = cur.fetchall()
            cur.close()
            return rows
        finally:
            conn.close()

    def table(self, name: str, db: str, order_by: str = "id"):
        """A table's rows as Arrow, ordered."""
        conn = self.connect(db)
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT * FROM {name} ORDER BY {order_by}")
            t = cur.fetch_arrow_table()
            cur.close()
            return t
        finally:
            conn.close()

    def new_db(self) -> str:
        name = f"t{os.getpid()}_{next(self._dbs)}"
        self.execute(f"CREATE DATABASE {name}")
        return name


def server() -> Server:
    """The session's server (started on first use), or skip (fail under CI) when it cannot run."""
    global _server, _problem
    if _server is None and _problem is None:
        try:
            import adbc_driver_postgresql  # noqa: F401
        except ImportError:
            _problem = "adbc-driver-postgresql is not installed (pip install 'batchscore[postgres]')"
        bindir = find_bindir() if _problem is None else None
        if _problem is None and bindir is None:
            _problem = "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; set BATCHSCORE_TEST_PG_BIN"
        if _problem is None:
            try:
                _server = Server(bindir).start()
                atexit.register(_server.stop)
            except (RuntimeError, OSError, subprocess.SubprocessError, KeyError) as exc:
                _problem = f"cannot start a PostgreSQL server: {exc}"
    if _server is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {_problem}")
        pytest.skip(_problem)
    return _server
