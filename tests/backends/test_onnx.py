"""The ONNX backend: ZipMap outputs become class-ordered fixed-size lists with
their labels in the file's metadata; string outputs; model inspection."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.backends import Device, TensorSpec, available, pick_backend
from batchscore.backends.onnx import OnnxBackend
from tests.helpers import Models, assert_predictions


def _zipmap_rows(maps, labels) -> np.ndarray:
    """onnxruntime's list of {class: p} dicts as an [N, C] array in class order."""
    return np.array([[m[c] for c in labels] for m in maps], dtype=np.float32)


@pytest.mark.parametrize("labels", [(0, 1, 2), ("neg", "pos")], ids=["int-labels", "string-labels"])
def test_zipmap_becomes_a_fixed_size_list_in_class_order(data, models, labels):
    model = models.zipmap(labels=labels)
    t = data.table(11)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", keep="id", batch_size=4, quiet=True)

    out = pq.read_table("out.parquet")
    label_type = pa.int64() if isinstance(labels[0], int) else pa.string()
    assert out.schema.remove_metadata() == pa.schema([
        ("id", pa.int64()), ("output_label", label_type),
        ("output_probability", pa.list_(pa.float32(), len(labels))),
    ])
    ref = Models.predict(model, {"features": Models.matrix(t)})
    assert_predictions(out, t, {
        "output_label": ref["output_label"],
        "output_probability": _zipmap_rows(ref["output_probability"], labels),
    })
    meta = json.loads(out.schema.metadata[b"batchscore"])
    assert meta["outputs"] == {"output_probability": {"class_labels": list(labels)}}


def test_zipmap_labels_follow_the_prediction_prefix(data, models):
    model = models.zipmap()
    path = data.write("a.parquet", data.table(3))
    batchscore.score(path, model, "out.parquet", prediction_prefix="p_", quiet=True)
    meta = json.loads(pq.read_schema("out.parquet").metadata[b"batchscore"])
    assert meta["outputs"] == {"p_output_probability": {"class_labels": [0, 1, 2]}}


def test_a_real_sklearn_classifier_through_skl2onnx(data, tmp_path):
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)).astype(np.float32)
    y = np.array([0, 1, 2] * 20)
    clf = LogisticRegression(max_iter=200).fit(x, y)
    onx = skl2onnx.convert_sklearn(clf, initial_types=[("features", FloatTensorType([None, 3]))], target_opset=17)
    model = tmp_path / "sk.onnx"
    model.write_bytes(onx.SerializeToString())

    t = data.table(13)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", keep="id", batch_size=5, quiet=True)
    out = pq.read_table("out.parquet")
    assert out.schema.field("output_probability").type == pa.list_(pa.float32(), 3)
    ref = Models.predict(str(model), {"features": Models.matrix(t)})
    assert_predictions(out, t, {
        "output_label": ref["output_label"],
        "output_probability": _zipmap_rows(ref["output_probability"], [0, 1, 2]),
    })
    # ... and the same as scikit-learn's own probabilities.
    order = np.argsort(out.column("id").to_numpy())
    np.testing.assert_allclose(
        np.stack(out.column("output_probability").to_numpy(zero_copy_only=False))[order],
        clf.predict_proba(Models.matrix(t)), rtol=1e-4, atol=1e-6,
    )
    meta = json.loads(out.schema.metadata[b"batchscore"])
    assert meta["outputs"]["output_probability"] == {"class_labels": [0, 1, 2]}


def test_backend_reports_inputs_and_outputs(models):
    backend = OnnxBackend(models.classifier(), Device("cpu"), threads=1)
    try:
        assert backend.inputs == [TensorSpec("features", "float32", (None, 3))]
        assert backend.outputs == [
            TensorSpec("probabilities", "float32", (None, 3)),
            TensorSpec("label", "int64", (None,)),
            TensorSpec("positive", "bool", (None,)),
        ]
        x = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
        got = backend.predict({"features": x})
        want = Models.predict(models.root / "classifier.onnx", {"features": x})
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    finally:
        backend.close()


def test_fixed_batch_is_reported(models):
    backend = OnnxBackend(models.linear(batch=4), Device("cpu"), threads=1)
    assert backend.inputs[0].fixed_batch == 4
    assert backend.inputs[0].describe() == "features float32[4,3]"


def test_onnx_is_registered_and_picked_by_extension(model):
    assert available()["onnx"] == "batchscore.backends.onnx:OnnxBackend"
    assert pick_backend(model) is OnnxBackend
