"""Feature mapping: which columns feed which model input, in which order and
type, and how the input arrays are built."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.backends import TensorSpec
from batchscore.errors import ModelError, SchemaError
from batchscore.features import build_feeds, expand_patterns, plan_features
from tests.helpers import Models, assert_predictions, reference


def test_default_features_are_the_float_columns_and_ints_are_kept(data, model):
    t = data.table(6)
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", quiet=True)
    assert summary.features == {"features": ["f0", "f1", "f2"]}
    assert summary.features_chosen_by == "the 3 floating-point columns"
    out = pq.read_table("out.parquet")
    assert out.column_names == ["id", "name", "ts", "count", "score"]
    assert out.schema.field("count").type == pa.int32()
    assert out.column("count").equals(t.column("count"))
    assert_predictions(out, t, reference(model, t))


def test_patterns_match_in_schema_order(data, model):
    t = data.table(6)
    # Schema order b_x, a, b_z, b_y: 'b_*' must give b_x, b_z, b_y, not sorted names.
    t = pa.table({
        "id": t.column("id"), "b_x": t.column("f2"), "a": t.column("f0"), "b_z": t.column("f1"),
        "b_y": pa.array(np.linspace(-1, 1, 6)),
    })
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", features="b_*", quiet=True)
    assert summary.features == {"features": ["b_x", "b_z", "b_y"]}
    assert_predictions(pq.read_table("out.parquet"), t, reference(model, t, ["b_x", "b_z", "b_y"]))


def test_explicit_feature_order_is_kept(data, model):
    t = data.table(6)
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", features="f2,f0,f1", quiet=True)
    assert summary.features == {"features": ["f2", "f0", "f1"]}
    assert_predictions(pq.read_table("out.parquet"), t, reference(model, t, ["f2", "f0", "f1"]))


def test_patterns_and_names_mix_without_duplicates(data, model):
    t = data.table(4)
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", features="f2,f*", quiet=True)
    assert summary.features == {"features": ["f2", "f0", "f1"]}


def test_features_are_not_kept_by_default(data, model):
    t = data.table(4)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", features="f0,f1,count", keep=None, quiet=True)
    assert pq.read_table("out.parquet").column_names == ["id", "name", "ts", "f2", "score"]


def test_model_input_named_like_a_column(data, models):
    model = models.linear(3, input_name="f")
    t = data.table(5)
    f = pa.FixedSizeListArray.from_arrays(pa.array(Models.matrix(t).reshape(-1)), 3)
    t = t.append_column("f", f)
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", quiet=True)
    assert summary.features == {"f": ["f"]}
    assert summary.features_chosen_by == "columns named like the model inputs"
    want = Models.predict(model, {"f": Models.matrix(t)})
    assert_predictions(pq.read_table("out.parquet"), t, want)


def test_multiple_model_inputs_by_name(data, models):
    model = models.two_inputs()
    t = data.table(7)
    t = t.append_column("amount", pa.array(np.arange(7, dtype=np.float32) * 1.5))
    t = t.set_column(t.schema.get_field_index("count"), "count", t.column("count").cast(pa.int64()))
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", batch_size=3, quiet=True)
    assert summary.features == {"amount": ["amount"], "count": ["count"]}
    want = Models.predict(model, {
        "amount": t.column("amount").to_numpy(), "count": t.column("count").to_numpy(),
    })
    out = pq.read_table("out.parquet")
    assert "amount" not in out.column_names and "count" not in out.column_names
    assert_predictions(out, t, want)


def test_multiple_inputs_by_position_with_features(data, models):
    model = models.two_inputs()
    t = data.table(5)
    t = t.append_column("price", pa.array(np.linspace(0.5, 2.5, 5)))
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", features="price,id", keep="id", quiet=True)
    assert summary.features == {"amount": ["price"], "count": ["id"]}
    want = Models.predict(model, {
        "amount": t.column("price").to_numpy().astype(np.float32), "count": t.column("id").to_numpy(),
    })
    assert_predictions(pq.read_table("out.parquet"), t, want)


def test_wrong_number_of_columns_for_several_inputs(data, models):
    model = models.two_inputs()
    path = data.write("a.parquet", data.table(3))
    with pytest.raises(ModelError) as info:
        batchscore.score(path, model, "out.parquet", features="f0,f1,f2", quiet=True)
    assert str(info.value) == (
        "the model has 2 inputs (amount float32[N], count int64[N]) but --features gives 3 columns: "
        "give one column per input, in input order"
    )


@pytest.mark.parametrize("list_type", ["fixed_size_list", "list"])
def test_list_column_feeds_a_tensor_input(data, models, list_type):
    model = models.image()
    n = 9
    pixels = np.random.default_rng(3).normal(size=(n, 48)).astype(np.float32)
    values = pa.array(pixels.reshape(-1))
    if list_type == "fixed_size_list":
        col = pa.FixedSizeListArray.from_arrays(values, 48)
    else:
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, n * 48 + 1, 48, dtype=np.int32)), values)
    t = pa.table({"id": pa.array(np.arange(n)), "image": col})
    path = data.write("a.parquet", t, row_group_size=4)
    summary = batchscore.score(path, model, "out.parquet", batch_size=4, quiet=True)
    assert summary.features == {"image": ["image"]}
    want = Models.predict(model, {"image": pixels.reshape(n, 3, 4, 4)})
    out = pq.read_table("out.parquet")
    assert out.schema.field("channels").type == pa.list_(pa.float32(), 3)
    assert_predictions(out, t, want)


def test_list_column_of_the_wrong_size(data, models):
    model = models.image()
    col = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(2 * 47, np.float32)), 47)
    path = data.write("a.parquet", pa.table({"id": [1, 2], "image": col}))
    with pytest.raises(ModelError) as info:
        batchscore.score(path, model, "out.parquet", quiet=True)
    assert str(info.value) == (
        "model input image float32[N,3,4,4] needs 48 values per row but column 'image' holds 47: fix --features"
    )


def test_variable_list_with_a_wrong_row(data, models):
    from batchscore.errors import DataError

    model = models.image()
    rows = [[0.0] * 48, [1.0] * 47, [2.0] * 48]
    path = data.write("a.parquet", pa.table({"id": [1, 2, 3], "image": pa.array(rows, pa.list_(pa.float32()))}))
    with pytest.raises(DataError) as info:
        batchscore.score(path, model, "out.parquet", quiet=True)
    assert str(info.value) == f"column 'image' row 1 in {path} holds 47 values; the model needs 48 per row"


def test_scalar_columns_for_a_tensor_input(data, models):
    model = models.image()
    path = data.write("a.parquet", data.table(3))
    with pytest.raises(ModelError) as info:
        batchscore.score(path, model, "out.parquet", features="f0,f1", quiet=True)
    assert str(info.value) == (
        "model input image float32[N,3,4,4] needs a tensor per row: feed it a list or fixed-size-list "
        "column with --features (got scalar columns f0, f1)"
    )


def test_string_column_feeds_a_string_input(data, models):
    model = models.strings()
    t = pa.table({"id": pa.array(np.arange(8)), "name": pa.array(["x", "y", "z", "w", "x", "", "z", "y"])})
    path = data.write("a.parquet", t)
    summary = batchscore.score(path, model, "out.parquet", batch_size=3, quiet=True)
    assert summary.features == {"name": ["name"]}
    out = pq.read_table("out.parquet")
    assert out.schema.field("code").type == pa.int64()
    assert out.schema.field("echo").type == pa.string()
    want = Models.predict(model, {"name": np.array(t.column("name").to_pylist(), dtype=object)})
    assert_predictions(out, t, want)
    assert out.column("code").to_pylist() == [10, 20, 30, -1, 10, -1, 30, 20]


def test_dictionary_string_column_feeds_a_string_input(data, models):
    model = models.strings()
    names = pa.array(["x", "y", "z", "x"]).dictionary_encode()
    t = pa.table({"id": pa.array(np.arange(4)), "name": names})
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", quiet=True)
    assert pq.read_table("out.parquet").column("code").to_pylist() == [10, 20, 30, 10]


@pytest.mark.parametrize("arrow_type", [pa.float64(), pa.float32(), pa.int64(), pa.int32(), pa.int8(), pa.bool_()])
def test_numeric_columns_are_cast_to_the_input_type(data, model, arrow_type):
    rng = np.random.default_rng(5)
    n = 11
    cols = {"id": pa.array(np.arange(n))}
    for name in ("a", "b", "c"):
        raw = rng.normal(size=n) * 10
        if pa.types.is_boolean(arrow_type):
            cols[name] = pa.array(raw > 0)
        else:
            cols[name] = pa.array(raw).cast(arrow_type, safe=False)
    t = pa.table(cols)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", features="a,b,c", batch_size=4, quiet=True)
    feeds = np.column_stack([t.column(c).to_numpy().astype(np.float32) for c in "abc"])
    want = Models.predict(model, {"features": feeds})
    assert_predictions(pq.read_table("out.parquet"), t, want)


def test_float_columns_feed_a_double_input(data, models):
    from onnx import TensorProto

    model = models.linear(input_type=TensorProto.DOUBLE)
    t = data.table(6)
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", quiet=True)
    want = Models.predict(model, {"features": Models.matrix(t, dtype=np.float64)})
    assert_predictions(pq.read_table("out.parquet"), t, want)


def test_string_column_for_a_float_input_fails_before_scoring(data, model):
    t = data.table(4)
    path = data.write("a.parquet", t)
    with pytest.raises(SchemaError) as info:
        batchscore.score(path, model, "out", features="f0,f1,name", quiet=True)
    assert str(info.value) == (
        "column 'name' is string but model input 'features' needs float32: choose other columns with --features"
    )
    assert not os.path.exists("out")


def test_timestamp_column_for_a_float_input_is_refused(data, model):
    path = data.write("a.parquet", data.table(4))
    with pytest.raises(SchemaError) as info:
        batchscore.score(path, model, "out", features="f0,f1,ts", quiet=True)
    assert str(info.value) == (
        "column 'ts' is timestamp[us] but model input 'features' needs float32: choose other columns with --features"
    )


# -- the feature planner and builder on their own ------------------------------------------------
SPEC = TensorSpec("features", "float32", (None, 3))


def test_expand_patterns_reports_every_miss():
    with pytest.raises(SchemaError) as info:
        expand_patterns(["a", "zz", "q*"], ["a", "b"], "--features")
    assert str(info.value) == "--features: no column matches zz, q*; available columns: a, b"


def test_plan_features_keep_none_and_patterns():
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("y", pa.float64()), ("z", pa.float32())])
    plan = plan_features(schema, [SPEC], None, [])
    assert plan.keep == []
    assert plan.columns == ["x", "y", "z"]
    assert plan.describe() == ["features <- x, y, z"]
    plan = plan_features(schema, [SPEC], ["z", "x", "y"], ["i*"])
    assert plan.columns == ["z", "x", "y"]
    assert plan.keep == ["id"]


def test_build_feeds_across_segments_and_padding():
    schema = pa.schema([("x", pa.float64()), ("y", pa.int32()), ("z", pa.float32())])
    plan = plan_features(schema, [SPEC], ["x", "y", "z"], [])
    a = pa.record_batch([pa.array([1.0, 2.0]), pa.array([3, 4], pa.int32()), pa.array([5, 6], pa.float32())], schema=schema)
    b = pa.record_batch([pa.array([7.0]), pa.array([8], pa.int32()), pa.array([9], pa.float32())], schema=schema)
    feeds = build_feeds(plan, [("a", a), ("b", b)], 3, padded_rows=4)
    np.testing.assert_array_equal(
        feeds["features"], np.array([[1, 3, 5], [2, 4, 6], [7, 8, 9], [0, 0, 0]], dtype=np.float32)
    )
    assert feeds["features"].dtype == np.float32


def test_build_feeds_reads_sliced_list_columns_from_their_offset():
    spec = TensorSpec("v", "float32", (None, 2))
    col = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(10, dtype=np.float32)), 2)
    schema = pa.schema([("v", col.type)])
    plan = plan_features(schema, [spec], None, None)
    batch = pa.record_batch([col], schema=schema).slice(2, 2)
    feeds = build_feeds(plan, [("s", batch)], 2)
    np.testing.assert_array_equal(feeds["v"], np.array([[4, 5], [6, 7]], dtype=np.float32))


def test_int32_column_feeds_an_int64_input(data, models):
    model = models.two_inputs()
    t = data.table(6).append_column("amount", pa.array(np.linspace(1, 2, 6), pa.float32()))
    assert t.schema.field("count").type == pa.int32()
    path = data.write("a.parquet", t)
    batchscore.score(path, model, "out.parquet", quiet=True)
    want = Models.predict(model, {
        "amount": t.column("amount").to_numpy(), "count": t.column("count").to_numpy().astype(np.int64),
    })
    assert_predictions(pq.read_table("out.parquet"), t, want)


def test_float_column_for_an_integer_input_fails_before_scoring(data, models):
    model = models.two_inputs()
    t = data.table(3).append_column("amount", pa.array([1.0, 2.0, 3.0], pa.float32()))
    t = t.set_column(t.schema.get_field_index("count"), "count", pa.array([1.5, 2.5, 3.5]))
    path = data.write("a.parquet", t)
    with pytest.raises(SchemaError) as info:
        batchscore.score(path, model, "out", quiet=True)
    assert str(info.value) == (
        "column 'count' is double but model input 'count' needs int64: choose other columns with --features"
    )
    assert not os.path.exists("out")
