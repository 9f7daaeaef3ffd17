"""Test helpers shared by the suite: ONNX model builders, data writers,
onnxruntime reference predictions, output readers and a CLI runner.

Fixtures live in conftest.py; these are plain functions and classes.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from batchscore.cli import app

OPSET = 17
ML_OPSET = 3
IR_VERSION = 8  # old enough for any onnxruntime batchscore supports

#: Float columns of the default data set, in schema order: what the default mapping feeds.
FEATURES = ["f0", "f1", "f2"]
T0 = dt.datetime(2026, 12, 1)


# -- models ---------------------------------------------------------------------
def _vi(name: str, elem: int, shape: Sequence[int | None] | None):
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


class Models:
    """Builds small ONNX models in a folder and runs them with onnxruntime.

    Every builder returns the model's path (a str).
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def save(self, name, nodes, inputs, outputs, initializers=(), *, ml: bool = False) -> str:
        graph = helper.make_graph(list(nodes), name.split(".")[0], list(inputs), list(outputs), list(initializers))
        opsets = [helper.make_opsetid("", OPSET)]
        if ml:
            opsets.append(helper.make_opsetid("ai.onnx.ml", ML_OPSET))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="batchscore-tests")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        path = self.root / name
        onnx.save(model, path)
        return str(path)

    @staticmethod
    def weights(n_features: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        # Distinct weights per feature, so feeding columns in the wrong order shows.
        w = np.random.default_rng(7).normal(size=(n_features, k)).astype(np.float32)
        b = (np.arange(k, dtype=np.float32) * 0.5 + 0.25).astype(np.float32)
        return w, b

    def linear(
        self,
        n_features: int = 3,
        k: int = 1,
        *,
        shape: str = "column",
        name: str = "model.onnx",
        input_name: str = "features",
        output: str = "score",
        batch: int | None = None,
        input_type: int = TensorProto.FLOAT,
    ) -> str:
        """``x @ W + b``. ``shape``: "column" gives [N,1], "vector" [N], "matrix" [N,k]."""
        w, b = self.weights(n_features, 1 if shape != "matrix" else k)
        nodes, inits = [], [_const("W", w), _const("B", b)]
        x = input_name
        if input_type != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [x], ["xf"], to=TensorProto.FLOAT))
            x = "xf"
        if shape == "vector":
            nodes += [
                helper.make_node("MatMul", [x, "W"], ["mm"]),
                helper.make_node("Add", ["mm", "B"], ["lin"]),
                helper.make_node("Reshape", ["lin", "flat"], [output]),
            ]
            inits.append(_const("flat", np.array([-1], dtype=np.int64)))
            out_shape = [batch]
        else:
            nodes += [helper.make_node("MatMul", [x, "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], [output])]
            out_shape = [batch, 1 if shape == "column" else k]
        return self.save(
            name,
            nodes,
            [_vi(input_name, input_type, [batch, n_features])],
            [_vi(output, TensorProto.FLOAT, out_shape)],
            inits,
        )

    def classifier(self, n_features: int = 3, k: int = 3, *, name: str = "classifier.onnx") -> str:
        """Outputs ``probabilities`` float [N,k], ``label`` int64 [N] and ``positive`` bool [N]."""
        w, b = self.weights(n_features, k)
        nodes = [
            helper.make_node("MatMul", ["features", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
            helper.make_node("Greater", ["label", "zero"], ["positive"]),
        ]
        return self.save(
            name,
            nodes,
            [_vi("features", TensorProto.FLOAT, [None, n_features])],
            [
                _vi("probabilities", TensorProto.FLOAT, [None, k]),
                _vi("label", TensorProto.INT64, [None]),
                _vi("positive", TensorProto.BOOL, [None]),
            ],
            [_const("W", w), _const("B", b), _const("zero", np.array(0, dtype=np.int64))],
        )

    def image(self, *, name: str = "image.onnx", input_name: str = "image") -> str:
        """Input float [N,3,4,4]; output ``channels`` float [N,3]: a weighted sum per channel."""
        weights = np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4) / 48.0
        nodes = [
            helper.make_node("Mul", [input_name, "Wimg"], ["weighted"]),
            helper.make_node("ReduceSum", ["weighted", "axes"], ["channels"], keepdims=0),
        ]
        return self.save(
            name,
            nodes,
            [_vi(input_name, TensorProto.FLOAT, [None, 3, 4, 4])],
            [_vi("channels", TensorProto.FLOAT, [None, 3])],
            [_const("Wimg", weights), _const("axes", np.array([2, 3], dtype=np.int64))],
        )

    def two_inputs(self, *, name: str = "two_inputs.onnx") -> str:
        """Inputs ``amount`` float [N] and ``count`` int64 [N]; output ``total`` = amount * count + 1."""
        nodes = [
            helper.make_node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["amount", "count_f"], ["product"]),
            helper.make_node("Add", ["product", "one"], ["total"]),
        ]
        return self.save(
            name,
            nodes,
            [_vi("amount", TensorProto.FLOAT, [None]), _vi("count", TensorProto.INT64, [None])],
            [_vi("total", TensorProto.FLOAT, [None])],
            [_const("one", np.array(1.0, dtype=np.float32))],
        )

    def strings(self, *, name: str = "strings.onnx") -> str:
        """Input ``name`` string [N]; outputs ``code`` int64 [N] (a LabelEncoder) and ``echo`` string [N]."""
        nodes = [
            helper.make_node(
                "LabelEncoder", ["name"], ["code"], domain="ai.onnx.ml",
                keys_strings=["x", "y", "z"], values_int64s=[10, 20, 30], default_int64=-1,
            ),
            helper.make_node("Identity", ["name"], ["echo"]),
        ]
        return self.save(
            name,
            nodes,
            [_vi("name", TensorProto.STRING, [None])],
            [_vi("code", TensorProto.INT64, [None]), _vi("echo", TensorProto.STRING, [None])],
            ml=True,
        )

    def zipmap(self, n_features: int = 3, labels: Sequence = (0, 1, 2), *, name: str = "zipmap.onnx") -> str:
        """Like skl2onnx's classifiers: ``output_label`` and ``output_probability``
        (a ZipMap: one {class: probability} map per row)."""
        k = len(labels)
        w, b = self.weights(n_features, k)
        ints = all(isinstance(c, int) for c in labels)
        label_attr = {"classlabels_ints": list(labels)} if ints else {"classlabels_strings": list(labels)}
        zip_attr = {"classlabels_int64s": list(labels)} if ints else {"classlabels_strings": list(labels)}
        nodes = [
            helper.make_node(
                "LinearClassifier", ["features"], ["label", "probabilities"], domain="ai.onnx.ml",
                coefficients=w.T.reshape(-1).tolist(), intercepts=b.tolist(), post_transform="SOFTMAX", **label_attr,
            ),
            helper.make_node("Identity", ["label"], ["output_label"]),
            helper.make_node("ZipMap", ["probabilities"], ["output_probability"], domain="ai.onnx.ml", **zip_attr),
        ]
        key_type = TensorProto.INT64 if ints else TensorProto.STRING
        prob_map = helper.make_map_type_proto(key_type, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        return self.save(
            name,
            nodes,
            [_vi("features", TensorProto.FLOAT, [None, n_features])],
            [
                _vi("output_label", key_type, [None]),
                helper.make_value_info("output_probability", helper.make_sequence_type_proto(prob_map)),
            ],
            ml=True,
        )

    # -- onnxruntime's own answers --------------------------------------------------
    @staticmethod
    def predict(path: str, feeds: Mapping[str, np.ndarray]) -> dict[str, object]:
        """onnxruntime's output on ``feeds`` (all rows at once, or in padded
        chunks when the model's batch dimension is fixed)."""
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        fixed = sess.get_inputs()[0].shape[0]
        if not isinstance(fixed, int):
            return dict(zip(names, sess.run(names, dict(feeds))))
        n = len(next(iter(feeds.values())))
        chunks: dict[str, list] = {k: [] for k in names}
        for start in range(0, n, fixed):
            part = {}
            for k, v in feeds.items():
                block = v[start : start + fixed]
                pad = fixed - len(block)
                part[k] = np.concatenate([block, np.zeros((pad, *block.shape[1:]), block.dtype)]) if pad else block
            for k, arr in zip(names, sess.run(names, part)):
                chunks[k].append(arr[: min(fixed, n - start)])
        return {k: np.concatenate(v) for k, v in chunks.items()}

    @staticmethod
    def matrix(table: pa.Table, columns: Sequence[str] = FEATURES, dtype=np.float32) -> np.ndarray:
        """The ``[N, F]`` input onnxruntime would get from these columns."""
        return np.column_stack([table.column(c).to_numpy().astype(dtype) for c in columns]).astype(dtype)


# -- data -----------------------------------------------------------------------
class Data:
    """Writes small data sets in every input format under one folder."""

    FORMATS = ("parquet", "csv", "ndjson", "ipc_file", "ipc_stream")
    SUFFIX = {"parquet": ".parquet", "csv": ".csv", "ndjson": ".ndjson", "ipc_file": ".arrow", "ipc_stream": ".ipc"}

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def table(n: int, start: int = 0, *, n_features: int = 3, seed: int | None = None) -> pa.Table:
        """``id`` int64, ``name`` string, ``ts`` timestamp, ``count`` int32, then ``f0..`` float64."""
        ids = np.arange(start, start + n, dtype=np.int64)
        rng = np.random.default_rng(start if seed is None else seed)
        cols = {
            "id": pa.array(ids),
            "name": pa.array([("x", "y", "z")[i % 3] for i in ids], pa.string()),
            "ts": pa.array([T0 + dt.timedelta(hours=6 * int(i)) for i in ids], pa.timestamp("us")),
            "count": pa.array((ids % 5).astype(np.int32)),
        }
        for j in range(n_features):
            cols[f"f{j}"] = pa.array(rng.normal(size=n))
        return pa.table(cols)

    def path(self, rel: str) -> Path:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write(self, rel: str, table: pa.Table, fmt: str = "parquet", **kw) -> str:
        """Write ``table`` at ``rel`` (under this folder) in ``fmt``; returns the path."""
        p = self.path(rel)
        if fmt == "parquet":
            pq.write_table(table, p, **kw)
        elif fmt == "csv":
            pacsv.write_csv(table, p)
        elif fmt == "ndjson":
            with open(p, "w") as fh:
                for row in table.to_pylist():
                    fh.write(json.dumps(row, default=lambda v: v.isoformat()) + "\n")
        elif fmt == "ipc_file":
            with pa.OSFile(str(p), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
                for batch in table.to_batches(max_chunksize=kw.get("chunk", 4)):
                    w.write_batch(batch)
        elif fmt == "ipc_stream":
            with pa.OSFile(str(p), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                for batch in table.to_batches(max_chunksize=kw.get("chunk", 4)):
                    w.write_batch(batch)
        else:
            raise ValueError(fmt)
        return str(p)

    def shards(self, folder: str, sizes: Sequence[int], fmt: str = "parquet", **kw) -> tuple[str, pa.Table]:
        """Shards ``part-000``.. of the given sizes with consecutive ids; returns (folder, all rows)."""
        tables, start = [], 0
        for i, n in enumerate(sizes):
            t = self.table(n, start)
            self.write(f"{folder}/part-{i:03d}{self.SUFFIX[fmt]}", t, fmt, **kw)
            tables.append(t)
            start += n
        return str(self.root / folder), pa.concat_tables(tables)


# -- reading outputs ---------------------------------------------------------------
def output_files(root: str | os.PathLike) -> list[str]:
    """Data files of a directory output, relative, sorted (markers excluded)."""
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.endswith(".parquet") and not f.startswith((".", "_")):
                out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def all_files(root: str | os.PathLike) -> list[str]:
    """Every file under ``root`` (markers and hidden ones too), relative, sorted."""
    out = []
    for dirpath, _, files in os.walk(root):
        out += [os.path.relpath(os.path.join(dirpath, f), root) for f in files]
    return sorted(out)


def read_output(path: str | os.PathLike) -> pa.Table:
    """All rows of an output (a .parquet file, or a directory's files in name order)."""
    if os.path.isfile(path):
        return pq.read_table(path)
    tables = [pq.read_table(os.path.join(path, f)) for f in output_files(path)]
    return pa.concat_tables(tables)


def column_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A prediction column as numpy: fixed-size lists become extra dimensions."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    shape = [len(arr)]
    t = arr.type
    while pa.types.is_fixed_size_list(t):
        shape.append(t.list_size)
        t = t.value_type
    while pa.types.is_fixed_size_list(arr.type):
        arr = arr.flatten()
    values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(shape)


def assert_predictions(
    out: pa.Table,
    source: pa.Table,
    expected: Mapping[str, np.ndarray],
    *,
    prefix: str = "",
    key: str = "id",
) -> None:
    """Each source row appears exactly once in ``out`` (matched by ``key``) with
    onnxruntime's prediction: floats within 1e-5 relative, others exactly."""
    out_ids = out.column(key).to_pylist()
    src_ids = source.column(key).to_pylist()
    assert len(out_ids) == len(set(out_ids)), "an id appears twice in the output"
    assert sorted(out_ids) == sorted(src_ids)
    where = {v: i for i, v in enumerate(out_ids)}
    order = np.array([where[v] for v in src_ids], dtype=np.int64)
    for name, want in expected.items():
        got = column_numpy(out.column(prefix + name))
        got = got[order] if len(order) else got
        want = np.asarray(want)
        if want.ndim == 2 and want.shape[1] == 1 and got.ndim == 1:
            want = want[:, 0]
        assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
        if want.dtype.kind == "f":
            assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=name)
        elif want.dtype.kind in "OUS":
            assert got.tolist() == want.tolist(), name
        else:
            assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
            np.testing.assert_array_equal(got, want, err_msg=name)


# -- the command line -----------------------------------------------------------------
@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str
    exception: BaseException | None

    @property
    def error(self) -> str:
        """The one ``batchscore: error: ...`` line (the last on stderr), without its prefix."""
        lines = self.stderr.splitlines()
        errors = [line for line in lines if line.startswith("batchscore: error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], f"expected one error line, last:\n{self.stderr}"
        return errors[0][len("batchscore: error: "):]


class Cli:
    """Runs ``batchscore`` in-process with typer's CliRunner."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> CliResult:
        res = self.runner.invoke(app, [str(a) for a in args], env=dict(env or {}))
        exc = res.exception if not isinstance(res.exception, SystemExit) else None
        return CliResult(res.exit_code, res.stdout, res.stderr, exc)

    def run(self, *args: str, env: Mapping[str, str] | None = None) -> CliResult:
        """``batchscore run ARGS``, which must succeed."""
        res = self("run", *args, env=env)
        assert res.exit_code == 0, f"exit {res.exit_code}\n{res.stderr}"
        return res

    def fails(self, *args: str, code: int, env: Mapping[str, str] | None = None) -> str:
        """``batchscore run ARGS``, which must fail with ``code`` and one error
        line and no traceback; returns the message."""
        res = self("run", *args, env=env)
        assert res.exception is None, res.exception
        assert "Traceback" not in res.stderr + res.stdout, res.stderr
        assert res.stdout == ""
        assert res.exit_code == code, f"exit {res.exit_code}, wanted {code}\n{res.stderr}"
        return res.error


def reference(model_path: str, table: pa.Table, columns: Sequence[str] = FEATURES) -> dict[str, np.ndarray]:
    """onnxruntime's predictions for a single-input ``features`` model on ``columns``."""
    return Models.predict(model_path, {"features": Models.matrix(table, columns)})


# -- background runs -------------------------------------------------------------
def spawn(*args: str):
    """``python -m batchscore run ARGS --quiet`` in the background (stderr kept)."""
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "batchscore", "run", *map(str, args), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for(what, proc=None, timeout: float = 60.0, poll: float = 0.01) -> None:
    """Poll ``what()`` until true; fails if ``proc`` ends first."""
    import time

    import pytest

    deadline = time.monotonic() + timeout
    while not what():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) first: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(poll)
