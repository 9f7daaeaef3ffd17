"""The torch backend: TorchScript (scripted and traced) and torch.export programs
give the eager module's predictions through batchscore.score on real Parquet."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.backends import Device, pick_backend
from batchscore.errors import DeviceError, ModelError
from tests.backends.conftest import IMAGE, images_of

torch = pytest.importorskip("torch")
from batchscore.backends.torch import TorchBackend  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def eager(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("kind", ["script", "trace", "export"])
def test_predictions_equal_eager_pytorch(torch_models, image_shards, kind):
    net, paths = torch_models
    folder, table = image_shards
    summary = batchscore.score(folder, paths[kind], "out", batch_size=5, device="cpu", quiet=True)

    out = pa.concat_tables(pq.read_table(f"out/{n}") for n in ("part-000.parquet", "part-002.parquet"))
    assert out.column_names == ["id", "output"]
    assert out.schema.field("output").type == pa.list_(pa.float32(), 4)
    assert out.column("id").to_pylist() == table.column("id").to_pylist()
    got = np.asarray(out.column("output").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(got, eager(net, images_of(table)), rtol=1e-5, atol=1e-6)
    assert summary.rows_written == 19
    meta = json.loads(pq.read_schema("out/part-000.parquet").metadata[b"batchscore"])
    assert meta["backend"] == "torch"


def test_the_backend_is_picked_by_extension_and_content(torch_models, tmp_path):
    _, paths = torch_models
    assert pick_backend(paths["script"]) is TorchBackend
    assert pick_backend(paths["export"]) is TorchBackend
    renamed = tmp_path / "model.bin"  # no known extension: the archive's content says TorchScript
    renamed.write_bytes(open(paths["script"], "rb").read())
    assert pick_backend(str(renamed)) is TorchBackend


def test_export_records_input_and_output_specs(torch_models):
    _, paths = torch_models
    backend = TorchBackend(paths["export"], Device("cpu"), threads=1)
    assert [s.describe() for s in backend.inputs] == ["image float32[N,3,8,8]"]
    assert [s.describe() for s in backend.outputs] == ["output float32[N,4]"]


def test_dict_outputs_become_columns_named_by_their_keys(torch_models, image_shards):
    net, paths = torch_models
    folder, table = image_shards
    batchscore.score(folder, paths["dict"], "out.parquet", keep="id", quiet=True)
    out = pq.read_table("out.parquet")
    assert out.column_names == ["id", "logits", "probabilities"]
    logits = eager(net, images_of(table))
    got = np.asarray(out.column("probabilities").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(got, torch.softmax(torch.from_numpy(logits), -1).numpy(), rtol=1e-5, atol=1e-6)


def test_torchscript_without_metadata_feeds_scalar_columns(data, tmp_path):
    from tests.backends.nets import Linear

    torch.manual_seed(1)
    net = Linear().eval()
    path = str(tmp_path / "linear.pt")
    torch.jit.save(torch.jit.script(net), path)
    backend = TorchBackend(path, Device("cpu"), threads=1)
    assert [s.describe() for s in backend.inputs] == ["features float32[?]"]
    t = data.table(9)
    src = data.write("a.parquet", t)
    batchscore.score(src, path, "out.parquet", features="f*", keep="id", quiet=True)
    x = np.stack([t.column(c).to_numpy() for c in ("f0", "f1", "f2")], axis=1).astype(np.float32)
    got = pq.read_table("out.parquet").column("output").to_numpy()
    np.testing.assert_allclose(got, eager(net, x)[:, 0], rtol=1e-6)


@pytest.mark.parametrize("precision,tol", [("bf16", 5e-2), ("fp16", 5e-3)])
def test_reduced_precision_is_close_and_comes_back_as_float32(torch_models, image_shards, precision, tol):
    net, paths = torch_models
    folder, table = image_shards
    backend = TorchBackend(paths["script"], Device("cpu"), threads=1, options={"precision": precision})
    x = images_of(table)
    got = backend.predict({"image": x})["output"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, eager(net, x), atol=tol, rtol=tol)


def test_an_unknown_precision_is_a_usage_error(torch_models, image_shards, cli):
    _, paths = torch_models
    folder, _ = image_shards
    assert cli.fails(folder, "--model", paths["script"], "--precision", "fp8", "--output", "o", code=2) == (
        "--precision 'fp8' is not one of: fp32, fp16, bf16"
    )


def test_a_torch_save_pickle_is_refused(tmp_path, image_shards, cli):
    from tests.backends.nets import ConvNet

    path = str(tmp_path / "pickled.pt")
    torch.save(ConvNet(), path)
    folder, _ = image_shards
    assert cli.fails(folder, "--model", path, "--output", "o", code=2) == (
        f"model {path} is a torch.save pickle, not TorchScript or torch.export: unpickling runs arbitrary code, "
        "so batchscore does not load it; save the model with torch.jit.save(torch.jit.script(m), ...) or "
        "torch.export.save(torch.export.export(m, args), ...)"
    )


def test_a_file_that_is_not_torchscript_is_a_model_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"is not a TorchScript file"):
        TorchBackend(str(path), Device("cpu"), threads=1)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA GPU")
def test_device_gpu_without_cuda_names_what_is_missing(torch_models):
    _, paths = torch_models
    with pytest.raises(DeviceError) as err:
        TorchBackend.resolve_device("gpu")
    assert str(err.value).startswith("--device gpu: ")
    assert str(err.value).endswith("; use --device cpu or auto")
    if torch.version.cuda is None:
        assert "is a CPU-only build" in str(err.value)


@pytest.mark.skipif(
    bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()), reason="MPS is available"
)
def test_device_mps_without_mps_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"^--device mps: MPS is not available"):
        TorchBackend.resolve_device("mps")


def test_device_tpu_is_not_a_torch_device():
    with pytest.raises(DeviceError, match=r"^--device tpu: the torch backend cannot run on a TPU"):
        TorchBackend.resolve_device("tpu")


def test_device_auto_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(TorchBackend, "gpu_problem", classmethod(lambda cls: "none here"))
    assert TorchBackend.resolve_device("auto").kind == "cpu"


# -- GPU (skipped without one) ---------------------------------------------------
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of PyTorch")
@pytest.mark.parametrize("kind", ["script", "export"])
def test_cuda_predictions_equal_eager(torch_models, image_shards, kind):
    net, paths = torch_models
    folder, table = image_shards
    batchscore.score(folder, paths[kind], "out.parquet", device="gpu", keep="id", batch_size=5, quiet=True)
    got = np.asarray(pq.read_table("out.parquet").column("output").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(got, eager(net, images_of(table)), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of PyTorch")
def test_cuda_out_of_memory_halves_the_chunk_without_losing_rows(torch_models, monkeypatch):
    net, paths = torch_models
    backend = TorchBackend(paths["script"], Device("cuda", 0), threads=1, options={"chunk_rows": 8})
    calls = {"n": 0}
    real = backend._call

    def flaky(args):
        calls["n"] += 1
        if args[0].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("fake OOM")
        return real(args)

    monkeypatch.setattr(backend, "_call", flaky)
    x = np.random.default_rng(0).normal(size=(11, *IMAGE)).astype(np.float32)
    got = backend.predict({"image": x})["output"]
    np.testing.assert_allclose(got, eager(net, x), rtol=1e-4, atol=1e-4)
    assert backend._cuda.oom_rows == 2


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of PyTorch")
def test_cuda_gpu_all_replicas_equal_eager(torch_models, image_shards):
    net, paths = torch_models
    folder, table = image_shards
    summary = batchscore.score(folder, paths["script"], "out.parquet", device="gpu:all", keep="id",
                               batch_size=3, quiet=True)
    assert summary.replicas == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    got = np.asarray(pq.read_table("out.parquet").column("output").combine_chunks().flatten()).reshape(-1, 4)
    assert pq.read_table("out.parquet").column("id").to_pylist() == table.column("id").to_pylist()
    np.testing.assert_allclose(got, eager(net, images_of(table)), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of PyTorch")
def test_cuda_batch_size_auto_probes_the_gpu(torch_models, image_shards):
    net, paths = torch_models
    folder, table = image_shards
    summary = batchscore.score(folder, paths["script"], "out.parquet", device="gpu", keep="id",
                               batch_size="auto", quiet=True)
    assert summary.batch_size_source.startswith("auto:") and summary.batch_size >= 1
    got = np.asarray(pq.read_table("out.parquet").column("output").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(got, eager(net, images_of(table)), rtol=1e-4, atol=1e-4)
