#!/usr/bin/env python
"""Backends benchmark: `batchscore run` against the framework's own tight loop, on CPU.

One compute-bound conv net on image-like rows (3×64×64 float32 as a fixed-size
list column), saved as TorchScript and as ONNX. For each backend:

  loop        the framework's tight loop over the same data already in memory
              (a numpy array [N,3,64,64]), same batch size, same threads: the limit
  batchscore  `batchscore run DATA --model M --keep id` in a subprocess, as a user times it

    python benchmarks/bench_backends.py                      # 8192 rows, batch 256, median of 3
    python benchmarks/bench_backends.py --rows 2048 --repeat 1 --only torch

Scratch data lives under /tmp/bench/images-<rows> (reused). Results go to
benchmarks/results/backends-<date>.md and .json. GPU figures: not measured here.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHAPE = (3, 64, 64)


def build_net():
    import torch

    class ConvNet(torch.nn.Module):
        """≈41 MFLOP a row: 3→16 (64²), 16→32 s2, 32→64 s2, 64→64 (16²), mean, 64→10."""

        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.c2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.c3 = torch.nn.Conv2d(32, 64, 3, stride=2, padding=1)
            self.c4 = torch.nn.Conv2d(64, 64, 3, padding=1)
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, image):
            y = torch.relu(self.c1(image))
            y = torch.relu(self.c2(y))
            y = torch.relu(self.c3(y))
            y = torch.relu(self.c4(y))
            return self.fc(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return ConvNet().eval()


def make_workload(root: Path, rows: int, shards: int = 4) -> dict[str, str]:
    """Parquet shards of ``id`` + ``image`` and the net as TorchScript and ONNX (reused if present)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = root / "data"
    paths = {"data": str(data), "parquet": str(data), "ipc": str(root / "ipc"),
             "torch": str(root / "net.pt"), "onnx": str(root / "net.onnx")}
    if (root / "done").exists():
        _ipc_copy(data, root / "ipc")
        return paths
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = int(np.prod(SHAPE))
    start = 0
    for i in range(shards):
        n = rows // shards + (1 if i < rows % shards else 0)
        flat = rng.random((n, per), dtype=np.float32)
        image = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), per)
        t = pa.table({"id": pa.array(np.arange(start, start + n, dtype=np.int64)), "image": image})
        pq.write_table(t, data / f"part-{i:03d}.parquet", row_group_size=1024)
        start += n
    import torch

    net = build_net()
    example = torch.zeros(2, *SHAPE)
    meta = json.dumps({"inputs": [{"name": "image", "dtype": "float32", "shape": [None, *SHAPE]}]})
    torch.jit.save(torch.jit.script(net), paths["torch"], _extra_files={"batchscore.json": meta})
    kw = dict(input_names=["image"], output_names=["output"], dynamic_axes={"image": {0: "batch"}, "output": {0: "batch"}})
    try:
        try:
            torch.onnx.export(net, (example,), paths["onnx"], dynamo=False, **kw)
        except TypeError:  # an older torch without the dynamo switch
            torch.onnx.export(net, (example,), paths["onnx"], **kw)
    except Exception as exc:  # noqa: BLE001 - e.g. no `onnx` package on the GPU machine: torch only
        print(f"warning: no ONNX copy of the net ({type(exc).__name__}: {exc}); run with --only torch", flush=True)
    _ipc_copy(data, root / "ipc")
    (root / "done").write_text("ok")
    return paths


def _ipc_copy(data: Path, ipc: Path) -> None:
    """The same shards as uncompressed Arrow IPC files (read by memory map, no decoding)."""
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    if (ipc / "done").exists():
        return
    ipc.mkdir(parents=True, exist_ok=True)
    for part in sorted(data.glob("*.parquet")):
        feather.write_feather(pq.read_table(part), ipc / part.with_suffix(".arrow").name,
                              compression="uncompressed", chunksize=1024)
    (ipc / "done").write_text("ok")


def _busy_jiffies() -> float:
    with open("/proc/stat") as fh:
        parts = [float(v) for v in fh.readline().split()[1:]]
    return (sum(parts) - parts[3] - parts[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to max_wait s) until other work keeps fewer than ``threshold`` cores busy; returns busy cores."""
    t0, busy = time.perf_counter(), 0.0
    while time.perf_counter() - t0 < max_wait:
        b0 = _busy_jiffies()
        time.sleep(1.0)
        busy = _busy_jiffies() - b0
        if busy < threshold:
            break
    return busy


def load_images(data: str):
    import numpy as np
    import pyarrow.parquet as pq

    parts = sorted(Path(data).glob("*.parquet"))
    arrays = [pq.read_table(p, columns=["image"]).column("image").combine_chunks().flatten().to_numpy() for p in parts]
    return np.concatenate(arrays).reshape((-1, *SHAPE))


def loop_torch(model: str, data: str, batch: int, threads: int, device: str = "cpu") -> dict:
    import torch

    torch.set_num_threads(threads)
    x = load_images(data)
    dev = torch.device("cuda", 0) if device == "gpu" else torch.device("cpu")
    m = torch.jit.load(model, map_location=dev).eval()
    if dev.type == "cuda":  # warm up (kernel choice) outside the timed region, as batchscore's probe does
        with torch.inference_mode():
            m(torch.from_numpy(x[:batch]).to(dev)).cpu()
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for lo in range(0, len(x), batch):
            # On a GPU the host-to-device copy of each batch is part of the loop, as in batchscore.
            m(torch.from_numpy(x[lo : lo + batch]).to(dev)).cpu().numpy()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "rows": len(x)}


def loop_onnx(model: str, data: str, batch: int, threads: int, device: str = "cpu") -> dict:
    import onnxruntime as ort

    x = load_images(data)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
    s = ort.InferenceSession(model, so, providers=providers)
    if device == "gpu":
        s.run(None, {"image": x[:batch]})  # warm up outside the timed region
    t0, c0 = time.perf_counter(), time.process_time()
    for lo in range(0, len(x), batch):
        s.run(None, {"image": x[lo : lo + batch]})
    return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0, "rows": len(x)}


def child(args) -> None:
    """One measured loop in this process; prints JSON."""
    fn = loop_torch if args.child == "torch" else loop_onnx
    print(json.dumps(fn(args.model, args.data, args.batch_size, args.threads, args.device)))


class GpuSampler:
    """nvidia-smi's utilization.gpu every 100 ms while a run lasts: the mean and the
    share of samples at 0% (the GPU sat idle). Nothing on a machine without nvidia-smi."""

    def __init__(self):
        import shutil

        self.smi = shutil.which("nvidia-smi")
        self.proc = None

    def __enter__(self):
        if self.smi:
            self.proc = subprocess.Popen(
                [self.smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0", "-lms", "100"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            vals = [float(v) for v in out.split() if v.replace(".", "", 1).isdigit()]
            self.result = {"gpu_util_mean": statistics.mean(vals) if vals else None,
                           "gpu_idle_share": sum(v == 0 for v in vals) / len(vals) if vals else None,
                           "gpu_samples": len(vals)}
        else:
            self.result = {}
        return False


def run_loop(backend: str, paths: dict, batch: int, threads: int, device: str = "cpu") -> dict:
    cmd = [sys.executable, __file__, "--child", backend, "--model", paths[backend], "--data", paths["data"],
           "--batch-size", str(batch), "--threads", str(threads), "--device", device]
    t0 = time.perf_counter()
    with GpuSampler() as gpu:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    whole = time.perf_counter() - t0
    r = json.loads(out.strip().splitlines()[-1])
    r["whole_seconds"] = whole  # the script as a user runs it: start, imports, read Parquet, load, loop
    r.update(gpu.result)  # sampled over the whole process, start-up included
    return r


def run_batchscore(backend: str, paths: dict, batch: int, threads: int, work: Path, fmt: str = "parquet",
                   device: str = "cpu") -> dict:
    report = work / f"report-{backend}.json"
    cmd = ["batchscore", "run", paths[fmt], "--model", paths[backend], "--output", str(work / f"out-{backend}"),
           "--keep", "id", "--if-exists", "replace", "--quiet", "--device", device, "--batch-size", str(batch),
           "--threads", str(threads), "--report", str(report)]
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with GpuSampler() as gpu:
        subprocess.run(cmd, check=True, cwd=work)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    rep = json.loads(report.read_text())
    setup = rep.get("setup_seconds") or 0.0
    return {"seconds": wall, "run_seconds": rep.get("wall_seconds"), "setup_seconds": setup,
            "scoring_seconds": (rep.get("wall_seconds") or wall) - setup, "cpu_seconds": cpu,
            "rows": rep.get("rows_written"), **gpu.result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="default: the cores this process may use")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default="torch,onnx")
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                    help="gpu: the loop and batchscore on CUDA GPU 0, host-to-device copies included; GPU use is sampled")
    ap.add_argument("--formats", default="parquet,ipc", help="input formats batchscore reads (the loop's data is in memory)")
    ap.add_argument("--quiet-wait", type=float, default=30, help="before each run wait up to this many s for the machine to go quiet")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write results/")
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--data")
    args = ap.parse_args()
    if args.child:
        return child(args)
    sys.path.insert(0, str(ROOT))
    from batchscore.devices import cpu_count

    threads = args.threads or cpu_count()
    root = Path(f"/tmp/bench/images-{args.rows}")
    t0 = time.perf_counter()
    paths = make_workload(root, args.rows)
    print(f"workload: {args.rows} rows in {paths['data']} ({time.perf_counter() - t0:.1f} s)", flush=True)
    work = Path("/tmp/bench/runs-backends")
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"rows": args.rows, "batch_size": args.batch_size, "threads": threads, "runs": {}}
    kinds = ["loop"] + [f"batchscore-{f}" for f in args.formats.split(",")]
    for backend in args.only.split(","):
        for kind in kinds:
            results["runs"][f"{backend}/{kind}"] = []
    for i in range(args.repeat):
        for backend in args.only.split(","):
            # Alternate the two so a change in the machine's load hits both alike.
            for kind in kinds:
                busy = wait_for_quiet(args.quiet_wait)
                load = os.getloadavg()[0]
                if kind == "loop":
                    r = run_loop(backend, paths, args.batch_size, threads, args.device)
                else:
                    r = run_batchscore(backend, paths, args.batch_size, threads, work, kind.split("-", 1)[1],
                                       args.device)
                r["load_before"] = load
                r["busy_cores_before"] = busy
                r["load_after"] = os.getloadavg()[0]
                results["runs"][f"{backend}/{kind}"].append(r)
                extra = f" (run {r['run_seconds']:.2f} s)" if r.get("run_seconds") else ""
                print(f"[{i + 1}/{args.repeat}] {backend:5} {kind:10} {r['seconds']:7.2f} s{extra}  "
                      f"{r['rows'] / r['seconds']:8.0f} rows/s  cpu {r['cpu_seconds']:.2f} s  other work {busy:.2f} cores, "
                      f"load {r['load_before']:.2f}->{r['load_after']:.2f}", flush=True)
    lines = [
        f"# Backends benchmark {dt.date.today()}",
        "",
        f"{args.rows} rows of 3×64×64 float32 (fixed-size list), conv net ≈41 MFLOP/row, batch {args.batch_size}, "
        f"{threads} threads, device {args.device}; median of {args.repeat}. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; 1-min load average before/after each run is in the JSON.",
        "",
        "| backend | batchscore reads | loop, timed region (s) | batchscore scoring (s) | **ratio** | loop script, whole (s) | "
        "batchscore run, whole (s) | ratio | CPU s loop / batchscore |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for backend in args.only.split(","):
        loops = results["runs"][f"{backend}/loop"]
        loop = statistics.median(r["seconds"] for r in loops)
        loop_whole = statistics.median(r["whole_seconds"] for r in loops)
        cl = statistics.median(r["cpu_seconds"] for r in loops)
        for kind in kinds[1:]:
            runs = results["runs"][f"{backend}/{kind}"]
            fmt = kind.split("-", 1)[1]
            bs = statistics.median(r["seconds"] for r in runs)
            inner = statistics.median(r["run_seconds"] or r["seconds"] for r in runs)
            scoring = statistics.median(r["scoring_seconds"] for r in runs)
            cb = statistics.median(r["cpu_seconds"] for r in runs)
            summary[f"{backend}/{fmt}"] = {
                "loop": loop, "loop_whole": loop_whole, "batchscore": bs, "batchscore_run": inner,
                "batchscore_scoring": scoring, "ratio_scoring": scoring / loop, "ratio_whole": bs / loop_whole,
                "ratio_whole_vs_loop": bs / loop, "cpu_loop": cl, "cpu_batchscore": cb,
            }
            lines.append(f"| {backend} | {fmt} | {loop:.2f} | {scoring:.2f} | **{scoring / loop:.2f}×** | {loop_whole:.2f} | "
                         f"{bs:.2f} | {bs / loop_whole:.2f}× | {cl:.1f} / {cb:.1f} |")
    lines += ["", "- **loop, timed region**: the framework's own tight loop over the data already in memory (a numpy "
              "array), model loaded, same batch size and threads: the limit the issue names.",
              "- **batchscore scoring**: the run's wall time less its setup (`wall_seconds - setup_seconds` from "
              "--report: from reading the first row to the last commit, i.e. reading and decoding the input, "
              "feature building, the model, writing Parquet). **ratio** = scoring / loop.",
              "- **whole**: each as a user times it, in a fresh process: the loop script (start Python, import the "
              "framework, read the Parquet into memory, load the model, loop) against `batchscore run` (start, "
              "imports, plan, model load, the pipeline, writing).",
              "- CPU seconds: the loop's timed region; batchscore's whole process.",
              "Other work on this 2-core machine: each run waited up to --quiet-wait s for it to go quiet; the busy "
              "cores seen just before each run are in the JSON (busy_cores_before).", "",
              ("GPU figures: not yet measured (no GPU on the machine these were taken on)." if args.device == "cpu"
               else "GPU: each figure includes the host-to-device copies; GPU use is nvidia-smi's utilization.gpu "
                    "sampled every 100 ms over the whole process (start-up included).")]
    if args.device == "gpu":
        lines += ["", "| backend | run | rows/s (median) | GPU busy, mean % | share of samples with the GPU idle |",
                  "|---|---|---:|---:|---:|"]
        for key, runs in results["runs"].items():
            rate = statistics.median(r["rows"] / (r.get("scoring_seconds") or r["seconds"]) for r in runs)
            util = [r["gpu_util_mean"] for r in runs if r.get("gpu_util_mean") is not None]
            idle = [r["gpu_idle_share"] for r in runs if r.get("gpu_idle_share") is not None]
            lines.append(f"| {key.split('/')[0]} | {key.split('/')[1]} | {rate:,.0f} | "
                         f"{statistics.median(util):.0f} | {statistics.median(idle):.0%} |" if util else
                         f"| {key.split('/')[0]} | {key.split('/')[1]} | {rate:,.0f} | - | - |")
    results["summary"] = summary
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        out = HERE / "results" / f"backends-{'gpu-' if args.device == 'gpu' else ''}{dt.date.today()}"
        out.with_suffix(".md").write_text(text + "\n")
        out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}.md and .json")


if __name__ == "__main__":
    main()
