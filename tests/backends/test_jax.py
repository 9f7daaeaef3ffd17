"""The jax backend: a serialized jax.export artifact gives jax.jit's predictions,
and its platforms are checked against --device."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.backends import Device, pick_backend
from batchscore.errors import DeviceError
from tests.backends.conftest import IMAGE, images_of

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax import export  # noqa: E402

from batchscore.backends.jax import JaxBackend  # noqa: E402

HAS_TPU = bool([d for d in jax.devices() if d.platform == "tpu"])


def conv_net(seed: int = 0):
    """A conv → relu → mean → dense function with its weights closed over."""
    rng = np.random.default_rng(seed)
    k = jnp.asarray(rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.3)
    w = jnp.asarray(rng.normal(size=(8, 4)).astype(np.float32))

    def f(image):
        y = jax.lax.conv_general_dilated(image, k, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return jax.nn.relu(y).mean(axis=(2, 3)) @ w

    return f


def save(path, fn, *specs, platforms=("cpu", "cuda", "tpu"), **kw_specs) -> str:
    exp = export.export(jax.jit(fn), platforms=list(platforms))(*specs, **kw_specs)
    with open(path, "wb") as fh:
        fh.write(exp.serialize())
    return str(path)


def batch_of(shape):
    b, = export.symbolic_shape("b")
    return jax.ShapeDtypeStruct((b, *shape), jnp.float32)


def test_predictions_equal_jax_jit_through_score(tmp_path, image_shards):
    folder, table = image_shards
    f = conv_net()
    model = save(tmp_path / "net.jax", lambda *, image: {"logits": f(image)}, image=batch_of(IMAGE))
    assert pick_backend(model) is JaxBackend
    batchscore.score(folder, model, "out.parquet", keep="id", batch_size=5, device="cpu", quiet=True)

    out = pq.read_table("out.parquet")
    assert out.column_names == ["id", "logits"]
    assert out.schema.field("logits").type == pa.list_(pa.float32(), 4)
    got = np.asarray(out.column("logits").combine_chunks().flatten()).reshape(-1, 4)
    want = np.asarray(jax.jit(f)(images_of(table)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_input_and_output_names_follow_the_exported_signature(tmp_path):
    f = conv_net()
    one = save(tmp_path / "one.jax", f, batch_of(IMAGE))
    backend = JaxBackend(one, Device("cpu"), threads=1)
    assert [s.describe() for s in backend.inputs] == ["input float32[N,3,8,8]"]
    assert [s.describe() for s in backend.outputs] == ["output float32[N,4]"]
    pair = batch_of((2,))
    two = save(tmp_path / "two.jax", lambda a, b: (a + b, a * b), pair, pair)
    backend = JaxBackend(two, Device("cpu"), threads=1)
    assert [s.name for s in backend.inputs] == ["input_0", "input_1"]
    assert [s.name for s in backend.outputs] == ["output_0", "output_1"]
    a, b = np.ones((3, 2), np.float32), np.full((3, 2), 2, np.float32)
    out = backend.predict({"input_0": a, "input_1": b})
    np.testing.assert_array_equal(out["output_1"], a * b)


def test_a_fixed_batch_artifact_gets_padded_batches(tmp_path, image_shards):
    folder, table = image_shards
    f = conv_net()
    model = save(tmp_path / "fixed.jax", lambda *, image: f(image), image=jax.ShapeDtypeStruct((4, *IMAGE), jnp.float32))
    batchscore.score(folder, model, "out.parquet", keep="id", quiet=True)
    got = np.asarray(pq.read_table("out.parquet").column("output").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(got, np.asarray(jax.jit(f)(images_of(table))), rtol=1e-5, atol=1e-5)


def test_an_artifact_without_the_devices_platform_is_refused(tmp_path, image_shards, cli):
    folder, _ = image_shards
    model = save(tmp_path / "tpu_only.jax", conv_net(), batch_of(IMAGE), platforms=("tpu",))
    assert cli.fails(folder, "--model", model, "--device", "cpu", "--features", "image", "--output", "o", code=2) == (
        f"--device cpu: model {model} was exported for tpu only, not cpu; export it again with platforms "
        "including 'cpu' (see docs/backends.md) or use --device tpu"
    )


@pytest.mark.skipif(HAS_TPU, reason="this machine has a TPU")
def test_device_tpu_without_a_tpu_names_what_is_missing(tmp_path, image_shards, cli):
    folder, _ = image_shards
    model = save(tmp_path / "net.jax", conv_net(), batch_of(IMAGE))
    assert cli.fails(folder, "--model", model, "--device", "tpu", "--output", "o", code=2) == (
        "--device tpu: no TPU found: JAX sees none (jax.devices('tpu') fails); TPUs need a Cloud TPU VM and "
        "pip install -U 'jax[tpu]'; use --device cpu or auto"
    )


def test_device_gpu_without_cuda_jax_is_a_clear_error():
    if [d for d in jax.devices() if d.platform == "gpu"]:
        pytest.skip("JAX has a GPU here")
    with pytest.raises(DeviceError, match=r"JAX has no CUDA support here .*pip install -U 'jax\[cuda12\]'; use --device cpu or auto$"):
        JaxBackend.resolve_device("gpu")


def test_precision_is_refused(tmp_path):
    from batchscore.errors import UsageError

    model = save(tmp_path / "net.jax", conv_net(), batch_of(IMAGE))
    with pytest.raises(UsageError, match=r"^--precision bf16: the jax backend runs the artifact in the precision"):
        JaxBackend(model, Device("cpu"), threads=1, options={"precision": "bf16"})


def test_a_file_that_is_not_an_artifact_is_a_model_error(tmp_path):
    from batchscore.errors import ModelError

    path = tmp_path / "junk.jax"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match=r"is not a serialized jax.export artifact"):
        JaxBackend(str(path), Device("cpu"), threads=1)


@pytest.mark.skipif(not HAS_TPU, reason="needs a TPU")
def test_tpu_predictions_equal_jax_jit(tmp_path, image_shards):
    folder, table = image_shards
    f = conv_net()
    model = save(tmp_path / "net.jax", f, batch_of(IMAGE))
    batchscore.score(folder, model, "out.parquet", keep="id", device="tpu", features="image", quiet=True)
    got = np.asarray(pq.read_table("out.parquet").column("output").combine_chunks().flatten()).reshape(-1, 4)
    np.testing.assert_allclose(got, np.asarray(jax.jit(f)(images_of(table))), rtol=1e-2, atol=1e-2)
