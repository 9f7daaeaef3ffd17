#!/usr/bin/env python
"""PostgreSQL output: `batchscore run` end to end against a bare ADBC ingest and
pandas ``to_sql`` of the same prediction rows, and a resumed half run.

Usage::

    python benchmarks/make_workload.py /tmp/bench/workload-4M
    python benchmarks/bench_postgres.py /tmp/bench/workload-4M [--url postgresql://...] [--repeat 3]

Without ``--url`` it starts a throwaway server (``initdb`` + ``pg_ctl`` into a
temporary directory; as root through ``runuser -u postgres``) with PostgreSQL's
stock durability settings (fsync on, synchronous_commit on), and prints them.
Every measurement writes a fresh table without indexes, after a CHECKPOINT.

What is measured (median of ``--repeat``):

``ingest``
    the floor: the prediction rows (``id`` int64, ``y`` float32) already in
    memory as one Arrow table, sent with ADBC ``adbc_ingest`` (binary COPY)
    into an existing table, then COMMIT.
``run``
    ``batchscore run DATA --model model_h16.onnx --keep id --output URL --table T``
    as a subprocess: the process's wall time and the run's own (``--report``
    ``wall_seconds``: planning, reading, scoring and writing, without the
    interpreter's start and imports).
``parquet``
    the same run into a Parquet directory: the pipeline without a database.
``resume``
    the same run killed with SIGKILL right after half its shards committed
    (test hook ``BATCHSCORE_TEST_CRASH_AT=after-commit@N``), then ``--resume``.
``noop``
    ``--resume`` once more, with every shard committed: the fixed cost of a
    run (imports done lazily, the model, the plan, the ledger) that a resume
    pays whatever is left to do.
``pandas``
    ``DataFrame.to_sql(name, SQLAlchemy engine (psycopg2), if_exists="append",
    index=False)``: pandas' default (INSERT statements), on ``--pandas-rows``
    rows, scaled to the full count when fewer.

Needs: the ``postgres`` extra; pandas, SQLAlchemy and psycopg2 for ``pandas``
(skipped when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


# -- a throwaway server ---------------------------------------------------------------------
def _bindir() -> str:
    import glob

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True) + [
        os.path.dirname(shutil.which("initdb") or "/nonexistent/x")
    ]:
        if os.path.exists(os.path.join(d, "pg_ctl")):
            return d
    sys.exit("PostgreSQL server binaries not found: pass --url")


class Server:
    def __init__(self, settings: list[str]):
        self.bindir = _bindir()
        self.root = tempfile.mkdtemp(prefix="bench-pg-")
        self.data = os.path.join(self.root, "data")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.settings = settings

    def _run(self, *args: str) -> None:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.root)

    def start(self) -> str:
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")
        opts = f"-k {self.root} -p {self.port} -c listen_addresses='' " + " ".join(f"-c {s}" for s in self.settings)
        self._run("pg_ctl", "-D", self.data, "-o", opts, "-l", os.path.join(self.root, "log"), "-w", "start")
        return f"postgresql://postgres@/postgres?host={self.root}&port={self.port}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


# -- helpers ------------------------------------------------------------------------------------
def connect(url: str):
    import adbc_driver_postgresql.dbapi as dbapi

    return dbapi.connect(url)


def sql(url: str, *statements: str, autocommit: bool = False) -> list:
    import adbc_driver_postgresql.dbapi as dbapi

    conn = dbapi.connect(url, autocommit=autocommit)
    out = []
    try:
        for s in statements:
            cur = conn.cursor()
            cur.execute(s)
            try:
                out = cur.fetchall()
            except Exception:  # noqa: BLE001 - no result set
                out = []
            cur.close()
        if not autocommit:
            conn.commit()
    finally:
        conn.close()
    return out


def fresh(url: str, *tables: str) -> None:
    """Drop the tables (and batchscore's ledger), then CHECKPOINT: each measurement starts alike."""
    drops = [f'DROP TABLE IF EXISTS "{t}"' for t in tables]
    drops += [f"DROP TABLE IF EXISTS {t}" for t in ("batchscore_shards", "batchscore_runs", "batchscore_meta")]
    sql(url, *drops)
    sql(url, "CHECKPOINT", autocommit=True)


def server_settings(url: str) -> dict[str, str]:
    names = ["server_version", "fsync", "synchronous_commit", "wal_level", "full_page_writes", "shared_buffers",
             "max_wal_size", "checkpoint_timeout", "wal_compression"]
    return {n: sql(url, f"SELECT current_setting('{n}')")[0][0] for n in names}


def batchscore_run(data: str, model: str, url: str, table: str, *extra: str, crash_at: str | None = None):
    """`batchscore run` as a subprocess: (process wall seconds, the run's wall_seconds, exit code)."""
    report = os.path.join(tempfile.gettempdir(), f"bench-pg-report-{os.getpid()}.json")
    if os.path.exists(report):
        os.remove(report)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSCORE_")}
    if crash_at:
        env["BATCHSCORE_TEST_CRASH_AT"] = crash_at
    cmd = [sys.executable, "-m", "batchscore", "run", data, "--model", model, "--keep", "id",
           "--output", url, "--table", table, "--quiet", "--report", report, *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    run_wall = None
    if os.path.exists(report):
        run_wall = json.load(open(report)).get("wall_seconds")
        os.remove(report)
    if proc.returncode not in (0, -9) or (crash_at is None and proc.returncode):
        sys.exit(f"batchscore run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, run_wall, proc.returncode


def parquet_run(data: str, model: str) -> float:
    """The run's own wall time into a Parquet directory (the pipeline alone)."""
    out = os.path.join(tempfile.gettempdir(), f"bench-pg-parquet-run-{os.getpid()}")
    report = out + ".json"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "batchscore", "run", data, "--model", model, "--keep", "id",
                    "--output", out, "--quiet", "--report", report], check=True)
    shutil.rmtree(out, ignore_errors=True)
    wall = json.load(open(report))["wall_seconds"]
    os.remove(report)
    return wall


def predictions(data: str, model: str) -> pa.Table:
    """The prediction rows, computed once by batchscore into Parquet and read back into memory."""
    out = os.path.join(tempfile.gettempdir(), f"bench-pg-parquet-{os.getpid()}")
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "batchscore", "run", data, "--model", model, "--keep", "id",
                    "--output", out, "--quiet"], check=True)
    table = pq.read_table(out)
    shutil.rmtree(out, ignore_errors=True)
    return table.combine_chunks()


def bare_ingest(url: str, table: pa.Table) -> float:
    fresh(url, "bench_ingest")
    sql(url, 'CREATE TABLE "bench_ingest" (id bigint, y real)')
    conn = connect(url)
    try:
        cur = conn.cursor()
        t0 = time.perf_counter()
        cur.adbc_ingest("bench_ingest", table, mode="append")
        conn.commit()
        dt = time.perf_counter() - t0
        cur.close()
    finally:
        conn.close()
    return dt


def pandas_to_sql(url: str, table: pa.Table, rows: int) -> float | None:
    try:
        import psycopg2  # noqa: F401
        from sqlalchemy import create_engine
    except ImportError:
        print("pandas: skipped (pip install sqlalchemy psycopg2-binary)", file=sys.stderr)
        return None
    from urllib.parse import parse_qsl, urlsplit

    u = urlsplit(url)
    q = dict(parse_qsl(u.query))
    engine = create_engine(
        f"postgresql+psycopg2://{u.username}@/{u.path.lstrip('/')}",
        connect_args={"host": q.get("host") or u.hostname, "port": q.get("port") or u.port or 5432},
    )
    fresh(url, "bench_pandas")
    sql(url, 'CREATE TABLE "bench_pandas" (id bigint, y real)')
    df = table.slice(0, rows).to_pandas()
    t0 = time.perf_counter()
    df.to_sql("bench_pandas", engine, if_exists="append", index=False)
    dt = time.perf_counter() - t0
    engine.dispose()
    return dt


def check(url: str, table_name: str, want: pa.Table) -> None:
    """The table holds exactly the prediction rows (count, id sum, y sum)."""
    import numpy as np

    got = sql(url, f'SELECT count(*), sum(id)::float8, sum(y::float8) FROM "{table_name}"')[0]
    ids = want.column("id").to_numpy()
    ys = want.column("y").to_numpy().astype(np.float64)
    assert got[0] == len(ids), (got, len(ids))
    assert got[1] == float(ids.sum()), got
    assert abs(got[2] - ys.sum()) < 1e-6 * max(1.0, abs(ys.sum())), (got[2], ys.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", type=Path, help="a folder from benchmarks/make_workload.py")
    ap.add_argument("--url", help="an existing server (default: start a throwaway one)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pandas-rows", type=int, default=None, help="rows for pandas to_sql (default: all)")
    ap.add_argument("--setting", action="append", default=[], help="extra server setting for the throwaway server, e.g. fsync=off")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    data, model = str(args.workload / "data"), str(args.workload / "model_h16.onnx")
    shards = len(list((args.workload / "data").glob("*.parquet")))
    server = None
    url = args.url
    if url is None:
        server = Server(args.setting)
        url = server.start()
    try:
        settings = server_settings(url)
        print("server:", json.dumps(settings), file=sys.stderr)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
        rows = predictions(data, model)
        n = rows.num_rows
        print(f"prediction rows: {n:,} (id int64, y float32), {shards} shards", file=sys.stderr)

        results: dict[str, list] = {"ingest": [], "run": [], "run_report": [], "parquet_report": [],
                                    "resume": [], "resume_report": [], "noop_report": [], "load_average_1m": []}
        for i in range(args.repeat):
            results["load_average_1m"].append(os.getloadavg()[0])
            results["ingest"].append(bare_ingest(url, rows))
            check(url, "bench_ingest", rows)
            fresh(url, "bench_run")
            wall, rep, _ = batchscore_run(data, model, url, "bench_run")
            check(url, "bench_run", rows)
            results["run"].append(wall)
            results["run_report"].append(rep)
            results["parquet_report"].append(parquet_run(data, model))
            fresh(url, "bench_run")
            batchscore_run(data, model, url, "bench_run", crash_at=f"after-commit@{shards // 2}")
            wall, rep, _ = batchscore_run(data, model, url, "bench_run", "--resume")
            check(url, "bench_run", rows)
            results["resume"].append(wall)
            results["resume_report"].append(rep)
            results["noop_report"].append(batchscore_run(data, model, url, "bench_run", "--resume")[1])
            print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in results.items()), file=sys.stderr)
        pandas_rows = min(args.pandas_rows or n, n)
        pandas_s = pandas_to_sql(url, rows, pandas_rows)
        med = {k: statistics.median(v) for k, v in results.items() if v}
        out = {
            "rows": n, "shards": shards, "server": settings, "indexes": "none",
            "cpus": os.cpu_count(),
            "median_seconds": {k: round(v, 3) for k, v in med.items()},
            "all_seconds": {k: [round(x, 3) for x in v] for k, v in results.items()},
            "run_over_ingest": round(med["run_report"] / med["ingest"], 3),
            "run_process_over_ingest": round(med["run"] / med["ingest"], 3),
            "run_over_parquet_run": round(med["run_report"] / med["parquet_report"], 3),
            "best_run_over_best_ingest": round(min(results["run_report"]) / min(results["ingest"]), 3),
            "resume_over_run": round(med["resume_report"] / med["run_report"], 3),
            "resume_over_run_without_fixed_cost": round(
                (med["resume_report"] - med["noop_report"]) / (med["run_report"] - med["noop_report"]), 3),
        }
        if pandas_s is not None:
            full = pandas_s * n / pandas_rows
            out.update(pandas_rows=pandas_rows, pandas_seconds=round(pandas_s, 3), pandas_seconds_full=round(full, 1),
                       pandas_over_run=round(full / med["run"], 2))
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
