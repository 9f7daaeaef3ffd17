"""Shared fixtures. Every test runs in its own empty working directory, with
no ``BATCHSCORE_*`` variable set, so a stray ``batchscore.toml`` or environment
cannot leak in; builders and readers live in ``tests/helpers.py``."""

from __future__ import annotations

import logging
import os

import pytest

from tests.helpers import Cli, Data, Models


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """An empty cwd, no BATCHSCORE_* variables, and batchscore's log handlers reset."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in list(os.environ):
        if name.startswith("BATCHSCORE_"):
            monkeypatch.delenv(name)
    yield
    logger = logging.getLogger("batchscore")
    logger.handlers[:] = []
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def models(tmp_path) -> Models:
    """Builds ONNX models under tmp_path/models."""
    return Models(tmp_path / "models")


@pytest.fixture
def model(models) -> str:
    """The default model: 3 float features → ``score`` float [N,1]."""
    return models.linear()


@pytest.fixture
def data(tmp_path) -> Data:
    """Writes data sets under tmp_path/data."""
    return Data(tmp_path / "data")


@pytest.fixture
def cli() -> Cli:
    """``batchscore`` in-process (typer's CliRunner), stdout and stderr apart."""
    return Cli()


@pytest.fixture
def scored(data, model):
    """A standard run's inputs: 3 Parquet shards (5, 0 and 8 rows) and the default model."""
    folder, table = data.shards("shards", [5, 0, 8])
    return folder, table, model


@pytest.fixture
def fake_hardware(monkeypatch):
    """Pretend about GPUs and onnxruntime's providers: ``fake_hardware(gpus=..., cuda=True)``."""
    import onnxruntime as ort

    from batchscore import devices

    def set_(gpus=(), cuda=False):
        monkeypatch.setattr(devices, "nvidia_gpus", lambda: tuple(gpus))
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        monkeypatch.setattr(ort, "get_available_providers", lambda: providers)

    return set_
