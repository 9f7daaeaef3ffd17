"""Output columns: kept columns, then one column per model output named after
it; [N]/[N,1] → scalar, [N,K] → fixed_size_list<K>; types are kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper

import batchscore
from batchscore.errors import ModelError
from batchscore.outputs import arrow_type_for, to_arrow
from tests.helpers import Models, assert_predictions, reference


@pytest.mark.parametrize("shape", ["column", "vector"])
def test_one_value_per_row_is_a_scalar_column(data, models, shape):
    model = models.linear(shape=shape)
    t = data.table(9)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", batch_size=4, quiet=True)
    out = pq.read_table("out.parquet")
    assert out.schema.field("score").type == pa.float32()
    want = reference(model, t)["score"].reshape(-1)
    assert_predictions(out, t, {"score": want})


def test_k_values_per_row_are_a_fixed_size_list(data, models):
    model = models.linear(k=4, shape="matrix")
    t = data.table(9)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", batch_size=4, quiet=True)
    out = pq.read_table("out.parquet")
    assert out.schema.field("score").type == pa.list_(pa.float32(), 4)
    assert_predictions(out, t, reference(model, t))


def test_columns_are_kept_then_one_per_output_with_its_type(data, models):
    model = models.classifier()
    t = data.table(10)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", batch_size=3, quiet=True)
    out = pq.read_table("out.parquet")
    assert out.schema.remove_metadata() == pa.schema([
        ("id", pa.int64()), ("name", pa.string()), ("ts", pa.timestamp("us")), ("count", pa.int32()),
        ("probabilities", pa.list_(pa.float32(), 3)), ("label", pa.int64()), ("positive", pa.bool_()),
    ])
    for name in ("id", "name", "ts", "count"):
        assert out.column(name).equals(t.column(name))
    assert_predictions(out, t, reference(model, t))


def test_prediction_prefix(data, models):
    model = models.classifier()
    t = data.table(5)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", prediction_prefix="p_", keep="id", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.column_names == ["id", "p_probabilities", "p_label", "p_positive"]
    assert_predictions(out, t, reference(model, t), prefix="p_")


def test_prediction_prefix_resolves_a_clash(data, models):
    model = models.linear(output="name")
    t = data.table(5)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", prediction_prefix="pred_", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.column_names == ["id", "name", "ts", "count", "pred_name"]
    assert out.column("name").equals(t.column("name"))
    assert_predictions(out, t, {"name": reference(model, t)["name"]}, prefix="pred_")


def test_keep_none_and_keep_id(data, model):
    t = data.table(5)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "none.parquet", keep="none", quiet=True)
    batchscore.score(path, model, "id.parquet", keep="id", quiet=True)
    assert pq.read_table("none.parquet").column_names == ["score"]
    out = pq.read_table("id.parquet")
    assert out.column_names == ["id", "score"]
    assert_predictions(out, t, reference(model, t))
    # Without kept columns the rows still come out in input order.
    np.testing.assert_allclose(
        pq.read_table("none.parquet").column("score").to_numpy(), out.column("score").to_numpy(), rtol=1e-6
    )


def test_output_shapes_the_model_leaves_dynamic_are_probed(data, models):
    w, b = Models.weights(3, 2)
    from onnx import numpy_helper

    model = models.save(
        "dynamic.onnx",
        [helper.make_node("MatMul", ["features", "W"], ["mm"]), helper.make_node("Add", ["mm", "B"], ["out"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, None])],  # width unknown
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    t = data.table(6)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.schema.field("out").type == pa.list_(pa.float32(), 2)
    assert_predictions(out, t, reference(model, t))


# -- the conversion on its own --------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype, shape, want",
    [
        ("float32", (), pa.float32()),
        ("int64", (), pa.int64()),
        ("bool", (), pa.bool_()),
        ("string", (), pa.string()),
        ("float64", (4,), pa.list_(pa.float64(), 4)),
        ("float16", (2, 3), pa.list_(pa.list_(pa.float16(), 3), 2)),
    ],
)
def test_arrow_type_for(dtype, shape, want):
    assert arrow_type_for(dtype, shape) == want


def test_to_arrow_keeps_nested_shapes_and_drops_padding():
    arr = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    col = to_arrow("x", arr, 3)
    assert col.type == pa.list_(pa.list_(pa.float32(), 3), 2)
    assert col.to_pylist() == arr[:3].tolist()


def test_to_arrow_n_by_1_is_a_scalar():
    col = to_arrow("x", np.array([[1], [2], [3]], dtype=np.int64), 3)
    assert col.type == pa.int64()
    assert col.to_pylist() == [1, 2, 3]


def test_to_arrow_rejects_outputs_without_a_batch_dimension():
    with pytest.raises(ModelError) as info:
        to_arrow("x", np.float32(1.0), 3)
    assert str(info.value) == "model output 'x' is a scalar, not one value per row"
    with pytest.raises(ModelError) as info:
        to_arrow("x", np.zeros((2, 1), np.float32), 3)
    assert str(info.value) == (
        "model output 'x' has 2 rows for a batch of 3: the model must keep the batch dimension first"
    )
    with pytest.raises(ModelError) as info:
        to_arrow("x", [{"a": 1.0}], 1)
    assert str(info.value) == "model output 'x' is a sequence, not a tensor; batchscore cannot store it"
