#!/usr/bin/env python
"""Foundation benchmark: batchscore against its limits and its peers, side by side, in one run.

    python benchmarks/run_foundation.py                       # everything, H=16 and H=256, 4M rows
    python benchmarks/run_foundation.py --only read,compute,batchscore --repeat 3
    python benchmarks/run_foundation.py --batchscore-args "--threads 1" --batchscore-args "--threads 2"
    python benchmarks/run_foundation.py --growth              # batchscore peak RSS at 4M vs 16M rows

Peers (each its own subprocess; see peers.py):
  read (a), compute (b)  the limits; L = max(wall a, wall b, (CPU a + CPU b) / cores)
  naive (c), ray (d), daft (e), batchscore (f)   full pipelines Parquet -> model -> Parquet(id, y)

For every run the harness records the subprocess's wall seconds, its CPU seconds (os.wait4 rusage,
or the sampled process tree if larger), and the peak RSS of the whole process tree (psutil, summed
over the child and all its descendants every 0.2 s; Ray spreads over many processes; note that
shared memory, e.g. Ray's object store, counts once per process that maps it). The pipelines'
outputs are checked: only `id` plus one prediction column, row count, id sum, and predictions on a
few ids against onnxruntime.

Seconds: for (a) and (b) the measured region inside the process (the limit itself); for the
pipelines the whole subprocess, start-up included, as a user would time it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers as P  # noqa: E402  (light module: heavy imports are inside the peer functions)

ALL_PEERS = ["read", "compute", "naive", "ray", "daft", "batchscore"]
PIPELINES = {"naive", "ray", "daft", "batchscore"}
LABEL = {"read": "(a) read limit", "compute": "(b) compute limit", "naive": "(c) naive pandas loop",
         "ray": "(d) Ray Data", "daft": "(e) Daft", "batchscore": "(f) batchscore"}
TARGETS = {  # from the foundation issue
    16: {"L": 1.3, "ray": 8.0, "daft": 2.0, "naive": 1.0},
    256: {"L": 1.1, "ray": 1.0, "daft": 1.0, "naive": 1.0},
}
RSS_TARGET_MB = 400.0
RSS_GROWTH_TARGET = 0.15
DISTURBED = 0.25  # cores of other load above which a run is flagged
PEER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "true",
            "PYTHONWARNINGS": "ignore"}


def ncores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------------------------
# machine load and process-tree monitoring
# ----------------------------------------------------------------------------------------------
def _proc_stat() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / hz, total / hz


def wait_for_quiet(max_wait: float, threshold_cores: float) -> float:
    """Wait (up to max_wait s) until the machine's busy cores over 1 s drop below threshold."""
    if max_wait <= 0:
        return 0.0
    t0 = time.perf_counter()
    busy = 0.0
    while time.perf_counter() - t0 < max_wait:
        b0, _ = _proc_stat()
        time.sleep(1.0)
        b1, _ = _proc_stat()
        busy = b1 - b0
        if busy < threshold_cores:
            break
    return busy


def _vm_hwm(pid: int) -> int:
    """VmHWM of a process in bytes (0 if unreadable). Unlike ru_maxrss it starts afresh at exec,
    so it does not inherit the harness's own RSS through fork+exec."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMonitor(threading.Thread):
    """Samples RSS (summed) and CPU of a process and every descendant ever seen."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.known: dict[int, "psutil.Process"] = {pid: self.root}
        self.cpu_last: dict[int, float] = {}
        self.peak_rss = 0
        self.peak_pss = 0
        self.hwm: dict[int, int] = {}  # per-process VmHWM (peak RSS of its address space) seen
        self.pss_ok = True
        self.peak_procs = 0
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        ps = self.psutil
        try:
            for c in self.root.children(recursive=True):
                self.known.setdefault(c.pid, c)
        except ps.Error:
            pass
        rss, pss, procs = 0, 0, 0
        for pid, p in list(self.known.items()):
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    hwm = _vm_hwm(pid)
                    if hwm > self.hwm.get(pid, 0):
                        self.hwm[pid] = hwm
                    if self.pss_ok:
                        try:  # proportional set size: shared pages split between the processes
                            pss += p.memory_full_info().pss
                        except (AttributeError, ps.AccessDenied):
                            self.pss_ok = False
                    t = p.cpu_times()
                    self.cpu_last[pid] = t.user + t.system
                    procs += 1
                # descendants of processes that were re-parented away from the root
                if pid != self.root.pid:
                    for c in p.children(recursive=True):
                        self.known.setdefault(c.pid, c)
            except ps.Error:
                self.known.pop(pid, None)
        self.samples += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, procs)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @property
    def cpu(self) -> float:
        return sum(self.cpu_last.values())


def _kill_all(mon: TreeMonitor, pgid: int) -> int:
    """Terminate the child's process group and every descendant the monitor saw; return how many
    were still alive."""
    ps = mon.psutil
    alive = []
    for p in list(mon.known.values()):
        if p.pid == pgid:  # the child itself: the caller reaps it with wait4
            continue
        try:
            if p.is_running() and p.status() != ps.STATUS_ZOMBIE:
                alive.append(p)
        except ps.Error:
            pass
    try:
        os.killpg(pgid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    for p in alive:
        try:
            p.kill()
        except ps.Error:
            pass
    ps.wait_procs(alive, timeout=5)
    return len(alive)


def run_monitored(cmd: list[str], timeout: float, log_path: Path) -> dict:
    """Run cmd; return wall, rc, CPU, peak tree RSS, machine load from others."""
    env = {**os.environ, **PEER_ENV}
    b0, _ = _proc_stat()
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        mon = TreeMonitor(proc.pid)
        mon.start()
        deadline = t0 + timeout
        status, ru, timed_out = None, None, False
        while True:
            pid, st, r = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                status, ru = st, r
                break
            if time.perf_counter() > deadline:
                timed_out = True
                mon.sample()  # learn the latest descendants before killing
                _kill_all(mon, proc.pid)
                _, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        mon.stop()
    # anything of the tree still alive (e.g. Ray workers, which run in their own sessions) is a
    # leak: end it
    leaked = _kill_all(mon, proc.pid)
    b1, _ = _proc_stat()
    cpu_wait4 = ru.ru_utime + ru.ru_stime
    cpu = max(cpu_wait4, mon.cpu)
    return {"wall_s": wall, "rc": proc.returncode, "timed_out": timed_out,
            "cpu_s": cpu, "cpu_wait4_s": cpu_wait4, "cpu_sampled_s": mon.cpu,
            # ru_maxrss of a fork+exec'ed child includes the parent's RSS at fork (Linux keeps the
            # old mm's high-water mark across exec), so it is recorded but not used.
            "peak_rss_mb": max(mon.peak_rss, max(mon.hwm.values(), default=0)) / 2**20,
            "peak_tree_rss_mb": mon.peak_rss / 2**20,
            "peak_single_hwm_mb": max(mon.hwm.values(), default=0) / 2**20,
            "peak_tree_pss_mb": mon.peak_pss / 2**20 if mon.pss_ok else None, "maxrss_wait4_mb": ru.ru_maxrss / 1024,
            "peak_procs": mon.peak_procs, "rss_samples": mon.samples,
            "other_load_cores": max(0.0, (b1 - b0 - cpu)) / wall if wall > 0 else 0.0,
            "leaked_processes": leaked}


# ----------------------------------------------------------------------------------------------
# output checks
# ----------------------------------------------------------------------------------------------
class Checker:
    def __init__(self, data_dir: Path, rows: int, models: dict[int, Path]):
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        self.rows = rows
        rng = np.random.default_rng(7)
        fixed = [0, 1, 131_071, 131_072, rows // 8 - 1, rows // 8, rows // 2, rows - 1]
        ids = sorted(set(int(i) for i in fixed + list(rng.integers(0, rows, 8)) if 0 <= i < rows))
        t = ds.dataset(P.shard_files(data_dir), format="parquet").to_table(
            columns=P.COLUMNS, filter=pc.field("id").isin(ids))
        t = t.sort_by("id")
        self.ids = t.column("id").to_numpy()
        X = np.stack([t.column(c).to_numpy() for c in P.FEATURES], axis=1).astype(np.float32)
        import onnxruntime as ort

        self.ref = {}
        for h, path in models.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            self.ref[h] = sess.run(None, {sess.get_inputs()[0].name: X})[0].reshape(-1)

    def check(self, out_dir: Path, h: int) -> dict:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.dataset as ds

        files = sorted(str(p) for p in Path(out_dir).rglob("*.parquet")
                       if not any(part.startswith((".", "_")) for part in p.relative_to(out_dir).parts))
        if not files:
            return {"ok": False, "error": f"no Parquet output under {out_dir}"}
        dset = ds.dataset(files, format="parquet")
        names = dset.schema.names
        if "id" not in names or len(names) != 2:
            return {"ok": False, "error": f"output columns {names}, expected id + one prediction"}
        pred = [n for n in names if n != "id"][0]
        idcol = dset.to_table(columns=["id"]).column("id")
        n = len(idcol)
        id_sum = pc.sum(idcol).as_py() if n else 0
        expect_sum = self.rows * (self.rows - 1) // 2
        sub = dset.to_table(filter=pc.field("id").isin(self.ids.tolist())).sort_by("id")
        col = sub.column(pred).combine_chunks()
        while pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or \
                pa.types.is_large_list(col.type):
            col = col.flatten()
        got = col.to_numpy(zero_copy_only=False).astype(np.float64)
        res = {"files": len(files), "rows": n, "pred_column": pred, "pred_type": str(dset.schema.field(pred).type)}
        errs = []
        if n != self.rows:
            errs.append(f"rows {n} != {self.rows}")
        if id_sum != expect_sum:
            errs.append(f"id sum {id_sum} != {expect_sum}")
        if sub.num_rows != len(self.ids) or got.shape[0] != len(self.ids) or \
                not np.array_equal(sub.column("id").to_numpy(), self.ids):
            errs.append(f"spot-check ids: found {sub.num_rows} of {len(self.ids)}")
        else:
            diff = float(np.abs(got - self.ref[h]).max())
            res["max_abs_err"] = diff
            if diff > 1e-4:
                errs.append(f"predictions differ from onnxruntime by {diff:.3g}")
        res["ok"] = not errs
        if errs:
            res["error"] = "; ".join(errs)
        return res


# ----------------------------------------------------------------------------------------------
# one run of one peer
# ----------------------------------------------------------------------------------------------
def batchscore_cmd(args, variant: str, data: Path, model: Path, out: Path, report: Path) -> list[str] | str:
    base = shlex.split(args.batchscore_cmd)
    exe = shutil.which(base[0]) if base else None
    if not exe:
        return f"`{args.batchscore_cmd}` not found on PATH"
    return [*base, "run", str(data), "--model", str(model), "--output", str(out), "--keep", "id",
            "--if-exists", "replace", "--quiet", "--report", str(report), *shlex.split(variant)]


def run_peer(args, peer: str, variant: str, h: int, data: Path, model: Path, work: Path,
             checker: Checker | None) -> dict:
    tag = f"{peer}{'-%08x' % zlib.crc32(variant.encode()) if variant else ''}-h{h}"
    out = work / "out" / tag
    res_path = work / f"{tag}.result.json"
    log = work / f"{tag}.log"
    for p in (out,):
        shutil.rmtree(p, ignore_errors=True)
    res_path.unlink(missing_ok=True)
    if peer == "batchscore":
        cmd = batchscore_cmd(args, variant, data, model, out, res_path)
        if isinstance(cmd, str):
            return {"skipped": cmd}
    else:
        cmd = [sys.executable, str(HERE / "peers.py"), peer, "--data", str(data), "--model", str(model),
               "--out", str(out), "--result", str(res_path), "--batch-size", str(args.batch_size),
               *shlex.split(variant)]
    bg = wait_for_quiet(args.quiet_wait, args.quiet_threshold)
    m = run_monitored(cmd, args.timeout, log)
    m["cmd"] = shlex.join(cmd)
    m["busy_before_cores"] = bg
    inner = {}
    if res_path.exists():
        try:
            inner = json.loads(res_path.read_text())
        except json.JSONDecodeError:
            inner = {"unparsed": res_path.read_text()[:2000]}
    m["inner"] = inner
    if m["rc"] != 0 or m["timed_out"]:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        m["error"] = ("timed out after %ss" % args.timeout) if m["timed_out"] else f"exit code {m['rc']}"
        m["log_tail"] = tail
        return m
    if peer in ("read", "compute"):
        m["seconds"] = inner["wall_s"]
        m["cpu_s_measured"] = inner["cpu_s"]
        m["peak_rss_mb"] = m["peak_rss_mb"]
    else:
        m["seconds"] = m["wall_s"]
        if checker is not None:
            m["check"] = checker.check(out, h)
            if not m["check"]["ok"]:
                m["error"] = "output check failed: " + m["check"].get("error", "?")
        if not args.keep_output:
            shutil.rmtree(out, ignore_errors=True)
    return m


# ----------------------------------------------------------------------------------------------
# workload
# ----------------------------------------------------------------------------------------------
def ensure_workload(path: Path, rows: int, models: bool) -> dict:
    meta_path = path / "workload.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        ok = meta["rows"] == rows and (not models or all((path / f"model_h{h}.onnx").exists() for h in (16, 256)))
        if ok:
            return meta
    cmd = [sys.executable, str(HERE / "make_workload.py"), str(path), "--rows", str(rows)]
    if not models:
        cmd.append("--no-models")
    print(f"# generating workload: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(meta_path.read_text())


def warm_cache(data: Path) -> float:
    t0 = time.perf_counter()
    for f in P.shard_files(data):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def fmt(v, spec=".2f", none="–", suffix=""):
    return none if v is None else format(v, spec) + suffix


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if "seconds" in r and not r.get("error")]
    if not ok:
        return {"ok": False, "n": 0, "error": next((r.get("error") or r.get("skipped") for r in runs), "no run")}
    med = lambda k: statistics.median(r[k] for r in ok)  # noqa: E731
    s = {"ok": True, "n": len(ok), "seconds": med("seconds"), "wall_s": med("wall_s"), "cpu_s": med("cpu_s"),
         "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
         "peak_pss_mb": max((r.get("peak_tree_pss_mb") or 0) for r in ok) or None, "other_load_cores": med("other_load_cores"),
         "seconds_all": [r["seconds"] for r in ok], "peak_procs": max(r["peak_procs"] for r in ok)}
    if "cpu_s_measured" in ok[0]:
        s["cpu_s_measured"] = med("cpu_s_measured")
    inner = [r["inner"].get("wall_s", r["inner"].get("wall_seconds")) for r in ok
             if isinstance(r.get("inner"), dict)]
    inner = [v for v in inner if isinstance(v, (int, float))]
    if inner:
        s["inner_wall_s"] = statistics.median(inner)
    return s


def build_tables(results: dict, rows: int, cores: int, peer_names: list[str]) -> tuple[str, dict]:
    lines, derived = [], {}
    for h, per in results.items():
        S = {name: summarize(rs) for name, rs in per.items()}
        a, b = S.get("read"), S.get("compute")
        L = None
        if a and b and a["ok"] and b["ok"]:
            L = max(a["seconds"], b["seconds"], (a["cpu_s_measured"] + b["cpu_s_measured"]) / cores)
        bs_name = next((n for n in peer_names if n.startswith("batchscore") and S.get(n, {}).get("ok")), None)
        bs = S[bs_name]["seconds"] if bs_name else None
        lines.append(f"\n### H={h}  ({rows:,} rows)\n")
        if L is not None:
            lines.append(f"L = max(wall a {a['seconds']:.2f}, wall b {b['seconds']:.2f}, "
                         f"(CPU a {a['cpu_s_measured']:.2f} + CPU b {b['cpu_s_measured']:.2f}) / {cores} cores "
                         f"= {(a['cpu_s_measured'] + b['cpu_s_measured']) / cores:.2f}) = **{L:.2f} s**\n")
        lines.append("| peer | seconds | rows/s | peak RSS MB | time / L | time / batchscore | CPU s | "
                     "in-process s | peak PSS MB | procs | other load (cores) | runs |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in peer_names:
            s = S.get(name)
            if s is None:
                continue
            if name in LABEL:
                label = LABEL[name]
            elif name.startswith("batchscore"):
                label = f"{LABEL['batchscore']} `{name[len('batchscore'):].strip()}`"
            else:
                label = name
            if not s["ok"]:
                lines.append(f"| {label} | – | – | – | – | – | – | – | – | – | – | failed/skipped: "
                             f"{str(s.get('error', ''))[:120].replace('|', '/')} |")
                continue
            sec = s["seconds"]
            cpu = s.get("cpu_s_measured", s["cpu_s"])
            lines.append(
                f"| {label} | {sec:.2f} | {rows / sec:,.0f} | {s['peak_rss_mb']:.0f} | "
                f"{fmt(sec / L if L else None)} | {fmt(sec / bs if bs else None, '.2f', '–', '×')} | {cpu:.2f} | "
                f"{fmt(s.get('inner_wall_s'))} | {fmt(s.get('peak_pss_mb'), '.0f')} | {s['peak_procs']} | "
                f"{s['other_load_cores']:.2f} | {s['n']} |")
        noisy = [n for n, s in S.items() if s.get("ok") and s["other_load_cores"] > DISTURBED]
        if noisy:
            lines.append(f"\n**Disturbed:** other processes used more than {DISTURBED} cores during "
                         f"{', '.join(noisy)} (median); those numbers are not clean.")
        d = {"L": L, "summary": S, "batchscore": bs_name, "disturbed": noisy}
        if bs_name and L:
            t = TARGETS.get(h)
            checks = []
            if t:
                checks.append(("batchscore / L", bs / L, f"≤ {t['L']}", bs / L <= t["L"]))
                for peer, k in (("ray", t["ray"]), ("daft", t["daft"]), ("naive", t["naive"])):
                    if S.get(peer, {}).get("ok"):
                        r = S[peer]["seconds"] / bs
                        want = f"≥ {k}×" if k > 1 else "> 1×"
                        checks.append((f"{peer} / batchscore", r, want, r >= k if k > 1 else r > 1))
            rss = S[bs_name]["peak_rss_mb"]
            checks.append(("batchscore peak RSS MB", rss, f"< {RSS_TARGET_MB:.0f}", rss < RSS_TARGET_MB))
            lines.append("\n| target | measured | wanted | met |\n|---|---:|---|---|")
            for name, val, want, ok in checks:
                lines.append(f"| {name} | {val:.2f} | {want} | {'yes' if ok else '**no**'} |")
            d["targets"] = [{"name": n, "value": v, "wanted": w, "met": ok} for n, v, w, ok in checks]
        derived[h] = d
    return "\n".join(lines), derived


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": ncores()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import psutil

        info["mem_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    from importlib import metadata

    for pkg in ("numpy", "pyarrow", "pandas", "onnxruntime", "onnx", "torch", "ray", "daft", "batchscore"):
        try:
            info[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return info


def results_path(results_dir: Path, stem: str) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    day = dt.date.today().isoformat()
    p = results_dir / f"{stem}-{day}.md"
    if p.exists():
        p = results_dir / f"{stem}-{day}-{dt.datetime.now().strftime('%H%M%S')}.md"
    return p


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--workload", type=Path, help="workload dir (default /tmp/bench/workload-<rows>)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/bench/runs"), help="outputs and logs")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    ap.add_argument("--hidden", default="16,256", help="comma-separated H values")
    ap.add_argument("--only", default=",".join(ALL_PEERS), help=f"comma-separated subset of {ALL_PEERS}")
    ap.add_argument("--repeat", type=int, default=1, help="runs per peer; the table shows medians")
    ap.add_argument("--batch-size", type=int, default=65_536, help="inference batch rows for the peers")
    ap.add_argument("--batchscore-cmd", default="batchscore", help="how to invoke batchscore")
    ap.add_argument("--batchscore-args", action="append", default=None,
                    help="extra batchscore flags, e.g. \"--threads 1 --prefetch 2\"; repeat to sweep")
    ap.add_argument("--peer-args", action="append", default=[], metavar="PEER=ARGS",
                    help="extra peers.py flags for one peer, e.g. ray=\"--ray-actors 2\"")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per peer run")
    ap.add_argument("--quiet-wait", type=float, default=20,
                    help="before each run wait up to this many s for the machine to go quiet (0: no wait)")
    ap.add_argument("--quiet-threshold", type=float, default=0.3, help="busy cores counted as quiet")
    ap.add_argument("--retry-disturbed", type=int, default=0, metavar="N",
                    help="rerun a run up to N times while other processes used more than "
                         "--disturbed-threshold cores during it; the least disturbed attempt is kept "
                         "(the others stay in the JSON)")
    ap.add_argument("--disturbed-threshold", type=float, default=0.25)
    ap.add_argument("--keep-output", action="store_true", help="keep the pipelines' Parquet output")
    ap.add_argument("--no-check", action="store_true", help="skip the output checks")
    ap.add_argument("--growth", action="store_true",
                    help="measure batchscore peak RSS at --rows and 4x --rows instead of the comparison")
    ap.add_argument("--no-write", action="store_true", help="print only, write no results files")
    args = ap.parse_args(argv)

    hidden = [int(x) for x in args.hidden.split(",") if x]
    peers = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = [p for p in peers if p not in ALL_PEERS]
    if bad:
        ap.error(f"unknown peers {bad}; choose from {ALL_PEERS}")
    variants = args.batchscore_args or [""]
    peer_extra: dict[str, str] = {}
    for item in args.peer_args:
        k, _, v = item.partition("=")
        peer_extra[k] = (peer_extra.get(k, "") + " " + v).strip()
    cores = ncores()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    wl = args.workload or Path(f"/tmp/bench/workload-{args.rows // 1_000_000}M"
                                if args.rows % 1_000_000 == 0 else f"/tmp/bench/workload-{args.rows}")
    meta = ensure_workload(wl, args.rows, models=True)
    data = Path(meta["data_dir"])
    models = {h: wl / f"model_h{h}.onnx" for h in hidden}
    for h, m in models.items():
        if not m.exists():
            ap.error(f"no model {m} (make_workload.py exports H=16 and H=256)")

    if args.growth:
        return growth(args, wl, data, models, variants, cores, work)

    print(f"# warm page cache: {warm_cache(data):.1f}s; machine: {cores} cores", file=sys.stderr)
    checker = None if args.no_check else Checker(data, args.rows, models)
    names = []
    for p in peers:
        if p == "batchscore":
            names += [("batchscore" + (" " + v if v else ""), v) for v in variants]
        else:
            names.append((p, peer_extra.get(p, "")))
    results: dict[int, dict[str, list]] = {h: {n: [] for n, _ in names} for h in hidden}
    t_all = time.perf_counter()
    for rep in range(args.repeat):
        for h in hidden:
            for name, variant in names:
                peer = "batchscore" if name.startswith("batchscore") else name
                print(f"# [{rep + 1}/{args.repeat}] H={h} {name} ...", file=sys.stderr, flush=True)
                attempts = []
                while True:
                    r = run_peer(args, peer, variant, h, data, models[h], work, checker)
                    attempts.append(r)
                    if (r.get("skipped") or r.get("error") or len(attempts) > args.retry_disturbed
                            or r["other_load_cores"] <= args.disturbed_threshold):
                        break
                    print(f"#   disturbed: {r['seconds']:.2f}s with {r['other_load_cores']:.2f} cores of other "
                          f"load; again", file=sys.stderr, flush=True)
                # keep the least disturbed attempt
                good = [a for a in attempts if "seconds" in a and not a.get("error")]
                if good:
                    r = min(good, key=lambda a: a["other_load_cores"])
                r["discarded_disturbed"] = [{k: a.get(k) for k in ("seconds", "wall_s", "cpu_s", "peak_rss_mb",
                                                                   "other_load_cores")}
                                            for a in attempts if a is not r]
                results[h][name].append(r)
                if r.get("skipped"):
                    msg = f"skipped: {r['skipped']}"
                elif r.get("error"):
                    msg = f"FAILED: {r['error']}\n{r.get('log_tail', '')[-1500:]}"
                else:
                    msg = (f"{r['seconds']:.2f}s (process {r['wall_s']:.2f}s, CPU {r['cpu_s']:.2f}s, "
                           f"peak RSS {r['peak_rss_mb']:.0f} MB, other load {r['other_load_cores']:.2f} cores)")
                print(f"#   {msg}", file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all

    table, derived = build_tables(results, args.rows, cores, [n for n, _ in names])
    info = machine_info()
    head = [f"# Foundation benchmark — {dt.datetime.now().isoformat(timespec='seconds')}\n",
            f"Workload: {args.rows:,} rows, {meta['shards']} shards, snappy, {meta['row_group_size']:,}-row row "
            f"groups, {meta['data_bytes'] / 1e6:.0f} MB (`{wl}`); MLP 32→H→H→1 (ONNX). "
            f"Inference batch {args.batch_size:,} rows for the peers. Repeats: {args.repeat} (medians; "
            f"peak RSS is the max). Warm page cache. Total harness time {total:.0f}s.\n",
            "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n",
            "Seconds: (a)/(b) measured region in-process; pipelines: the whole subprocess incl. start-up. "
            "*in-process s*: the peer's own timing without interpreter start/imports (Ray: without "
            "`ray.init`). *other load*: machine CPU used by processes outside the run, in cores "
            "(this box is shared; > 0.2 means the numbers are disturbed). Peak RSS: process tree sum "
            "sampled every 0.2 s (or the largest VmHWM of one process, if larger); peak PSS: the same tree with shared pages "
            "split between processes (fairer to multi-process peers); procs: most processes seen at once.\n"]
    md = "\n".join(head) + table + "\n"
    print(md)
    payload = {"date": dt.datetime.now().isoformat(timespec="seconds"), "args": {k: str(v) for k, v in vars(args).items()},
               "machine": info, "workload": meta, "cores": cores, "total_s": total,
               "derived": {str(h): d for h, d in derived.items()},
               "runs": {str(h): per for h, per in results.items()}}
    if not args.no_write:
        p = results_path(args.results_dir, "foundation")
        p.write_text(md)
        p.with_suffix(".json").write_text(json.dumps(payload, indent=1, default=str))
        print(f"# wrote {p} and {p.with_suffix('.json')}", file=sys.stderr)
    return 0


def growth(args, wl: Path, data: Path, models: dict, variants: list[str], cores: int, work: Path) -> int:
    """batchscore peak RSS at rows and 4x rows (the second workload shares the first one's models)."""
    big_rows = args.rows * 4
    big_wl = Path(f"/tmp/bench/workload-{big_rows // 1_000_000}M" if big_rows % 1_000_000 == 0
                  else f"/tmp/bench/workload-{big_rows}")
    big_meta = ensure_workload(big_wl, big_rows, models=False)
    sizes = [(args.rows, data), (big_rows, Path(big_meta["data_dir"]))]
    lines = [f"# Growth — batchscore peak RSS, {dt.datetime.now().isoformat(timespec='seconds')}\n",
             "| H | variant | rows | seconds | rows/s | peak RSS MB | growth |", "|---|---|---:|---:|---:|---:|---:|"]
    out = {}
    ok_all = True
    for h in sorted(models):
        for v in variants:
            prev = None
            for rows, d in sizes:
                print(f"# growth H={h} rows={rows:,} {v}", file=sys.stderr, flush=True)
                warm_cache(d)
                checker = None if args.no_check else Checker(d, rows, {h: models[h]})
                runs = [run_peer(args, "batchscore", v, h, d, models[h], work, checker) for _ in range(args.repeat)]
                s = summarize(runs)
                out[f"{h}|{v}|{rows}"] = {"summary": s, "runs": runs}
                if not s["ok"]:
                    print(f"#   {s.get('error')}\n{runs[-1].get('log_tail', '')[-1500:]}", file=sys.stderr)
                    lines.append(f"| {h} | `{v or 'default'}` | {rows:,} | failed: {str(s.get('error'))[:100]} | | | |")
                    ok_all = False
                    break
                g = "" if prev is None else f"{(s['peak_rss_mb'] / prev - 1) * 100:+.1f}%"
                if prev is not None:
                    ok = s["peak_rss_mb"] / prev - 1 < RSS_GROWTH_TARGET and s["peak_rss_mb"] < RSS_TARGET_MB
                    g += "" if ok else " **(target missed)**"
                lines.append(f"| {h} | `{v or 'default'}` | {rows:,} | {s['seconds']:.2f} | {rows / s['seconds']:,.0f} | "
                             f"{s['peak_rss_mb']:.0f} | {g} |")
                prev = s["peak_rss_mb"]
    lines.append(f"\nTargets: peak RSS < {RSS_TARGET_MB:.0f} MB and growth < {RSS_GROWTH_TARGET:.0%} for 4× rows.")
    md = "\n".join(lines) + "\n"
    print(md)
    if not args.no_write:
        p = results_path(args.results_dir, "growth")
        p.write_text(md)
        p.with_suffix(".json").write_text(json.dumps(out, indent=1, default=str))
        print(f"# wrote {p}", file=sys.stderr)
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
