"""Backends register under the versioned entry-point group batchscore.backends.v1,
built-in and third-party alike."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow.parquet as pq

import batchscore
from batchscore.backends import ENTRY_POINT_GROUP, available, load_class, pick_backend

PLUGIN = '''
import numpy as np
from batchscore.backends import Backend, TensorSpec


class ToyBackend(Backend):
    """Doubles a [N, 3] float input: a third-party backend in a few lines."""

    name = "toy"
    extensions = (".toy",)

    def __init__(self, model_path, device, *, threads, options=None):
        super().__init__(model_path, device, threads=threads, options=options)
        self.inputs = [TensorSpec("features", "float32", (None, 3))]
        self.outputs = [TensorSpec("doubled", "float32", (None, 3))]

    def predict(self, feeds):
        return {"doubled": np.asarray(feeds["features"]) * 2}
'''


def install_plugin(tmp_path, monkeypatch) -> None:
    """A module and a dist-info with entry_points.txt on sys.path, as pip would leave them."""
    site = tmp_path / "site"
    (site / "toy_dist-1.0.dist-info").mkdir(parents=True)
    (site / "toy_backend.py").write_text(PLUGIN)
    (site / "toy_dist-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-dist\nVersion: 1.0\n")
    (site / "toy_dist-1.0.dist-info" / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ntoy = toy_backend:ToyBackend\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "toy_backend", raising=False)


def test_the_group_name_is_versioned():
    assert ENTRY_POINT_GROUP == "batchscore.backends.v1"


def test_built_in_backends_are_registered():
    table = available()
    assert table["onnx"] == "batchscore.backends.onnx:OnnxBackend"
    assert table["torch"] == "batchscore.backends.torch:TorchBackend"
    assert table["jax"] == "batchscore.backends.jax:JaxBackend"
    assert table["sklearn"] == "batchscore.backends.sklearn:SklearnBackend"


def test_importing_a_backend_class_does_not_import_its_framework():
    import subprocess

    code = (
        "import sys; from batchscore.backends import load_class\n"
        "for n in ('torch', 'jax', 'sklearn'): load_class(n)\n"
        "heavy = [m for m in ('torch', 'jax', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_third_party_backend_is_found_through_its_entry_point(tmp_path, monkeypatch, data):
    install_plugin(tmp_path, monkeypatch)
    assert available()["toy"] == "toy_backend:ToyBackend"
    model = tmp_path / "m.toy"
    model.write_text("toy")
    cls = pick_backend(str(model))
    assert cls is load_class("toy") and cls.name == "toy"

    t = data.table(6)
    batchscore.score(data.write("a.parquet", t), str(model), "out.parquet", keep="id", quiet=True)
    out = pq.read_table("out.parquet")
    got = np.asarray(out.column("doubled").combine_chunks().flatten()).reshape(-1, 3)
    want = np.stack([t.column(c).to_numpy() for c in ("f0", "f1", "f2")], axis=1).astype(np.float32) * 2
    np.testing.assert_allclose(got, want)


def test_backend_flag_names_a_registered_backend(tmp_path, monkeypatch, cli, data):
    install_plugin(tmp_path, monkeypatch)
    model = tmp_path / "model.bin"
    model.write_text("toy")
    src = data.write("a.parquet", data.table(3))
    cli.run(src, "--model", str(model), "--backend", "toy", "--output", "out.parquet", "-q")
    assert pq.read_table("out.parquet").num_rows == 3
    msg = cli.fails(src, "--model", str(model), "--backend", "nope", "--output", "o.parquet", code=2)
    assert msg.startswith("--backend 'nope' is unknown; available: ")
    assert "toy" in msg and "torch" in msg
