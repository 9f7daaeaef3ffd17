"""Pickled scikit-learn models: refused without --trust-model (unpickling runs
code), scored with it, and converted once to ONNX with `batchscore convert`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.backends import pick_backend
from tests.helpers import FEATURES

sklearn = pytest.importorskip("sklearn")
joblib = pytest.importorskip("joblib")
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402

from batchscore.backends.sklearn import SklearnBackend  # noqa: E402


def refusal(path: str) -> str:
    return (
        f"model {path} is a pickle: loading it runs arbitrary code stored in the file, so batchscore refuses it "
        "by default; pass --trust-model if you trust where it came from, or convert it once to ONNX where it is "
        f"trusted: batchscore convert {path} MODEL.onnx --trust-model"
    )


def matrix(table: pa.Table) -> np.ndarray:
    return np.stack([table.column(c).to_numpy() for c in FEATURES], axis=1)


@pytest.fixture
def classifier(tmp_path, data):
    """A logistic regression on f0..f2 with string classes, pickled with joblib."""
    t = data.table(200, seed=1)
    x = matrix(t)
    y = np.array(["low", "mid", "high"])[np.digitize(x[:, 0] + x[:, 1], [-0.5, 0.5])]
    model = LogisticRegression().fit(x, y)
    path = str(tmp_path / "clf.joblib")
    joblib.dump(model, path)
    return model, path


def test_a_pickle_without_trust_model_is_refused_with_exit_2(cli, classifier, data):
    _, path = classifier
    src = data.write("a.parquet", data.table(5))
    assert pick_backend(path) is SklearnBackend
    assert cli.fails(src, "--model", path, "--output", "out.parquet", code=2) == refusal(path)


def test_with_trust_model_labels_and_probabilities_equal_sklearn(cli, classifier, data):
    model, path = classifier
    t = data.table(23)
    src = data.write("a.parquet", t)
    cli.run(src, "--model", path, "--trust-model", "--keep", "id", "--batch-size", "7", "--output", "out.parquet", "-q")

    out = pq.read_table("out.parquet")
    assert out.column_names == ["id", "label", "probabilities"]
    assert out.schema.field("probabilities").type == pa.list_(pa.float64(), 3)
    assert out.column("label").to_pylist() == model.predict(matrix(t)).tolist()
    got = np.asarray(out.column("probabilities").combine_chunks().flatten()).reshape(-1, 3)
    np.testing.assert_allclose(got, model.predict_proba(matrix(t)), rtol=1e-12)
    meta = json.loads(out.schema.metadata[b"batchscore"])
    assert meta["outputs"] == {"probabilities": {"class_labels": list(model.classes_)}}


def test_trust_model_in_the_library_api(classifier, data):
    model, path = classifier
    t = data.table(4)
    batchscore.score(data.write("a.parquet", t), path, "out.parquet", trust_model=True, keep="id", quiet=True)
    assert pq.read_table("out.parquet").column("label").to_pylist() == model.predict(matrix(t)).tolist()


def test_a_regressor_yields_prediction(tmp_path, data):
    t = data.table(30)
    model = LinearRegression().fit(matrix(t), matrix(t) @ [1.0, 2.0, -1.0])
    path = str(tmp_path / "reg.pkl")
    joblib.dump(model, path)
    batchscore.score(data.write("a.parquet", t), path, "out.parquet", trust_model=True, keep="id", quiet=True)
    np.testing.assert_allclose(pq.read_table("out.parquet").column("prediction").to_numpy(), model.predict(matrix(t)))


def test_nan_reaches_a_tree_model_that_reads_it_as_missing(tmp_path, data):
    t = data.table(200, seed=2)
    x = matrix(t)
    x[::5, 1] = np.nan
    y = (np.nan_to_num(x[:, 1], nan=3.0) > 0).astype(np.int64)
    model = HistGradientBoostingClassifier(max_iter=20).fit(x, y)
    path = str(tmp_path / "hgb.joblib")
    joblib.dump(model, path)
    t = t.set_column(t.schema.get_field_index("f1"), "f1", pa.array(x[:, 1]))
    src = data.write("nan.parquet", t)
    batchscore.score(src, path, "out.parquet", trust_model=True, allow_nan=True, keep="id", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.column("label").to_pylist() == model.predict(x).tolist()
    got = np.asarray(out.column("probabilities").combine_chunks().flatten()).reshape(-1, 2)
    np.testing.assert_allclose(got, model.predict_proba(x), rtol=1e-12)


def test_convert_refuses_without_trust_model(cli, classifier, tmp_path):
    _, path = classifier
    res = cli("convert", path, str(tmp_path / "m.onnx"))
    assert res.exit_code == 2
    assert res.error == refusal(path)
    assert not (tmp_path / "m.onnx").exists()


def test_converted_onnx_matches_predict_proba(cli, tmp_path, data):
    t = data.table(200, seed=3)
    x = matrix(t)
    model = RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(x, (x[:, 0] > 0).astype(np.int64))
    path = str(tmp_path / "rf.joblib")
    joblib.dump(model, path)
    onnx_path = str(tmp_path / "rf.onnx")
    res = cli("convert", path, onnx_path, "--trust-model")
    assert res.exit_code == 0, res.stderr
    assert res.stdout == (
        f"wrote {onnx_path}: RandomForestClassifier, input features float32[N,3], outputs label, probabilities\n"
    )
    src = data.write("a.parquet", t)
    batchscore.score(src, onnx_path, "out.parquet", keep="id", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.column("label").to_pylist() == model.predict(x).tolist()
    got = np.asarray(out.column("probabilities").combine_chunks().flatten()).reshape(-1, 2)
    np.testing.assert_allclose(got, model.predict_proba(x.astype(np.float32)), atol=1e-6)
    meta = json.loads(out.schema.metadata[b"batchscore"])
    assert meta["outputs"] == {"probabilities": {"class_labels": [0, 1]}}


def test_device_gpu_is_refused_for_sklearn(classifier):
    from batchscore.errors import DeviceError

    with pytest.raises(DeviceError, match=r"^--device gpu: the sklearn backend cannot run on a GPU; use --device cpu or auto$"):
        SklearnBackend.resolve_device("gpu")


def test_precision_is_refused(classifier):
    from batchscore.backends import Device
    from batchscore.errors import UsageError

    _, path = classifier
    with pytest.raises(UsageError, match=r"^--precision fp16: the sklearn backend computes in the model's own precision$"):
        SklearnBackend(path, Device("cpu"), threads=1, options={"precision": "fp16", "trust_model": True})
