"""Property test (issue 5): over random schemas, shard sizes, row groups, batch
sizes, input formats and injected bad rows (nulls, NaN, infinity), every
input id appears exactly once — in the output with onnxruntime's prediction,
or in the quarantine with a reason naming its bad column (or, with skip, is
counted) — and the accounting adds up."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import batchscore
from tests.helpers import Data, Models, assert_predictions, read_output

EXTRA_TYPES = {
    "int32": lambda rng, n: pa.array(rng.integers(-1000, 1000, n), pa.int32()),
    "string": lambda rng, n: pa.array([f"s{v}" for v in rng.integers(0, 50, n)], pa.string()),
    "bool": lambda rng, n: pa.array(rng.integers(0, 2, n).astype(bool)),
    "float32": lambda rng, n: pa.array(rng.normal(size=n).astype(np.float32)),
}
FEATURE_TYPES = {"float64": pa.float64(), "float32": pa.float32(), "int64": pa.int64()}
KINDS = ("null", "nan", "inf", "-inf")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[int, str]:
    """A linear model per feature count (1..4): float32 [N,k] → score [N,1]."""
    m = Models(tmp_path_factory.mktemp("property-models"))
    return {k: m.linear(n_features=k, name=f"linear{k}.onnx") for k in range(1, 5)}


@st.composite
def cases(draw):
    n_features = draw(st.integers(1, 4))
    fmt = draw(st.sampled_from(["parquet", "csv"]))
    # CSV has no float32 or int64-with-NaN distinction worth testing: features are float64 there.
    ftypes = [draw(st.sampled_from(list(FEATURE_TYPES))) if fmt == "parquet" else "float64" for _ in range(n_features)]
    extras = draw(st.lists(st.sampled_from(list(EXTRA_TYPES)), max_size=3))
    sizes = draw(st.lists(st.integers(0, 25), min_size=1, max_size=4))
    total = sum(sizes)
    injections = []
    if total:
        injections = draw(st.lists(
            st.tuples(st.integers(0, total - 1), st.integers(0, n_features - 1), st.sampled_from(KINDS)),
            max_size=min(total, 8),
        ))
    return {
        "n_features": n_features, "ftypes": ftypes, "extras": extras, "sizes": sizes, "fmt": fmt,
        "injections": injections,
        "batch_size": draw(st.integers(1, 17)),
        "row_group": draw(st.integers(1, 10)),
        "mode": draw(st.sampled_from(["skip", "quarantine"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def build(case) -> tuple[pa.Table, dict[int, list[tuple[int, str]]]]:
    """The whole dataset (ids 0..N-1) and, per bad id, its injected (feature, kind)s."""
    rng = np.random.default_rng(case["seed"])
    n = sum(case["sizes"])
    hits: dict[tuple[int, int], str] = {}
    for row, j, kind in case["injections"]:  # the last injection into a cell wins
        hits[row, j] = "null" if kind != "null" and case["ftypes"][j] == "int64" else kind  # integers have no NaN
    bad: dict[int, list[tuple[int, str]]] = {}
    for (row, j), kind in hits.items():
        bad.setdefault(row, []).append((j, kind))
    cols = {"id": pa.array(np.arange(n, dtype=np.int64))}
    for k, name in enumerate(case["extras"]):
        cols[f"e{k}_{name}"] = EXTRA_TYPES[name](rng, n)
    for j, t in enumerate(case["ftypes"]):
        values = (rng.integers(-5, 5, n) if t == "int64" else rng.normal(size=n)).tolist()
        for row, hits in bad.items():
            for jj, kind in hits:
                if jj == j:
                    values[row] = {"null": None, "nan": math.nan, "inf": math.inf, "-inf": -math.inf}[kind]
        cols[f"x{j}"] = pa.array(values, FEATURE_TYPES[t])
    return pa.table(cols), bad


def expected_reason(row_hits: list[tuple[int, str]], fmt: str) -> set[str]:
    """Reasons a bad row may carry: its first bad feature column, by what is wrong there."""
    j = min(jj for jj, _ in row_hits)
    col = f"x{j}"
    kinds = {kind for jj, kind in row_hits if jj == j}
    if kinds == {"null"}:
        # The column's other rows may hold NaN in the same read batch: then the column's wording is shared.
        return {f"null in column '{col}'", f"null, NaN or infinity in column '{col}'"}
    return {f"NaN or infinity in column '{col}'", f"null, NaN or infinity in column '{col}'"}


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_every_id_once_scored_or_quarantined(models, case):
    table, bad = build(case)
    features = [f"x{j}" for j in range(case["n_features"])]
    model = models[case["n_features"]]
    with tempfile.TemporaryDirectory() as tmp:
        data = Data(Path(tmp) / "data")
        shard_paths, start = [], 0
        for i, n in enumerate(case["sizes"]):
            part = table.slice(start, n)
            suffix = ".parquet" if case["fmt"] == "parquet" else ".csv"
            kw = {"row_group_size": case["row_group"]} if case["fmt"] == "parquet" else {}
            shard_paths += [data.write(f"in/part-{i:03d}{suffix}", part, case["fmt"], **kw)] * n
            start += n
        out, qdir = Path(tmp) / "out", Path(tmp) / "quarantine"
        options = {"quarantine": str(qdir)} if case["mode"] == "quarantine" else {}
        summary = batchscore.score(
            str(data.root / "in"), model, out, features=features, batch_size=case["batch_size"],
            on_error=case["mode"], quiet=True, **options,
        )

        n_bad = len(bad)
        assert summary.shards_failed == []
        assert summary.exit_code == (3 if n_bad else 0)
        assert summary.rows_read == len(table)
        assert summary.rows_written == len(table) - n_bad
        assert (summary.rows_quarantined if case["mode"] == "quarantine" else summary.rows_skipped) == n_bad
        assert summary.rows_read == (summary.rows_written + summary.rows_skipped + summary.rows_quarantined
                                     + (summary.rows_filtered or 0))

        good = table.filter(pa.array([i not in bad for i in range(len(table))], pa.bool_()))
        got = read_output(out)
        matrix = np.column_stack([good.column(c).to_numpy(zero_copy_only=False).astype(np.float32) for c in features]) \
            if len(good) else np.zeros((0, len(features)), np.float32)
        assert_predictions(got, good, Models.predict(model, {"features": matrix.reshape(len(good), len(features))}))

        if case["mode"] == "quarantine" and n_bad:
            q = read_output(qdir)
            ids = q.column("id").to_pylist()
            assert sorted(ids) == sorted(bad), "each bad row is quarantined exactly once"
            src = {r["id"]: r for r in table.to_pylist()}
            for row in q.to_pylist():
                i = row["id"]
                assert row["reason"] in expected_reason(bad[i], case["fmt"]), (row["reason"], bad[i])
                assert row["shard"] == shard_paths[i]
                for c in features:
                    want = src[i][c]
                    assert same(row[c], want), (i, c, row[c], want)
                assert set(table.column_names) <= set(row)
