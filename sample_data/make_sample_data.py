#!/usr/bin/env python
"""Build batchscore's sample data set and the two sample fraud models.

Run from the repository root::

    python sample_data/make_sample_data.py            # writes next to this script
    python sample_data/make_sample_data.py --out /tmp/sample

Everything is seeded: re-running produces byte-identical Parquet, CSV and
ONNX files (for the same numpy / pyarrow / torch / skl2onnx versions).

What it writes (under ``--out``):

* ``transactions/day=YYYY-MM-DD/part-N.parquet`` - synthetic card transactions
  as snappy Parquet shards in hive-style day folders, with deliberately uneven
  shard sizes and row-group sizes, plus one empty (0-row) shard.
* ``csv/transactions.csv.gz`` - the same rows as one gzip-compressed CSV with
  ISO-8601 timestamps (``--csv plain`` writes an uncompressed
  ``transactions.csv`` instead, about 20 MB).
* ``fraud_model.onnx`` - a small PyTorch MLP (standardisation baked in),
  exported with ``torch.onnx.export``: input ``features`` float32 [batch, F],
  output ``fraud_probability`` float32 [batch, 1].
* ``fraud_model_sklearn.onnx`` - a scikit-learn StandardScaler +
  LogisticRegression pipeline exported with skl2onnx (ZipMap output):
  input ``features`` float32 [None, F], outputs ``output_label`` int64 [None]
  and ``output_probability`` (sequence of {0: p0, 1: p1} maps).
* ``README.md`` - describes the above, including the ROC AUCs measured here by
  scoring both ONNX files with onnxruntime.

The only floating-point columns in the data are the model features, in the
model's feature order, so batchscore's default feature mapping (all float
columns, schema order) feeds the models without a ``--features`` flag.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SEED = 20261127
N_ROWS = 200_000
N_CUSTOMERS = 25_000
FIRST_TRANSACTION_ID = 1_000_000_001
START = np.datetime64("2026-11-27T00:00:00", "us")
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR

# Relative transaction volume per UTC day (Black Friday and Cyber Monday peak).
DAYS = {
    "2026-11-27": 1.55,  # Fri, Black Friday
    "2026-11-28": 1.10,
    "2026-11-29": 0.90,
    "2026-11-30": 1.40,  # Mon, Cyber Monday
    "2026-12-01": 1.00,
    "2026-12-02": 0.95,
    "2026-12-03": 0.70,
}
HOLDOUT_DAY = "2026-12-03"  # models are trained on the days before this one

# Shard layout: (day, part, row-group size, share of that day's rows).
# Shares of one day add up to 1; a share of 0 writes an empty shard.
SHARDS = [
    ("2026-11-27", 0, 16_384, 0.62),
    ("2026-11-27", 1, 5_000, 0.38),
    ("2026-11-28", 0, 65_536, 1.0),  # one row group holds the whole shard
    ("2026-11-29", 0, 7_777, 1.0),
    ("2026-11-30", 0, 32_768, 1.0),
    ("2026-12-01", 0, 10_000, 1.0),
    ("2026-12-02", 0, 6_000, 1.0),
    ("2026-12-02", 1, 6_000, 0.0),  # empty shard, same schema
    ("2026-12-03", 0, 12_000, 1.0),
]

# merchant_category -> (share of transactions, amount multiplier,
#                       P(card present), P(foreign), base merchant risk)
CATEGORIES = {
    "grocery":       (0.23, 0.9, 0.95, 0.01, 0.04),
    "restaurants":   (0.17, 0.7, 0.92, 0.02, 0.05),
    "gas":           (0.11, 0.6, 0.97, 0.01, 0.08),
    "online_retail": (0.15, 1.3, 0.00, 0.04, 0.28),
    "entertainment": (0.07, 0.8, 0.55, 0.02, 0.12),
    "health":        (0.06, 1.1, 0.90, 0.01, 0.04),
    "electronics":   (0.07, 3.0, 0.60, 0.03, 0.34),
    "travel":        (0.06, 4.5, 0.25, 0.20, 0.26),
    "jewelry":       (0.04, 4.0, 0.70, 0.04, 0.40),
    "gift_cards":    (0.04, 1.6, 0.35, 0.03, 0.55),
}
MERCHANTS_PER_CATEGORY = 100
# Integer columns written with DELTA_BINARY_PACKED instead of a dictionary.
DELTA_COLUMNS = ("transaction_id", "ts", "customer_id")
FRAUD_RATE = 0.015

# Model features: the float32 columns of the data set, in this order.
FEATURES = [
    "amount",                  # transaction amount, USD (cents)
    "amount_zscore_customer",  # log-amount vs. the customer's usual spend
    "hour_sin",                # time of day (UTC), cyclic encoding
    "hour_cos",
    "distance_from_home_km",
    "txn_count_24h",           # customer's transactions in the previous 24 h
    "hours_since_prev_txn",    # gap to the customer's previous transaction
    "merchant_risk_score",     # historical risk of the merchant, 0..1
    "card_present",            # 1.0 chip/contactless, 0.0 card-not-present
    "is_foreign",              # 1.0 merchant country != card country
]
F = len(FEATURES)

SCHEMA = pa.schema(
    [
        pa.field("transaction_id", pa.int64()),
        pa.field("ts", pa.timestamp("us", tz="UTC")),
        pa.field("customer_id", pa.int64()),
        pa.field("merchant_category", pa.string()),
        *[pa.field(name, pa.float32()) for name in FEATURES],
        pa.field("is_fraud", pa.int8()),
    ]
)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _time_of_day_us(rng: np.random.Generator, n: int) -> np.ndarray:
    """Microseconds since midnight (whole seconds), following a daytime-heavy daily profile."""
    hours = np.arange(24)
    profile = (
        0.15
        + np.exp(-0.5 * ((hours - 12.5) / 3.0) ** 2)
        + 0.8 * np.exp(-0.5 * ((hours - 19.0) / 2.0) ** 2)
    )
    hour = rng.choice(24, size=n, p=profile / profile.sum())
    # Whole seconds (the column type is still timestamp[us]).
    return hour * US_PER_HOUR + rng.integers(0, 3_600, size=n) * 1_000_000


def make_transactions(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All rows as numpy columns, sorted by time, plus the ``day`` of each row."""
    n = N_ROWS

    # Customers: shuffled ids, gamma-distributed activity, personal spend level.
    customer_ids = rng.permutation(N_CUSTOMERS).astype(np.int64) + 100_001
    activity = rng.gamma(0.8, 1.0, size=N_CUSTOMERS)
    spend_mu = rng.normal(3.4, 0.55, size=N_CUSTOMERS)  # mean log-amount
    spend_sigma = rng.uniform(0.45, 0.95, size=N_CUSTOMERS)
    home_radius = rng.lognormal(1.3, 0.6, size=N_CUSTOMERS)  # typical km from home

    cust = rng.choice(N_CUSTOMERS, size=n, p=activity / activity.sum())

    # Time stamps: day by volume weight, then time of day; globally sorted.
    day_weights = np.array(list(DAYS.values()))
    day_idx = rng.choice(len(DAYS), size=n, p=day_weights / day_weights.sum())
    t_us = day_idx * US_PER_DAY + _time_of_day_us(rng, n)
    order = np.argsort(t_us, kind="stable")
    cust, day_idx, t_us = cust[order], day_idx[order], t_us[order]

    # Merchant category and merchant (each merchant has its own risk score).
    names = list(CATEGORIES)
    share, amount_mult, p_present, p_foreign, base_risk = (
        np.array(col) for col in zip(*CATEGORIES.values())
    )
    cat = rng.choice(len(names), size=n, p=share / share.sum())
    merchant_risk_table = np.clip(
        base_risk[:, None] + rng.normal(0.0, 0.06, size=(len(names), MERCHANTS_PER_CATEGORY)),
        0.0,
        1.0,
    ).round(2)
    merchant = rng.integers(0, MERCHANTS_PER_CATEGORY, size=n)
    merchant_risk = merchant_risk_table[cat, merchant]

    card_present = (rng.random(n) < p_present[cat]).astype(np.float64)
    is_foreign = (rng.random(n) < p_foreign[cat]).astype(np.float64)

    # Amount: the customer's log-normal spend, scaled by category.
    log_amount = (
        spend_mu[cust]
        + np.log(amount_mult[cat])
        + spend_sigma[cust] * np.clip(rng.standard_t(5, size=n), -4.0, 4.0)
    )
    amount = np.clip(np.exp(log_amount), 0.5, 25_000.0).round(2)
    zscore = ((np.log(amount) - spend_mu[cust] - np.log(amount_mult[cat])) / spend_sigma[cust]).round(1)

    # Distance from home: local for card-present, wider online, far when foreign.
    distance = home_radius[cust] * rng.lognormal(0.0, 0.9, size=n)
    distance = np.where(card_present == 0, distance * rng.lognormal(1.5, 1.0, size=n), distance)
    distance = np.where(is_foreign == 1, rng.uniform(300.0, 9_000.0, size=n), distance)
    distance = np.minimum(distance, 12_000.0).round(1)

    # Time of day (UTC, minute resolution), cyclic encoding.
    minute_of_day = (t_us % US_PER_DAY) // 60_000_000
    angle = 2.0 * np.pi * minute_of_day / 1_440.0
    hour_sin, hour_cos = np.sin(angle).round(6), np.cos(angle).round(6)

    # Per-customer history: gap to the previous transaction, count in last 24 h.
    by_cust = np.lexsort((t_us, cust))
    c_sorted, t_sorted = cust[by_cust], t_us[by_cust]
    first = np.ones(n, dtype=bool)
    first[1:] = c_sorted[1:] != c_sorted[:-1]
    gap_h = np.empty(n)
    gap_h[1:] = (t_sorted[1:] - t_sorted[:-1]) / US_PER_HOUR
    # Before the window starts: a gap drawn from the customer's usual rhythm.
    gap_h[first] = rng.exponential(40.0, size=int(first.sum()))
    key = c_sorted.astype(np.int64) * (16 * US_PER_DAY) + t_sorted
    count_sorted = np.arange(n) - np.searchsorted(key, key - US_PER_DAY, side="left")
    # Transactions just before the window count too (a small Poisson carry-in).
    carry = rng.poisson(activity[c_sorted] * 0.6)
    in_first_day = t_sorted < US_PER_DAY
    count_sorted = count_sorted + np.where(
        in_first_day, np.floor(carry * (1 - t_sorted / US_PER_DAY)), 0
    ).astype(np.int64)
    gap = np.empty(n)
    count = np.empty(n)
    gap[by_cust] = np.minimum(gap_h, 999.0).round(1)
    count[by_cust] = count_sorted

    # Hidden fraud rule (never stored) plus noise; intercept set for FRAUD_RATE.
    night = ((minute_of_day < 6 * 60) | (minute_of_day >= 23 * 60)).astype(np.float64)
    score = (
        1.1 * np.clip(zscore, 0.0, 5.0)
        + 0.55 * np.log1p(distance / 25.0)
        + 1.2 * is_foreign
        + 0.9 * (1.0 - card_present)
        + 1.6 * night * (1.0 - card_present)
        + 0.45 * np.clip(count - 3.0, 0.0, 8.0)
        + 1.2 * (gap < 0.25)
        + 3.5 * merchant_risk
        + 1.0 * (zscore > 2.0) * (1.0 - card_present)
        + rng.normal(0.0, 0.8, size=n)
    )
    lo, hi = -30.0, 10.0
    for _ in range(60):  # bisection on the intercept
        mid = 0.5 * (lo + hi)
        if _sigmoid(score + mid).mean() < FRAUD_RATE:
            lo = mid
        else:
            hi = mid
    is_fraud = (rng.random(n) < _sigmoid(score + 0.5 * (lo + hi))).astype(np.int8)

    return {
        "transaction_id": FIRST_TRANSACTION_ID + np.arange(n, dtype=np.int64),
        "ts": START + t_us.astype("timedelta64[us]"),
        "customer_id": customer_ids[cust],
        "merchant_category": np.array(names, dtype=object)[cat],
        "amount": amount,
        "amount_zscore_customer": zscore,
        "hour_sin": hour_sin,
        "hour_cos": hour_cos,
        "distance_from_home_km": distance,
        "txn_count_24h": count,
        "hours_since_prev_txn": gap,
        "merchant_risk_score": merchant_risk,
        "card_present": card_present,
        "is_foreign": is_foreign,
        "is_fraud": is_fraud,
        "_day": day_idx,
    }


def to_table(cols: dict[str, np.ndarray]) -> pa.Table:
    arrays = []
    for field in SCHEMA:
        values = cols[field.name]
        if field.name == "ts":
            arrays.append(pa.array(values.astype("datetime64[us]"), type=pa.timestamp("us")).cast(field.type))
        else:
            arrays.append(pa.array(values).cast(field.type))
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def write_shards(table: pa.Table, day_idx: np.ndarray, out: Path) -> list[tuple[Path, int, int]]:
    """Write the hive-style day shards; returns (path, rows, row groups)."""
    root = out / "transactions"
    if root.exists():
        shutil.rmtree(root)
    written = []
    day_names = list(DAYS)
    for day in day_names:
        rows = np.flatnonzero(day_idx == day_names.index(day))
        parts = [s for s in SHARDS if s[0] == day]
        assert abs(sum(s[3] for s in parts) - 1.0) < 1e-9, day
        start = 0
        for i, (_, part, row_group_size, share) in enumerate(parts):
            stop = len(rows) if i == len(parts) - 1 else start + int(round(share * len(rows)))
            piece = table.slice(int(rows[0]) + start, stop - start) if len(rows) else table.slice(0, 0)
            path = root / f"day={day}" / f"part-{part}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                piece,
                path,
                compression="snappy",
                row_group_size=row_group_size,
                # Ids and times: delta encoding instead of per-row-group
                # dictionaries nearly as big as the column (~2 MB smaller).
                # Every mainstream Parquet reader supports it.
                use_dictionary=[f.name for f in SCHEMA if f.name not in DELTA_COLUMNS],
                column_encoding={name: "DELTA_BINARY_PACKED" for name in DELTA_COLUMNS},
            )
            written.append((path, piece.num_rows, pq.ParquetFile(path).num_row_groups))
            start = stop
    return written


def write_csv(table: pa.Table, out: Path, mode: str) -> Path:
    """All rows as one CSV (ISO-8601 UTC timestamps), gzip-compressed unless mode == 'plain'.

    No value contains a comma or quote, so nothing is quoted (pyarrow raises if one did).
    """
    folder = out / "csv"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    iso = np.datetime_as_string(table.column("ts").to_numpy().astype("datetime64[us]"), unit="s")
    csv_table = table.set_column(1, "ts", pa.array(np.char.add(iso.astype(str), "Z")))
    # Floats keep a decimal point ("3.0", not "3"): otherwise CSV readers infer
    # whole-valued feature columns (txn_count_24h, card_present, is_foreign) as
    # integers and the file would no longer have exactly F float columns.
    for name in FEATURES:
        text = pc.cast(csv_table.column(name), pa.string())
        bare = pc.invert(pc.match_substring_regex(text, r"[.eEnN]"))
        text = pc.if_else(bare, pc.binary_join_element_wise(text, ".0", ""), text)
        csv_table = csv_table.set_column(csv_table.schema.get_field_index(name), name, text)
    buf = io.BytesIO()
    buf.write((",".join(csv_table.column_names) + "\n").encode())
    pacsv.write_csv(csv_table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    if mode == "plain":
        path = folder / "transactions.csv"
        path.write_bytes(buf.getvalue())
    else:
        path = folder / "transactions.csv.gz"
        with open(path, "wb") as raw:
            # filename="" and mtime=0 keep the gzip header reproducible.
            with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
                gz.write(buf.getvalue())
    return path


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------


def train_torch_model(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """Train a small MLP (F -> 32 -> 16 -> 1) and export it with torch.onnx.export."""
    import onnx
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed reduction order -> identical weights every run

    class Standardize(torch.nn.Module):
        """(x - mean) / std with the training-set statistics baked in."""

        def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

    class FraudMLP(torch.nn.Module):
        def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
            super().__init__()
            self.scale = Standardize(mean, std)
            self.net = torch.nn.Sequential(
                torch.nn.Linear(F, 32),
                torch.nn.ReLU(),
                torch.nn.Linear(32, 16),
                torch.nn.ReLU(),
                torch.nn.Linear(16, 1),
            )

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(self.scale(x))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.logits(x))

    # Heavy-tailed columns (amount, distance, gap) are standardised on their raw
    # scale; the MLP copes, and the exported graph stays a plain Sub/Div.
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = np.maximum(x.std(axis=0, dtype=np.float64), 1e-6).astype(np.float32)
    model = FraudMLP(mean, std)

    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32)).unsqueeze(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(SEED)
    batch = 4096
    for _epoch in range(8):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(model.logits(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()

    with warnings.catch_warnings():
        # torch 2.9+ defaults to the dynamo exporter (needs onnxscript); the
        # TorchScript exporter (dynamo=False) still works and warns it is legacy.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, F),),
            str(path),
            input_names=["features"],
            output_names=["fraud_probability"],
            dynamic_axes={"features": {0: "batch"}, "fraud_probability": {0: "batch"}},
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )
    _finish_onnx(onnx.load(str(path)), path, "PyTorch MLP fraud model (batchscore sample)")

    # The exported graph must agree with the torch model.
    with torch.no_grad():
        expected = model(xt[:5_000]).numpy()[:, 0]
    np.testing.assert_allclose(onnx_scores(path, x[:5_000]), expected, rtol=1e-4, atol=1e-6)
    torch.set_num_threads(threads)


def train_sklearn_model(x: np.ndarray, y: np.ndarray, path: Path) -> None:
    """StandardScaler + LogisticRegression, exported with skl2onnx (ZipMap output)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1_000))
    with threadpool_limits(limits=1):  # single-threaded BLAS -> identical weights every run
        clf.fit(x, y)
    onx = convert_sklearn(
        clf,
        name="fraud_model_sklearn",
        initial_types=[("features", FloatTensorType([None, F]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    _finish_onnx(onx, path, "scikit-learn LogisticRegression fraud model (batchscore sample)")


def _finish_onnx(model, path: Path, doc: str) -> None:
    """Record the feature order, pin the IR version, check and save as one file."""
    import onnx

    # IR 8 (ONNX 1.13) with opset 17 loads in every onnxruntime >= 1.14.
    model.ir_version = min(model.ir_version, 8)
    model.doc_string = doc
    # skl2onnx lists opsets in set order (varies with PYTHONHASHSEED): sort them.
    opsets = sorted(((o.domain, o.version) for o in model.opset_import))
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    del model.metadata_props[:]
    for key, value in (("feature_names", ",".join(FEATURES)), ("positive_class", "is_fraud=1")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def onnx_scores(path: Path, x: np.ndarray) -> np.ndarray:
    """P(fraud) for each row, computed by onnxruntime from the saved file."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in sess.get_outputs()]
    if "fraud_probability" in outputs:
        return sess.run(["fraud_probability"], {"features": x})[0][:, 0]
    probs = sess.run(["output_probability"], {"features": x})[0]  # list of {label: p}
    return np.array([p[1] for p in probs], dtype=np.float32)


def describe_onnx(path: Path) -> list[str]:
    import onnx
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = onnx.load(str(path))
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    lines = [f"ONNX IR version {model.ir_version}, opsets: {opsets}, producer: {model.producer_name} {model.producer_version}"]
    for kind, items in (("input", sess.get_inputs()), ("output", sess.get_outputs())):
        for item in items:
            lines.append(f"{kind} `{item.name}`: {item.type} {item.shape}")
    return lines


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------


def write_readme(out: Path, shards, csv_path: Path, table: pa.Table, aucs: dict, onnx_io: dict) -> None:
    n_fraud = int(np.asarray(table.column("is_fraud")).sum())
    shard_rows = "\n".join(
        f"| `{p.relative_to(out).as_posix()}` | {rows:,} | {groups} |" for p, rows, groups in shards
    )
    dtype_rows = "\n".join(f"| `{f.name}` | `{'float32' if f.type == pa.float32() else f.type}` | {_COLUMN_DOCS[f.name]} |" for f in SCHEMA)
    csv_name = csv_path.relative_to(out).as_posix()
    auc_rows = "\n".join(
        f"| `{name}` | {a['train']:.4f} | {a['holdout']:.4f} | {a['all']:.4f} |" for name, a in aucs.items()
    )
    io_lines = "\n".join(f"- `{name}`\n" + "\n".join(f"  - {l}" for l in lines) for name, lines in onnx_io.items())
    text = f"""# Sample data

Synthetic credit-card transactions and two fraud models, for trying
`batchscore` and for its tests and benchmarks. Everything here is generated by
[`make_sample_data.py`](make_sample_data.py) with a fixed seed ({SEED});
do not edit the files by hand. To regenerate (byte-identical output for the
same library versions):

```bash
python sample_data/make_sample_data.py            # writes into sample_data/
python sample_data/make_sample_data.py --out DIR  # somewhere else
```

Try it:

```bash
batchscore run sample_data/transactions --model sample_data/fraud_model.onnx
```

## Files

| Path | Rows | Row groups |
|---|---:|---:|
{shard_rows}

- `transactions/`: {table.num_rows:,} rows in {len(shards)} snappy Parquet shards,
  hive-style `day=YYYY-MM-DD` folders (UTC day of `ts`). `day` is only in
  the folder name, not a column in the files. Shard sizes and row-group sizes
  differ on purpose, and `day=2026-12-02/part-1.parquet` is an empty shard
  (0 rows, same schema, one empty row group). Readers that apply hive
  partitioning add `day` as a column (pyarrow: string, polars: date); it is
  not floating point, so the feature mapping is unaffected. `transaction_id`,
  `ts` and `customer_id` use Parquet's DELTA_BINARY_PACKED encoding, the
  other columns pyarrow's defaults (dictionary, falling back to plain).
- `{csv_name}`: the same {table.num_rows:,} rows as one CSV with a header,
  gzip-compressed (an uncompressed copy would be about 20 MB;
  `--csv plain` writes `csv/transactions.csv` instead). Timestamps are ISO
  8601 in UTC, whole seconds (`2026-11-27T08:15:42Z`); feature values
  always carry a decimal point (`3.0`, not `3`) so CSV type inference finds
  the same {F} float columns as in the Parquet files. It lives in
  its own folder so `batchscore run sample_data/transactions` reads every
  row once.
- `fraud_model.onnx`: PyTorch MLP {F} -> 32 -> 16 -> 1 with a sigmoid, exported
  with `torch.onnx.export` (TorchScript exporter, opset 17). The feature
  standardisation (training mean / std) is the first op in the graph, so the
  model takes the raw columns.
- `fraud_model_sklearn.onnx`: scikit-learn `StandardScaler` +
  `LogisticRegression`, exported with skl2onnx with its default ZipMap
  output (skl2onnx picks the lowest opsets the graph needs).
- `make_sample_data.py`: the generator.

Both models carry the feature order in their ONNX metadata
(`feature_names`).

### Model inputs and outputs

{io_lines}

## Columns

| Column | Type | Meaning |
|---|---|---|
{dtype_rows}

The only floating-point (float32) columns are the {F} model features, in the
models' feature order:

{", ".join(f"`{name}`" for name in FEATURES)}

so batchscore's default feature mapping (the float columns in schema order
when there are exactly F of them) feeds the models with no `--features`
flag. The integer columns (`transaction_id`, `customer_id`, `is_fraud`), the
timestamp and the string column are not features.

## Labels

`is_fraud` is 1 for {n_fraud:,} rows ({n_fraud / table.num_rows:.2%}). It is drawn
from a hidden logistic rule of the features plus Gaussian noise: large amounts
for the customer, card-not-present at night, foreign merchants, distance from
home, bursts of transactions, very short gaps and risky merchants all raise
the odds. The rule is not stored in the data.

## Model quality

ROC AUC measured by scoring the ONNX files with onnxruntime. Both models are
trained on the days before {HOLDOUT_DAY}; {HOLDOUT_DAY} is held out.

| Model | AUC train days | AUC {HOLDOUT_DAY} (held out) | AUC all rows |
|---|---:|---:|---:|
{auc_rows}
"""
    (out / "README.md").write_text(text, encoding="utf-8")


_COLUMN_DOCS = {
    "transaction_id": "unique, increasing with `ts`",
    "ts": "transaction time, 2026-11-27 to 2026-12-03 (UTC, whole seconds)",
    "customer_id": "card holder (ids 100001-125000, very uneven activity)",
    "merchant_category": ", ".join(CATEGORIES),
    "amount": "amount in USD, rounded to cents",
    "amount_zscore_customer": "log-amount relative to the customer's usual spend, in standard deviations (0.1 steps)",
    "hour_sin": "sin(2π · time of day / 24 h), UTC, minute resolution",
    "hour_cos": "cos(2π · time of day / 24 h)",
    "distance_from_home_km": "distance from the card holder's home, km",
    "txn_count_24h": "customer's transactions in the previous 24 h (whole numbers)",
    "hours_since_prev_txn": "hours since the customer's previous transaction (capped at 999)",
    "merchant_risk_score": "merchant's historical risk score, 0 to 1",
    "card_present": "1.0 card present (chip/contactless), 0.0 card-not-present",
    "is_foreign": "1.0 when the merchant is abroad",
    "is_fraud": "label, 1 = fraud",
}


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent,
        help="output folder (default: the folder of this script)",
    )
    parser.add_argument(
        "--csv", choices=("gz", "plain"), default="gz",
        help="write csv/transactions.csv.gz (default) or an uncompressed csv/transactions.csv",
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    rng = np.random.default_rng(SEED)
    cols = make_transactions(rng)
    table = to_table(cols)
    day_idx = cols["_day"]
    shards = write_shards(table, day_idx, out)
    csv_path = write_csv(table, out, args.csv)
    t_data = time.perf_counter()

    x = np.column_stack([np.asarray(table.column(name)) for name in FEATURES]).astype(np.float32)
    y = np.asarray(table.column("is_fraud")).astype(np.int64)
    train = day_idx < list(DAYS).index(HOLDOUT_DAY)

    models = {"fraud_model.onnx": train_torch_model, "fraud_model_sklearn.onnx": train_sklearn_model}
    aucs, onnx_io = {}, {}
    from sklearn.metrics import roc_auc_score

    for name, trainer in models.items():
        trainer(x[train], y[train], out / name)
        p = onnx_scores(out / name, x)
        aucs[name] = {
            "train": roc_auc_score(y[train], p[train]),
            "holdout": roc_auc_score(y[~train], p[~train]),
            "all": roc_auc_score(y, p),
        }
        onnx_io[name] = describe_onnx(out / name)
    t_models = time.perf_counter()

    write_readme(out, shards, csv_path, table, aucs, onnx_io)

    print(f"{table.num_rows:,} rows, {int(y.sum()):,} fraud ({y.mean():.2%}), features: {', '.join(FEATURES)}")
    for path, rows, groups in shards:
        print(f"  {path.relative_to(out)}: {rows:,} rows, {groups} row groups")
    for name, a in aucs.items():
        print(f"  {name}: ROC AUC train {a['train']:.4f}, held-out {HOLDOUT_DAY} {a['holdout']:.4f}, all {a['all']:.4f}")
    total = 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        size = path.stat().st_size
        total += size
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        print(f"  {size:>10,}  {digest}  {path.relative_to(out)}")
    print(f"  {total:>10,}  total")
    print(f"data {t_data - t0:.1f}s, models {t_models - t_data:.1f}s, total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
