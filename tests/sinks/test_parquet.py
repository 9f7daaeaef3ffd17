"""The Parquet sink: directory layout, _SUCCESS and the manifest, no leftover
temporary files, single-file output, --if-exists/--overwrite, and the
metadata each file carries."""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

import batchscore
from batchscore.errors import OutputExistsError
from tests.helpers import all_files, assert_predictions, output_files, read_output, reference


def _sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_directory_output_layout_and_markers(scored):
    folder, table, model = scored
    batchscore.score(folder, model, "out", quiet=True, run_id="r1")
    assert all_files("out") == [
        "_SUCCESS", "_batchscore_manifest.json", "part-000.parquet", "part-001.parquet", "part-002.parquet",
    ]
    assert os.path.getsize("out/_SUCCESS") == 0
    manifest = json.load(open("out/_batchscore_manifest.json"))
    assert manifest["batchscore_manifest"] == 1
    assert manifest["run_id"] == "r1"
    assert manifest["complete"] is True
    assert manifest["finished_at"] >= manifest["started_at"]
    assert {k: (v["source"], v["rows"]) for k, v in manifest["shards"].items()} == {
        "part-000.parquet": (f"{folder}/part-000.parquet", 5),
        "part-001.parquet": (f"{folder}/part-001.parquet", 0),
        "part-002.parquet": (f"{folder}/part-002.parquet", 8),
    }
    assert manifest["metadata"]["run_id"] == "r1"


def test_no_hidden_temporary_files_are_left(data, model, tmp_path):
    folder, _ = data.shards("in", [3, 0, 4])
    data.write("in/sub/x.parquet", data.table(2, 100))
    batchscore.score(folder, model, tmp_path / "out", batch_size=2, quiet=True)
    batchscore.score(folder, model, tmp_path / "single" / "all.parquet", quiet=True)
    assert [f for f in all_files(tmp_path / "out") if os.path.basename(f).startswith(".")] == []
    assert all_files(tmp_path / "single") == ["all.parquet"]


def test_single_parquet_file_output(scored, tmp_path):
    folder, table, model = scored
    summary = batchscore.score(folder, model, tmp_path / "res" / "scores.parquet", quiet=True)
    assert summary.output == str(tmp_path / "res" / "scores.parquet")
    assert all_files(tmp_path / "res") == ["scores.parquet"]
    out = pq.read_table(tmp_path / "res" / "scores.parquet")
    assert out.column("id").to_pylist() == list(range(13))
    assert_predictions(out, table, reference(model, table))


def test_an_existing_directory_named_like_a_file_is_a_directory_output(scored):
    folder, table, model = scored
    os.mkdir("odd.parquet")
    batchscore.score(folder, model, "odd.parquet", quiet=True)
    assert output_files("odd.parquet") == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]


def test_an_empty_existing_directory_is_used(scored):
    folder, _, model = scored
    os.mkdir("out")
    batchscore.score(folder, model, "out", quiet=True)
    assert os.path.exists("out/_SUCCESS")


def test_default_output_for_a_directory(cli, scored, tmp_path):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--quiet")
    assert sorted(os.listdir(".")) == ["shards-scored"]
    assert output_files("shards-scored") == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]


def test_default_output_for_a_file(cli, data, model):
    path = data.write("sub/day.2026.parquet", data.table(3))
    cli.run(path, "--model", model, "--quiet")
    assert sorted(os.listdir(".")) == ["day-scored"]
    assert output_files("day-scored") == ["day.2026.parquet"]


def test_default_output_for_a_glob(cli, scored):
    folder, _, model = scored
    cli.run(f"{folder}/*.parquet", "--model", model, "--quiet")
    assert sorted(os.listdir(".")) == ["shards-scored"]


def test_default_output_for_the_cwd(cli, data, model, monkeypatch):
    data.shards("here", [2, 2])
    monkeypatch.chdir(data.root / "here")
    cli.run(".", "--model", model, "--quiet")
    assert sorted(os.listdir(".")) == ["here-scored", "part-000.parquet", "part-001.parquet"]
    assert output_files("here-scored") == ["part-000.parquet", "part-001.parquet"]


# -- --if-exists ----------------------------------------------------------------------------------
EXISTS = (
    "output {} already exists: pass --overwrite to replace it, or --resume to finish an interrupted run "
    "(--if-exists fail|replace|append|resume)"
)


@pytest.mark.parametrize("output", ["out", "out.parquet"])
def test_existing_output_fails_by_default(cli, scored, output):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--output", output, "--quiet")
    before = _sha256(output) if os.path.isfile(output) else all_files(output)
    assert cli.fails(folder, "--model", model, "--output", output, code=2) == EXISTS.format(output)
    assert cli.fails(folder, "--model", model, "--output", output, "--if-exists", "fail", code=2) == EXISTS.format(output)
    after = _sha256(output) if os.path.isfile(output) else all_files(output)
    assert before == after


def test_overwrite_replaces_a_batchscore_directory(cli, scored, data):
    folder, table, model = scored
    cli.run(folder, "--model", model, "--output", "out", "--quiet", "--run-id", "first")
    open("out/stale.parquet", "w").close()
    cli.run(folder, "--model", model, "--output", "out", "--quiet", "--overwrite", "--keep", "id", "--run-id", "second")
    assert "stale.parquet" not in os.listdir("out")
    assert json.load(open("out/_batchscore_manifest.json"))["run_id"] == "second"
    out = read_output("out")
    assert out.column_names == ["id", "score"]
    assert_predictions(out, table, reference(model, table))


def test_if_exists_replace_is_overwrite(scored):
    folder, _, model = scored
    batchscore.score(folder, model, "out", quiet=True)
    batchscore.score(folder, model, "out", if_exists="replace", quiet=True)
    assert os.path.exists("out/_SUCCESS")


def test_overwrite_replaces_a_single_file(cli, scored):
    folder, table, model = scored
    cli.run(folder, "--model", model, "--output", "all.parquet", "--quiet", "--keep", "none")
    cli.run(folder, "--model", model, "--output", "all.parquet", "--quiet", "--overwrite")
    assert_predictions(pq.read_table("all.parquet"), table, reference(model, table))


def test_overwrite_refuses_a_directory_batchscore_did_not_make(cli, scored):
    folder, _, model = scored
    os.mkdir("precious")
    open("precious/thesis.tex", "w").write("years of work")
    assert cli.fails(folder, "--model", model, "--output", "precious", "--overwrite", code=2) == (
        "refusing to replace precious: batchscore did not create it (no _batchscore_manifest.json); "
        "remove it yourself or choose another --output"
    )
    assert os.listdir("precious") == ["thesis.tex"]


def test_output_that_is_a_file_without_parquet_extension(cli, scored):
    folder, _, model = scored
    open("results", "w").close()
    assert cli.fails(folder, "--model", model, "--output", "results", code=2) == (
        "output results exists and is not a directory: remove it, or name a .parquet file"
    )


def test_resume_on_a_single_file(scored):
    folder, _, model = scored
    batchscore.score(folder, model, "all.parquet", quiet=True)
    with pytest.raises(batchscore.BatchscoreError) as info:
        batchscore.score(folder, model, "all.parquet", if_exists="resume", quiet=True)
    assert str(info.value) == (
        "--if-exists resume needs a directory output; all.parquet is a single file (written all-or-nothing): "
        "use --overwrite"
    )


def test_existing_output_error_class(scored):
    folder, _, model = scored
    batchscore.score(folder, model, "out", quiet=True)
    with pytest.raises(OutputExistsError):
        batchscore.score(folder, model, "out", quiet=True)


# -- metadata ---------------------------------------------------------------------------------
def test_each_file_records_the_run(cli, scored):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--output", "out", "--quiet", "--run-id", "nightly-7", "--where", "id > 2")
    for name in output_files("out"):
        meta = json.loads(pq.read_schema(f"out/{name}").metadata[b"batchscore"])
        assert meta["run_id"] == "nightly-7"
        assert meta["model_sha256"] == _sha256(model)
        assert meta["batchscore_version"] == batchscore.__version__
        assert meta["model"] == os.path.abspath(model)
        assert meta["backend"] == "onnx"
        assert meta["features"] == {"features": ["f0", "f1", "f2"]}
        assert meta["where"] == "id > 2"
        assert len(meta["job_key"]) == 64


def test_single_file_records_the_run(scored):
    folder, _, model = scored
    summary = batchscore.score(folder, model, "all.parquet", quiet=True)
    meta = json.loads(pq.read_schema("all.parquet").metadata[b"batchscore"])
    assert meta["run_id"] == summary.run_id
    assert meta["model_sha256"] == summary.model_sha256 == _sha256(model)


def test_generated_run_ids_differ(scored):
    folder, _, model = scored
    a = batchscore.score(folder, model, "a", quiet=True)
    b = batchscore.score(folder, model, "b", quiet=True)
    assert a.run_id and b.run_id and a.run_id != b.run_id
