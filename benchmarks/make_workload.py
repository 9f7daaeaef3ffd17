#!/usr/bin/env python
"""Build the foundation benchmark workload (deterministic).

Writes, into OUT_DIR:
  data/part-00000.parquet .. part-00007.parquet   8 shards, snappy, 131,072-row row groups,
      dictionary encoding only on `tag` (see --dictionary)
      id   int64    0..rows-1 (global, contiguous per shard)
      f00..f31 float32   standard normal
      tag  string   short label ("tag-000".."tag-063")
  model_h16.onnx, model_h256.onnx   MLP 32->H->H->1, ReLU, sigmoid; input "x" [batch,32] float32,
                                    output "y" [batch,1] float32, dynamic batch
  workload.json                     what was generated (rows, shards, seeds, sizes)

Usage:
  python benchmarks/make_workload.py /tmp/bench/workload-4M
  python benchmarks/make_workload.py /tmp/bench/workload-16M --rows 16000000 --no-models
Existing files with the same parameters are kept unless --force.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_FEATURES = 32
FEATURES = [f"f{i:02d}" for i in range(N_FEATURES)]
N_SHARDS = 8
ROW_GROUP = 131_072
DATA_SEED = 20240601
MODEL_SEED = 1234
HIDDEN = (16, 256)
TAGS = np.array([f"tag-{i:03d}" for i in range(64)], dtype=object)


def shard_bounds(rows: int, shards: int = N_SHARDS) -> list[tuple[int, int]]:
    edges = np.linspace(0, rows, shards + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def shard_table(shard: int, start: int, stop: int) -> pa.Table:
    rng = np.random.default_rng([DATA_SEED, shard])
    n = stop - start
    # generate per column so the arrays are contiguous (no strided copies later)
    cols: dict[str, pa.Array] = {"id": pa.array(np.arange(start, stop, dtype=np.int64))}
    for name in FEATURES:
        cols[name] = pa.array(rng.standard_normal(n, dtype=np.float32))
    tag_idx = rng.integers(0, len(TAGS), size=n)
    cols["tag"] = pa.array(TAGS[tag_idx], type=pa.string())
    return pa.table(cols)


def write_data(out: Path, rows: int, force: bool, dictionary: str = "tag") -> list[dict]:
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    info = []
    for shard, (a, b) in enumerate(shard_bounds(rows)):
        path = data / f"part-{shard:05d}.parquet"
        if path.exists() and not force:
            md = pq.ParquetFile(path).metadata
            first = pq.ParquetFile(path).read_row_group(0, columns=["id"]).column(0)[0].as_py()
            enc = md.row_group(0).column(1).encodings
            same_dict = ("RLE_DICTIONARY" in enc) == (dictionary == "all")
            if md.num_rows == b - a and first == a and md.num_row_groups == -(-(b - a) // ROW_GROUP) and same_dict:
                info.append({"path": str(path), "rows": b - a, "bytes": path.stat().st_size, "reused": True})
                continue
        t0 = time.perf_counter()
        table = shard_table(shard, a, b)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp, compression="snappy", row_group_size=ROW_GROUP,
                       use_dictionary=["tag"] if dictionary == "tag" else True)
        os.replace(tmp, path)
        info.append({"path": str(path), "rows": b - a, "bytes": path.stat().st_size,
                     "seconds": round(time.perf_counter() - t0, 2)})
        print(f"  {path.name}: rows {a}..{b - 1} ({path.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    # remove shards beyond N_SHARDS left by an earlier run with another layout
    for extra in sorted(data.glob("part-*.parquet"))[N_SHARDS:]:
        extra.unlink()
    return info


def build_mlp(hidden: int):
    import torch

    torch.manual_seed(MODEL_SEED + hidden)
    model = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, 1), torch.nn.Sigmoid(),
    )
    return model.eval()


def export_model(hidden: int, path: Path) -> str:
    """Export with torch.onnx.export. torch>=2.9 defaults to the dynamo exporter, which needs
    onnxscript; fall back to the TorchScript exporter (dynamo=False) when it is missing."""
    import torch

    model = build_mlp(hidden)
    x = torch.randn(8, N_FEATURES)
    try:
        import onnxscript  # noqa: F401
        dynamo = True
    except ImportError:
        dynamo = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                              dynamo=True, external_data=False,
                              verbose=False, dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                              dynamo=False, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    # sanity: onnxruntime agrees with torch
    import onnxruntime as ort

    xt = torch.randn(1000, N_FEATURES)
    with torch.inference_mode():
        ref = model(xt).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["y"], {"x": xt.numpy()})[0]
    assert got.shape == (1000, 1), got.shape
    assert np.allclose(got, ref, atol=1e-5), float(np.abs(got - ref).max())
    return "dynamo" if dynamo else "torchscript"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--rows", type=int, default=4_000_000)
    ap.add_argument("--no-models", action="store_true", help="only write the Parquet shards")
    ap.add_argument("--force", action="store_true", help="rewrite even if matching files exist")
    ap.add_argument("--dictionary", choices=["tag", "all"], default="tag",
                    help="Parquet dictionary encoding: only for the string column (default; random floats "
                         "would otherwise be dictionary-encoded at ~6 bytes/value) or pyarrow's default (all)")
    args = ap.parse_args(argv)

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    shards = write_data(out, args.rows, args.force, args.dictionary)
    meta = {"rows": args.rows, "shards": N_SHARDS, "row_group_size": ROW_GROUP, "compression": "snappy",
            "dictionary": args.dictionary,
            "features": FEATURES, "data_seed": DATA_SEED, "data_dir": str(out / "data"),
            "data_bytes": sum(s["bytes"] for s in shards), "models": {}}
    if not args.no_models:
        for h in HIDDEN:
            path = out / f"model_h{h}.onnx"
            if not path.exists() or args.force:
                exporter = export_model(h, path)
            else:
                exporter = "existing"
            meta["models"][str(h)] = {"path": str(path), "hidden": h, "model_seed": MODEL_SEED + h,
                                      "exporter": exporter}
    (out / "workload.json").write_text(json.dumps(meta, indent=2))
    print(f"workload ready in {out} ({args.rows:,} rows, {meta['data_bytes'] / 1e6:.0f} MB, "
          f"{time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
