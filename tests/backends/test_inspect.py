"""`batchscore inspect MODEL [DATA...]`: backend, inputs, outputs, and the feature mapping."""

from __future__ import annotations

import json

import pytest


def test_inspect_an_onnx_model(cli, model):
    res = cli("inspect", model)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[:2] == [f"model: {model}", "backend: onnx"]
    assert "inputs:" in res.stdout and "outputs:" in res.stdout


def test_inspect_with_data_shows_which_columns_feed_the_model(cli, torch_models, image_shards):
    _, paths = torch_models
    folder, _ = image_shards
    res = cli("inspect", paths["export"], folder)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"model: {paths['export']}",
        "backend: torch",
        "inputs:",
        "  image: float32[N,3,8,8]",
        "outputs:",
        "  output: float32[N,4]",
        "features (columns named like the model inputs):",
        "  image <- image",
        "keep: id",
        "output schema:",
        "  id: int64",
        "  output: fixed_size_list<item: float>[4]",
    ]


def test_inspect_json(cli, torch_models, image_shards):
    _, paths = torch_models
    folder, _ = image_shards
    res = cli("inspect", paths["script"], folder, "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["backend"] == "torch"
    assert info["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["N", 3, 8, 8]}]
    assert info["features"] == {"image": ["image"]}


def test_inspect_a_pickle_needs_trust_model(cli, tmp_path):
    joblib = pytest.importorskip("joblib")
    from sklearn.linear_model import LogisticRegression

    path = str(tmp_path / "m.joblib")
    joblib.dump(LogisticRegression().fit([[0.0, 1.0], [1.0, 0.0]], ["a", "b"]), path)
    res = cli("inspect", path)
    assert res.exit_code == 2
    assert res.error.startswith(f"model {path} is a pickle: loading it runs arbitrary code")
    res = cli("inspect", path, "--trust-model")
    assert res.exit_code == 0, res.stderr
    assert res.stdout.splitlines()[-3:] == [
        "outputs:",
        "  label: string[N]",
        "  probabilities: float64[N,2] (classes: a, b)",
    ]


def test_inspect_a_missing_model_exits_2(cli, tmp_path):
    res = cli("inspect", str(tmp_path / "nope.onnx"))
    assert res.exit_code == 2
    assert res.error == f"model {tmp_path / 'nope.onnx'} does not exist: fix --model"
