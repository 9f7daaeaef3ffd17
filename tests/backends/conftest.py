"""Fixtures for the backend tests: small models built here (never downloaded)
and image-like Parquet data (a fixed-size-list column of 3×H×W float32)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

IMAGE = (3, 8, 8)


def image_table(n: int, start: int = 0, shape=IMAGE) -> pa.Table:
    """``id`` int64 and ``image`` fixed_size_list<float32>[prod(shape)]."""
    rng = np.random.default_rng(start)
    flat = rng.normal(size=(n, int(np.prod(shape)))).astype(np.float32)
    image = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), int(np.prod(shape)))
    return pa.table({"id": pa.array(np.arange(start, start + n, dtype=np.int64)), "image": image})


def images_of(table: pa.Table, shape=IMAGE) -> np.ndarray:
    return table.column("image").combine_chunks().flatten().to_numpy().reshape((-1, *shape))


@pytest.fixture
def image_shards(tmp_path):
    """Three Parquet shards (7, 0 and 12 rows) of images; returns (folder, all rows)."""
    folder = tmp_path / "images"
    folder.mkdir()
    tables, start = [], 0
    for i, n in enumerate([7, 0, 12]):
        t = image_table(n, start)
        pq.write_table(t, folder / f"part-{i:03d}.parquet")
        tables.append(t)
        start += n
    return str(folder), pa.concat_tables(tables)


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory):
    """A small conv net saved as scripted and traced TorchScript and as a torch.export
    program; returns (eager module, {kind: path})."""
    torch = pytest.importorskip("torch")
    from tests.backends.nets import ConvNet, DictNet

    root = Path(tmp_path_factory.mktemp("torch_models"))
    torch.manual_seed(0)
    net = ConvNet().eval()
    example = torch.randn(4, *IMAGE)
    meta = json.dumps({"inputs": [{"name": "image", "dtype": "float32", "shape": [None, *IMAGE]}]})
    paths = {}
    paths["script"] = str(root / "net_script.pt")
    torch.jit.save(torch.jit.script(net), paths["script"], _extra_files={"batchscore.json": meta})
    paths["trace"] = str(root / "net_trace.ts")
    torch.jit.save(torch.jit.trace(net, example), paths["trace"], _extra_files={"batchscore.json": meta})
    batch = torch.export.Dim("batch")
    ep = torch.export.export(net, (example,), dynamic_shapes={"image": {0: batch}})
    paths["export"] = str(root / "net.pt2")
    torch.export.save(ep, paths["export"])
    dict_net = DictNet(net).eval()
    ep = torch.export.export(dict_net, (example,), dynamic_shapes={"image": {0: batch}})
    paths["dict"] = str(root / "dict.pt2")
    torch.export.save(ep, paths["dict"])
    return net, paths
