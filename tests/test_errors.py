"""Every user-facing error: its exact one-line message and exit code through
the CLI, no traceback, and nothing published in the output."""

from __future__ import annotations

import os
import shutil

import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchscore import errors
from batchscore.errors import BatchscoreError, ExitStatus, MissingDependencyError
from tests.helpers import Data


def test_exit_codes_are_documented_values():
    assert {s.name: int(s) for s in ExitStatus} == {
        "SUCCESS": 0, "RETRYABLE": 1, "USAGE": 2, "PARTIAL": 3, "LOCKED": 4, "INTERNAL": 70, "INTERRUPTED": 130,
    }
    assert 99 not in set(ExitStatus)  # Airflow reads 99 as "skip"


@pytest.mark.parametrize(
    "cls, code",
    [
        (errors.UsageError, 2), (errors.ConfigError, 2), (errors.NoInputError, 2), (errors.InputError, 2),
        (errors.SchemaError, 2), (errors.ModelError, 2), (errors.DeviceError, 2),
        (errors.OutputExistsError, 2), (errors.OutputError, 1), (errors.DataError, 2),
        (errors.LockedError, 4), (errors.Interrupted, 130), (MissingDependencyError, 2),
    ],
)
def test_each_error_class_has_its_exit_status(cls, code):
    assert issubclass(cls, BatchscoreError)
    assert cls("x").exit_status == code
    assert cls.__doc__


def test_messages_are_one_line():
    assert str(errors.InputError("bad\nfile\nhere")) == "bad file here"


def test_missing_dependency_names_the_extra():
    err = MissingDependencyError.for_extra("torch", "torch")
    assert str(err) == "torch is not installed: pip install 'batchscore[torch]'"


# -- inputs -----------------------------------------------------------------------------
def test_nonexistent_input(cli, model):
    assert cli.fails("missing.parquet", "--model", model, code=2) == "input missing.parquet does not exist: check the path"


def test_no_input_matches(cli, model, data):
    data.write("a.parquet", data.table(2))
    pattern = f"{data.root}/*.csv"
    assert cli.fails(pattern, "--model", model, code=2) == (
        f"no input matches {pattern}: check the paths (or pass --allow-empty for a nightly glob that may match nothing)"
    )


def test_directory_without_data_files(cli, model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    assert cli.fails(str(tmp_path / "empty"), "--model", model, code=2) == (
        f"no input matches {tmp_path / 'empty'}: check the paths "
        "(or pass --allow-empty for a nightly glob that may match nothing)"
    )


def test_unknown_extension(cli, model, tmp_path):
    (tmp_path / "rows.dat").write_text("a,b\n1,2\n")
    assert cli.fails(str(tmp_path / "rows.dat"), "--model", model, code=2) == (
        f"cannot tell the format of {tmp_path / 'rows.dat'} from its extension: "
        "pass --input-format parquet|csv|ndjson|ipc"
    )


def _read_error(path: str) -> str:
    """pyarrow's own words for a broken Parquet file, as batchscore prints them."""
    with pytest.raises(Exception) as info:
        pq.read_metadata(path)
    return " ".join(str(info.value).split())


def test_truncated_parquet_names_the_file(cli, model, data):
    folder, _ = data.shards("in", [4, 4])
    bad = os.path.join(folder, "part-001.parquet")
    raw = open(bad, "rb").read()
    open(bad, "wb").write(raw[: len(raw) // 2])
    assert cli.fails(folder, "--model", model, "--output", "out", code=2) == (
        f"cannot read {bad} as parquet: {_read_error(bad)} "
        "(the file is corrupt, truncated or not of that format; fix or remove it, or set --input-format)"
    )
    assert not os.path.exists("out")


def test_not_parquet_at_all(cli, model, data):
    bad = data.path("junk.parquet")
    bad.write_bytes(b"this is not parquet")
    assert cli.fails(str(bad), "--model", model, code=2) == (
        f"cannot read {bad} as parquet: {_read_error(str(bad))} "
        "(the file is corrupt, truncated or not of that format; fix or remove it, or set --input-format)"
    )


def test_corrupt_data_pages_name_the_file_and_publish_nothing(cli, model, data):
    # The footer is intact, so the error only shows while reading rows.
    folder, _ = data.shards("in", [3])
    bad = data.write("in/part-001.parquet", data.table(2000, 3), compression="snappy", row_group_size=2000)
    raw = bytearray(open(bad, "rb").read())
    footer = int.from_bytes(raw[-8:-4], "little")
    for i in range(8, len(raw) - footer - 8):
        raw[i] = 0xFF
    open(bad, "wb").write(bytes(raw))
    msg = cli.fails(folder, "--model", model, "--output", "out", code=2)
    assert msg.startswith(f"cannot read {bad} as parquet: ")
    assert msg.endswith(
        "(the file is corrupt, truncated or not of that format; fix or remove it, or set --input-format)"
    )
    assert not os.path.exists("out/_SUCCESS")
    assert not os.path.exists("out/part-001.parquet")
    assert [f for f in os.listdir("out") if f.startswith(".")] == []


def test_shards_disagree_on_a_column_type(cli, model, data):
    a = data.table(3, 0).append_column("v", pa.array(["a", "b", "c"]))
    b = data.table(3, 3).append_column("v", pa.array([1.0, 2.0, 3.0]))
    pa_ = data.write("in/a.parquet", a)
    pb = data.write("in/b.parquet", b)
    assert cli.fails(str(data.root / "in"), "--model", model, code=2) == (
        f"shards disagree on column 'v': {pa_} has string, {pb} has double; "
        "make the files agree or score them in separate runs"
    )


def test_feature_missing_from_one_shard_names_the_shard(cli, model, data):
    data.write("in/a.parquet", data.table(3, 0))
    b = data.write("in/b.parquet", data.table(3, 3).drop_columns(["f2"]))
    assert cli.fails(str(data.root / "in"), "--model", model, "--features", "f0,f1,f2", code=2) == (
        f"shard {b} lacks column(s) f2 that other shards have (schema drift): fix the file, or leave it out"
    )


def test_every_input_empty_without_columns(cli, model, data):
    data.path("in/a.csv").write_bytes(b"")
    data.path("in/b.csv").write_bytes(b"")
    assert cli.fails(str(data.root / "in"), "--model", model, code=2) == (
        "every input is empty and has no columns (2 file(s)); nothing to score"
    )


def test_two_inputs_with_one_output_name(cli, model, data):
    a = data.write("a/x.parquet", data.table(2, 0))
    b = data.write("b/x.csv", data.table(2, 2), "csv")
    assert cli.fails(a, b, "--model", model, "--output", "out", code=2) == (
        f"inputs {a} and {b} would both be written to x.parquet: "
        "pass their common parent directory instead, or write to a single .parquet file"
    )


def test_inputs_with_one_name_can_go_to_a_single_file(cli, model, data):
    a = data.write("a/x.parquet", data.table(2, 0))
    b = data.write("b/x.parquet", data.table(2, 2))
    cli.run(a, b, "--model", model, "--output", "all.parquet", "--quiet")
    assert pq.read_table("all.parquet").column("id").to_pylist() == [0, 1, 2, 3]


# -- features and schema -------------------------------------------------------------------
def test_missing_feature_columns_are_named_with_what_exists(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--features", "f0,amount,f2,age*", code=2) == (
        "--features: no column matches amount, age*; available columns: id, name, ts, count, f0, f1, f2"
    )


def test_missing_keep_columns(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--keep", "id,customer", code=2) == (
        "--keep: no column matches customer; available columns: id, name, ts, count, f0, f1, f2"
    )


def test_non_numeric_feature_column(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--features", "f0,name,f2", "--output", "out", code=2) == (
        "column 'name' is string but model input 'features' needs float32: choose other columns with --features"
    )
    assert not os.path.exists("out")


def test_default_mapping_that_cannot_be_decided(cli, models, data):
    model = models.linear(5)  # the data has 3 float columns
    path = data.write("a.parquet", data.table(3))
    assert cli.fails(path, "--model", model, code=2) == (
        "cannot tell which columns feed the model inputs (features float32[N,5]); available columns: "
        "id (int64), name (string), ts (timestamp[us]), count (int32), f0 (double), f1 (double), f2 (double); "
        "pass --features"
    )


def test_model_input_shape_that_does_not_fit_the_features(cli, models, data):
    model = models.linear(5)
    path = data.write("a.parquet", data.table(3))
    assert cli.fails(path, "--model", model, "--features", "f*", code=2) == (
        "model input features float32[N,5] takes 5 features per row but 3 columns were chosen (f0, f1, f2): "
        "fix --features"
    )


def test_null_feature_values(cli, model, data):
    t = data.table(4)
    t = t.set_column(t.schema.get_field_index("f1"), "f1", pa.array([1.0, None, 2.0, None]))
    path = data.write("a.parquet", t)
    assert cli.fails(path, "--model", model, "--output", "out", code=2) == (
        f"{path}: null in column 'f1' at row 1 (2 bad row(s) in this part of the file): "
        "fix the data, or pass --on-error skip|quarantine"
    )
    assert not os.path.exists("out/_SUCCESS")


def test_where_on_an_unknown_column(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--where", "amount > 3", code=2) == (
        "--where refers to column(s) amount that the input lacks; available: id, name, ts, count, f0, f1, f2"
    )


def test_where_that_is_not_sql(cli, scored):
    folder, _, model = scored
    msg = cli.fails(folder, "--model", model, "--where", "id >>> 3 (", code=2)
    assert msg.startswith("--where 'id >>> 3 (' is not a valid SQL predicate: ")


def test_prediction_column_colliding_with_a_kept_column(cli, models, data):
    model = models.linear(output="name")  # the data has a 'name' column
    path = data.write("a.parquet", data.table(3))
    assert cli.fails(path, "--model", model, code=2) == (
        "prediction column(s) name would overwrite kept input column(s) of the same name: "
        "pass --prediction-prefix (e.g. --prediction-prefix pred_) or leave them out with --keep"
    )


# -- the model -------------------------------------------------------------------------------
def test_model_missing(cli, scored, tmp_path):
    folder, _, _ = scored
    assert cli.fails(folder, "--model", str(tmp_path / "nope.onnx"), code=2) == (
        f"model {tmp_path / 'nope.onnx'} does not exist: fix --model"
    )


def test_model_flag_missing(cli, scored):
    folder, _, _ = scored
    assert cli.fails(folder, code=2) == 'no model: pass --model PATH or set model = "..." in batchscore.toml'


def test_model_is_a_directory(cli, scored, tmp_path):
    folder, _, _ = scored
    assert cli.fails(folder, "--model", str(tmp_path), code=2) == (
        f"model {tmp_path} is a directory, not a model file: fix --model"
    )


def test_model_that_is_not_onnx(cli, scored, tmp_path):
    folder, _, _ = scored
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf")
    with pytest.raises(Exception) as info:
        ort.InferenceSession(bad.read_bytes(), providers=["CPUExecutionProvider"])
    assert cli.fails(folder, "--model", str(bad), "--output", "out", code=2) == (
        f"model {bad} is not a valid ONNX model: {' '.join(str(info.value).split())}"
    )
    assert not os.path.exists("out")


def test_model_with_an_unknown_extension(cli, scored, model, tmp_path):
    folder, _, _ = scored
    other = tmp_path / "model.bin"
    shutil.copy(model, other)
    assert cli.fails(folder, "--model", str(other), code=2) == (
        f"cannot tell which runtime reads model {other} from its extension: pass --backend (jax, onnx, sklearn, torch)"
    )
    cli.run(folder, "--model", str(other), "--backend", "onnx", "--output", "out", "--quiet")


def test_unknown_backend(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--backend", "tensorflow", code=2) == (
        "--backend 'tensorflow' is unknown; available: jax, onnx, sklearn, torch"
    )


# -- flags, output and device ------------------------------------------------------------------
def test_batch_size_zero(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--batch-size", "0", code=2) == "--batch-size must be at least 1, got 0"


def test_batch_size_not_a_number(cli, scored):
    folder, _, model = scored
    res = cli("run", folder, "--model", model, "--batch-size", "lots")
    assert res.exit_code == 2
    assert res.stderr == "batchscore: error: --batch-size must be a number of rows or 'auto', got 'lots'\n"


def test_bad_if_exists(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--if-exists", "merge", code=2) == (
        "--if-exists 'merge' is not one of: fail, replace, append, resume"
    )


def test_output_under_a_regular_file(cli, scored):
    folder, _, model = scored
    open("somefile.txt", "w").close()
    assert cli.fails(folder, "--model", model, "--output", "somefile.txt/sub", code=2) == (
        "cannot write output somefile.txt/sub: Not a directory: choose another --output or fix its permissions"
    )


def test_single_file_output_under_a_regular_file(cli, scored):
    folder, _, model = scored
    open("somefile.txt", "w").close()
    assert cli.fails(folder, "--model", model, "--output", "somefile.txt/out.parquet", code=2) == (
        "cannot write output somefile.txt/out.parquet: Not a directory: "
        "choose another --output or fix its permissions"
    )


def test_output_in_proc_is_unwritable(cli, scored):
    folder, _, model = scored
    msg = cli.fails(folder, "--model", model, "--output", "/proc/batchscore-test-out", code=1)
    assert msg.startswith("cannot write output /proc/batchscore-test-out: ")
    assert msg.endswith(": choose another --output or fix its permissions")


def test_output_exists_without_overwrite(cli, scored):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--output", "out", "--quiet")
    assert cli.fails(folder, "--model", model, "--output", "out", code=2) == (
        "output out already exists: pass --overwrite to replace it, or --resume to finish an interrupted run "
        "(--if-exists fail|replace|append|resume)"
    )


def test_output_inside_the_input(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--output", folder, code=2) == (
        f"--output {folder} holds input files: choose an --output outside the inputs"
    )


def test_single_file_output_that_is_an_input(cli, data, model):
    path = data.write("a.parquet", data.table(3))
    assert cli.fails(path, "--model", model, "--output", path, code=2) == (
        f"--output {path} is also an input: choose another --output"
    )


def test_unknown_output_scheme(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--output", "s3://user:secret@bucket/x", code=2) == (
        "--output s3://...: unknown destination scheme 's3'; use a path (Parquet), "
        "sqlite:///FILE.db or postgresql://USER@HOST/DB"
    )


def test_report_is_written_when_the_run_fails(cli, scored):
    import json

    folder, _, model = scored
    cli.fails(folder, "--model", model, "--features", "nope", "--report", "r.json", code=2)
    report = json.load(open("r.json"))
    assert report["status"] == "failed"
    assert report["exit_code"] == 2
    assert report["error"] == (
        "--features: no column matches nope; available columns: id, name, ts, count, f0, f1, f2"
    )


def test_no_partial_files_after_a_failure_mid_run(cli, model, tmp_path):
    data = Data(tmp_path / "d")
    folder, _ = data.shards("in", [4, 4])
    t = data.table(4, 8)
    t = t.set_column(t.schema.get_field_index("f0"), "f0", pa.array([1.0, 2.0, None, 3.0]))
    data.write("in/part-002.parquet", t)
    cli.fails(folder, "--model", model, "--output", "out", "--batch-size", "2", code=2)
    hidden = [f for _, _, files in os.walk("out") for f in files if f.startswith(".")]
    assert hidden == []
    assert not os.path.exists("out/_SUCCESS")
