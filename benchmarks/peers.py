#!/usr/bin/env python
"""The foundation benchmark's reference points ("peers"), one per subprocess.

    python benchmarks/peers.py PEER --data DATA_DIR --model MODEL.onnx [--out OUT_DIR] [--result R.json]

PEER is one of
  read     (a) the read limit: scan `id` + f00..f31 of every shard into numpy (id array and a
               preallocated C-ordered [batch, 32] float32 matrix per batch), nothing else
  compute  (b) the compute limit: onnxruntime with default SessionOptions on all features, already
               in memory as one [N, 32] float32 matrix, in batches of --batch-size rows
  naive    (c) pandas reads a shard, predicts in batches, writes a shard (id + y)
  ray      (d) Ray Data: read_parquet -> map_batches(onnxruntime actor) -> write_parquet
  daft     (e) Daft: read_parquet -> class UDF (@daft.cls) holding an onnxruntime session -> write_parquet

Every peer prints one JSON line (and writes it to --result): its own in-process wall and CPU
seconds of the measured region, rows, and setup times. The harness (run_foundation.py) measures
the whole subprocess (wall, CPU, peak RSS of the process tree) around it.

Only the columns the model needs (`id`, f00..f31) are read by every peer, including the naive
loop: the same projection batchscore gets, which makes the baselines stronger, not weaker.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

T_START = time.perf_counter()

N_FEATURES = 32
FEATURES = [f"f{i:02d}" for i in range(N_FEATURES)]
COLUMNS = ["id", *FEATURES]
PRED = "y"  # output column of every peer: the model's output name, flattened to float32


def shard_files(data_dir: str | Path) -> list[str]:
    files = sorted(str(p) for p in Path(data_dir).glob("*.parquet"))
    if not files:
        raise SystemExit(f"no *.parquet in {data_dir}")
    return files


def _cpu() -> float:
    """Process CPU seconds (all threads of this process, user + system)."""
    return time.process_time()


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------------------------
# (a) read limit
# ----------------------------------------------------------------------------------------------
def peer_read(args) -> dict:
    import numpy as np
    import pyarrow.parquet as pq

    files = shard_files(args.data)
    bs = args.read_batch_size
    threads = args.read_threads == "on"
    t0, c0 = time.perf_counter(), _cpu()
    mat = np.empty((bs, N_FEATURES), dtype=np.float32)  # reused C-ordered buffer
    rows = 0
    id_sum = 0
    for path in files:
        pf = pq.ParquetFile(path)
        if args.read_mode == "iter_batches":
            batches = pf.iter_batches(batch_size=bs, columns=COLUMNS, use_threads=threads)
        else:  # one row group at a time (row groups are 131,072 rows = the default batch)
            batches = (pf.read_row_group(i, columns=COLUMNS, use_threads=threads)
                       for i in range(pf.num_row_groups))
        for b in batches:
            n = b.num_rows
            if n > bs:
                raise SystemExit(f"batch of {n} rows > --read-batch-size {bs}")
            ids = b.column(0).to_numpy()  # zero-copy (int64, no nulls, one chunk)
            m = mat[:n]
            for j in range(N_FEATURES):
                m[:, j] = b.column(j + 1).to_numpy()  # one strided copy per column, no temporaries
            id_sum += int(ids.sum())
            rows += n
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"wall_s": wall, "cpu_s": cpu, "rows": rows, "id_sum": id_sum,
            "config": {"mode": args.read_mode, "batch_size": bs, "use_threads": threads}}


def load_features(files: list[str]):
    """All features into one preallocated [N, 32] float32 matrix (not timed by `compute`)."""
    import numpy as np
    import pyarrow.parquet as pq

    n_total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    X = np.empty((n_total, N_FEATURES), dtype=np.float32)
    ids = np.empty(n_total, dtype=np.int64)
    pos = 0
    for path in files:
        for b in pq.ParquetFile(path).iter_batches(batch_size=131_072, columns=COLUMNS):
            n = b.num_rows
            ids[pos:pos + n] = b.column(0).to_numpy()
            for j in range(N_FEATURES):
                X[pos:pos + n, j] = b.column(j + 1).to_numpy()
            pos += n
    return ids, X


# ----------------------------------------------------------------------------------------------
# (b) compute limit
# ----------------------------------------------------------------------------------------------
def peer_compute(args) -> dict:
    import numpy as np
    import onnxruntime as ort

    files = shard_files(args.data)
    t_load = time.perf_counter()
    _, X = load_features(files)
    t_load = time.perf_counter() - t_load
    t_sess = time.perf_counter()
    so = ort.SessionOptions()  # the definition: default threads (pinned, spinning)
    if args.ort_threads:  # opt-in variants, not the L
        so.intra_op_num_threads = args.ort_threads  # an explicit count also turns pinning off
    if args.ort_spinning == "off":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(args.model, sess_options=so, providers=["CPUExecutionProvider"])
    t_sess = time.perf_counter() - t_sess
    in_name, out_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    n, bs = X.shape[0], args.batch_size
    Y = np.empty(n, dtype=np.float32)
    sess.run([out_name], {in_name: X[:16]})  # warm-up outside the measured region (tiny)
    t0, c0 = time.perf_counter(), _cpu()
    for i in range(0, n, bs):
        Y[i:i + bs] = sess.run([out_name], {in_name: X[i:i + bs]})[0][:, 0]
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"wall_s": wall, "cpu_s": cpu, "rows": n, "load_s": t_load, "session_s": t_sess,
            "y_mean": float(Y.mean()),
            "config": {"batch_size": bs, "intra_op_num_threads": args.ort_threads or "default",
                       "allow_spinning": args.ort_spinning}}


# ----------------------------------------------------------------------------------------------
# (c) naive pandas loop
# ----------------------------------------------------------------------------------------------
def peer_naive(args) -> dict:
    import numpy as np
    import onnxruntime as ort
    import pandas as pd

    files = shard_files(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), _cpu()
    sess = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    rows = 0
    for k, path in enumerate(files):
        df = pd.read_parquet(path, columns=COLUMNS)
        preds = []
        for i in range(0, len(df), args.batch_size):
            x = df.iloc[i:i + args.batch_size][FEATURES].to_numpy(dtype=np.float32)
            preds.append(sess.run(None, {in_name: x})[0][:, 0])
        res = pd.DataFrame({"id": df["id"].to_numpy(), PRED: np.concatenate(preds)})
        res.to_parquet(out / f"part-{k:05d}.parquet", index=False)
        rows += len(res)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"wall_s": wall, "cpu_s": cpu, "rows": rows, "config": {"batch_size": args.batch_size}}


# ----------------------------------------------------------------------------------------------
# (d) Ray Data
# ----------------------------------------------------------------------------------------------
class _RayPredictor:
    def __init__(self, model_path: str):
        import onnxruntime as ort

        self.sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        self.in_name = self.sess.get_inputs()[0].name

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        x = np.stack([batch[c] for c in FEATURES], axis=1).astype(np.float32, copy=False)
        y = self.sess.run(None, {self.in_name: x})[0][:, 0]
        return {"id": batch["id"], PRED: y}


def peer_ray(args) -> dict:
    import ray

    t_init = time.perf_counter()
    # Defaults, except: no dashboard (ray[data] has no dashboard deps) and quiet logs.
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    t_init = time.perf_counter() - t_init
    t0, c0 = time.perf_counter(), _cpu()
    ds = ray.data.read_parquet(args.data).select_columns(COLUMNS)  # projection is pushed into the read
    ds = ds.map_batches(_RayPredictor, fn_constructor_args=(args.model,), batch_size=args.batch_size,
                        batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=args.ray_actors))
    ds.write_parquet(args.out)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    ray.shutdown()
    return {"wall_s": wall, "cpu_s_driver": cpu, "rows": None, "init_s": t_init,
            "config": {"batch_size": args.batch_size, "actors": args.ray_actors,
                       "ray": ray.__version__}}


# ----------------------------------------------------------------------------------------------
# (e) Daft
# ----------------------------------------------------------------------------------------------
def peer_daft(args) -> dict:
    import daft
    import numpy as np
    from daft import DataType, col

    model_path = args.model

    @daft.cls
    class Predictor:
        def __init__(self, path: str):
            import onnxruntime as ort

            self.sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.in_name = self.sess.get_inputs()[0].name

        @daft.method.batch(return_dtype=DataType.float32(), batch_size=args.batch_size)
        def __call__(self, *features: daft.Series):
            x = np.stack([s.to_arrow().to_numpy(zero_copy_only=False) for s in features], axis=1)
            return self.sess.run(None, {self.in_name: x.astype(np.float32, copy=False)})[0][:, 0]

    t0, c0 = time.perf_counter(), _cpu()
    predict = Predictor(model_path)
    df = daft.read_parquet(str(Path(args.data) / "*.parquet"))
    df = df.select(col("id"), predict(*[col(c) for c in FEATURES]).alias(PRED))
    df.write_parquet(args.out)
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    return {"wall_s": wall, "cpu_s": cpu, "rows": None,
            "config": {"batch_size": args.batch_size, "daft": daft.__version__}}


PEERS = {"read": peer_read, "compute": peer_compute, "naive": peer_naive, "ray": peer_ray,
         "daft": peer_daft}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer", choices=sorted(PEERS))
    ap.add_argument("--data", required=True, help="directory of Parquet shards")
    ap.add_argument("--model", help="ONNX model (compute, naive, ray, daft)")
    ap.add_argument("--out", help="output directory (naive, ray, daft)")
    ap.add_argument("--result", help="write the result JSON here too")
    ap.add_argument("--batch-size", type=int, default=65_536, help="inference batch rows")
    ap.add_argument("--read-mode", choices=["iter_batches", "row_group"], default="iter_batches")
    ap.add_argument("--read-threads", choices=["on", "off"], default="off",
                    help="pyarrow use_threads for the read limit (off measured faster on 2 cores)")
    ap.add_argument("--read-batch-size", type=int, default=131_072)
    ap.add_argument("--ort-threads", type=int, default=0,
                    help="compute only: intra_op_num_threads (0 = onnxruntime default, as the issue defines L)")
    ap.add_argument("--ort-spinning", choices=["default", "off"], default="default",
                    help="compute only: session.intra_op.allow_spinning")
    ap.add_argument("--ray-actors", type=int, default=1,
                    help="onnxruntime actors in map_batches (2 on a 2-CPU box takes every CPU slot: "
                         "the read tasks never get scheduled and the job hangs)")
    args = ap.parse_args(argv)
    if args.peer != "read" and not args.model:
        ap.error("--model is required")
    if args.peer in ("naive", "ray", "daft") and not args.out:
        ap.error("--out is required")

    t_imported = time.perf_counter() - T_START
    res = PEERS[args.peer](args)
    res.update({"peer": args.peer, "python_startup_s": t_imported, "pid": os.getpid(),
                "maxrss_self_mb": _maxrss_mb(), "children_cpu_s": _children_cpu(),
                "total_in_process_s": time.perf_counter() - T_START})
    line = json.dumps(res)
    if args.result:
        Path(args.result).write_text(line)
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("SCARF_NO_ANALYTICS", "true")
    raise SystemExit(main())
