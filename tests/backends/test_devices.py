"""`batchscore devices`: what this machine has and which backends can use it."""

from __future__ import annotations

import json

from batchscore.devices import Gpu, cpu_count, survey




def test_devices_lists_this_machines_cpu_and_backends(cli):
    res = cli("devices")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"cpu: {cpu_count()} cores usable")
    assert "backends:" in lines
    assert any(line.startswith("  onnx: cpu") for line in lines)


def test_devices_json_matches_the_survey(cli):
    res = cli("devices", "--json")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["cpu"]["cores"] == cpu_count()
    assert set(info["backends"]) >= {"onnx", "torch", "jax", "sklearn"}
    assert info["backends"]["onnx"]["usable"][0] == "cpu"


def test_a_gpu_without_the_cuda_provider_is_warned_about(cli, fake_hardware):
    fake_hardware(gpus=[Gpu(0, "NVIDIA H100 80GB HBM3", 81559)], cuda=False)
    res = cli("devices")
    assert res.exit_code == 0, res.stderr
    assert "gpu:0: NVIDIA H100 80GB HBM3, 80 GiB" in res.stdout.splitlines()
    assert res.stdout.splitlines()[-1] == (
        "warning: a GPU is present but onnxruntime has no CUDA provider: the CPU build shadows onnxruntime-gpu; "
        "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu"
    )


def test_with_the_cuda_provider_onnx_can_use_the_gpu(fake_hardware):
    fake_hardware(gpus=[Gpu(0, "NVIDIA L4", 23034)], cuda=True)
    info = survey()
    assert info["backends"]["onnx"]["usable"] == ["cpu", "cuda"]
    assert info["warnings"] == []
    assert info["gpus"] == [{"index": 0, "name": "NVIDIA L4", "memory_mib": 23034}]


def test_a_backend_whose_framework_is_missing_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert survey()["backends"]["torch"]["install"] == "pip install 'batchscore[torch]'"


def test_no_gpu_names_the_reason_per_backend(fake_hardware):
    fake_hardware(gpus=(), cuda=False)
    onnx = survey()["backends"]["onnx"]
    assert onnx["problems"]["cuda"].startswith("no NVIDIA GPU found (nvidia-smi is missing or lists none)")


def test_device_tpu_for_onnx_is_refused(cli, data, model):
    src = data.write("a.parquet", data.table(3))
    assert cli.fails(src, "--model", model, "--device", "tpu", "--output", "o.parquet", code=2) == (
        "--device tpu: the onnx backend cannot run on a TPU; use --device cpu or auto"
    )
