"""--device: what a CPU-only machine says to gpu, and how devices resolve."""

from __future__ import annotations

import os

import onnxruntime as ort
import pytest

from batchscore import devices
from batchscore.backends.onnx import OnnxBackend
from batchscore.devices import Gpu, cpu_count, resolve_device
from batchscore.errors import DeviceError

NO_CUDA = (
    "onnxruntime has no CUDA support (CUDAExecutionProvider missing: "
    "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu)"
)
NO_GPU = "no NVIDIA GPU found (nvidia-smi is missing or lists none)"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()




@pytest.mark.skipif(HAS_CUDA, reason="this machine's onnxruntime has CUDA")
def test_device_gpu_on_this_machine_exits_2_naming_what_is_missing(cli, scored):
    folder, _, model = scored
    missing = NO_CUDA if devices.nvidia_gpus() else f"{NO_GPU} and {NO_CUDA}"
    assert cli.fails(folder, "--model", model, "--device", "gpu", "--output", "out", code=2) == (
        f"--device gpu: {missing}; use --device cpu or auto"
    )
    assert cli.fails(folder, "--model", model, "--device", "gpu:1", code=2) == (
        f"--device gpu:1: {missing}; use --device cpu or auto"
    )
    assert not os.path.exists("out")


def test_no_gpu_and_no_cuda_build(cli, scored, fake_hardware):
    folder, _, model = scored
    fake_hardware()
    assert cli.fails(folder, "--model", model, "--device", "cuda:0", code=2) == (
        f"--device cuda:0: {NO_GPU} and {NO_CUDA}; use --device cpu or auto"
    )


def test_a_gpu_but_no_cuda_build(cli, scored, fake_hardware):
    folder, _, model = scored
    fake_hardware(gpus=[Gpu(0, "Fake GPU")])
    assert cli.fails(folder, "--model", model, "--device", "gpu", code=2) == (
        f"--device gpu: {NO_CUDA}; use --device cpu or auto"
    )


def test_a_cuda_build_but_no_gpu(fake_hardware):
    fake_hardware(cuda=True)
    with pytest.raises(DeviceError) as info:
        resolve_device("gpu", OnnxBackend)
    assert str(info.value) == f"--device gpu: {NO_GPU}; use --device cpu or auto"


def test_a_gpu_index_that_is_not_there(fake_hardware):
    fake_hardware(gpus=[Gpu(0, "Fake GPU")], cuda=True)
    with pytest.raises(DeviceError) as info:
        resolve_device("gpu:3", OnnxBackend)
    assert str(info.value) == "--device gpu:3: there is no GPU 3; this machine has 1 (GPU 0..0)"
    device = resolve_device("gpu", OnnxBackend)
    assert (device.kind, device.index, str(device)) == ("cuda", 0, "cuda:0")
    assert resolve_device("auto", OnnxBackend).kind == "cuda"


def test_tpu_is_refused_for_onnx(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--device", "tpu", code=2) == (
        "--device tpu: the onnx backend cannot run on a TPU; use --device cpu or auto"
    )


def test_auto_and_cpu_pick_the_cpu_here(cli, scored, fake_hardware):
    folder, _, model = scored
    fake_hardware()
    res = cli.run(folder, "--model", model, "--output", "a")
    assert f"batchscore: device: cpu ({cpu_count()} CPU cores (picked by --device auto))" in res.stderr.splitlines()
    res = cli.run(folder, "--model", model, "--output", "b", "--device", "cpu")
    lines = res.stderr.splitlines()
    assert not any("picked by --device auto" in line for line in lines)
    assert f"batchscore: device: cpu (onnx, {cpu_count()} threads)" in lines


def test_cpu_count_is_at_least_one():
    assert cpu_count() >= 1
