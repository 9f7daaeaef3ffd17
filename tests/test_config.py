"""The TOML config (./batchscore.toml, --config FILE, unknown keys are an error)
and precedence: flags > BATCHSCORE_<FLAG> environment variables > TOML > defaults."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from batchscore.errors import ConfigError, UsageError
from batchscore.job import FIELD_NAMES, Job, build_job
from tests.helpers import read_output

#: Every Job field but dry_run and config_path, in field order (new options add keys).
KNOWN_KEYS = ", ".join(n for n in FIELD_NAMES if n not in ("dry_run", "config_path"))


def test_known_keys_include_the_documented_ones():
    for key in ("inputs", "model", "output", "features", "keep", "device", "backend", "where", "batch_size",
                "prefetch", "threads", "report", "quiet", "log_format", "if_exists", "input_format",
                "prediction_prefix", "run_id", "allow_empty"):
        assert key in KNOWN_KEYS.split(", ")


def _report(path="r.json") -> dict:
    with open(path) as fh:
        return json.load(fh)


# -- end to end through the CLI ----------------------------------------------------
def test_batchscore_toml_in_the_cwd_is_read(cli, scored):
    folder, table, model = scored
    Path("batchscore.toml").write_text(f'model = "{model}"\noutput = "from-toml"\nkeep = ["id"]\n')
    cli.run(folder, "--quiet")
    out = read_output("from-toml")
    assert out.column_names == ["id", "score"]
    assert out.num_rows == 13


def test_config_flag_names_the_file_and_paths_are_relative_to_it(cli, scored, tmp_path):
    folder, _, model = scored
    conf = tmp_path / "conf"
    conf.mkdir()
    os.link(model, conf / "m.onnx")
    (conf / "job.toml").write_text(
        'model = "m.onnx"\noutput = "scored"\nreport = "r.json"\nbatch-size = 5\nquiet = true\n'
    )
    res = cli.run(folder, "--config", str(conf / "job.toml"))
    assert res.stderr == ""
    assert read_output(conf / "scored").num_rows == 13
    report = _report(conf / "r.json")
    assert report["model"] == str(conf / "m.onnx")
    assert report["batch_size"] == 5


def test_toml_inputs_are_used_when_no_input_is_given(cli, scored, tmp_path):
    folder, _, model = scored
    Path("batchscore.toml").write_text(f'inputs = ["{folder}"]\nmodel = "{model}"\noutput = "out"\n')
    cli.run("--quiet")
    assert read_output("out").num_rows == 13


def test_config_file_wins_over_batchscore_toml_in_the_cwd(cli, scored, tmp_path):
    folder, _, model = scored
    Path("batchscore.toml").write_text('model = "wrong.onnx"\n')
    (tmp_path / "other.toml").write_text(f'model = "{model}"\noutput = "{tmp_path / "out"}"\n')
    cli.run(folder, "--config", str(tmp_path / "other.toml"), "--quiet")
    assert read_output(tmp_path / "out").num_rows == 13


def test_unknown_toml_key_exits_2(cli, scored):
    folder, _, model = scored
    Path("batchscore.toml").write_text('colour = "blue"\n')
    assert cli.fails(folder, "--model", model, code=2) == (
        f"config file batchscore.toml: unknown key 'colour'; known keys: {KNOWN_KEYS}"
    )


def test_unknown_key_in_config_flag_file_exits_2(cli, scored, tmp_path):
    folder, _, model = scored
    (tmp_path / "c.toml").write_text("batchsize = 10\n")
    assert cli.fails(folder, "--model", model, "--config", str(tmp_path / "c.toml"), code=2) == (
        f"config file {tmp_path / 'c.toml'}: unknown key 'batchsize'; known keys: {KNOWN_KEYS}"
    )


@pytest.mark.parametrize("key", ["dry_run", "config_path"])
def test_keys_that_are_not_configurable_are_unknown(cli, scored, key):
    folder, _, model = scored
    Path("batchscore.toml").write_text(f"{key} = true\n")
    assert cli.fails(folder, "--model", model, code=2) == (
        f"config file batchscore.toml: unknown key '{key}'; known keys: {KNOWN_KEYS}"
    )


def test_missing_config_file_exits_2(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--config", "nope.toml", code=2) == (
        "config file nope.toml does not exist: fix --config"
    )


def test_invalid_toml_exits_2(cli, scored):
    folder, _, model = scored
    Path("batchscore.toml").write_text("model = \n")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with pytest.raises(tomllib.TOMLDecodeError) as info:
        tomllib.loads("model = \n")
    assert cli.fails(folder, "--model", model, code=2) == (
        f"config file batchscore.toml is not valid TOML: {info.value}"
    )


def test_invalid_toml_value_exits_2(cli, scored):
    folder, _, model = scored
    Path("batchscore.toml").write_text('batch_size = "many"\n')
    assert cli.fails(folder, "--model", model, code=2) == (
        "config file batchscore.toml: invalid value 'many' for 'batch_size'"
    )


def test_invalid_environment_value_exits_2(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, env={"BATCHSCORE_BATCH_SIZE": "many"}, code=2) == (
        "environment variable BATCHSCORE_BATCH_SIZE: invalid value 'many' for 'batch_size'"
    )


def test_precedence_flags_over_env_over_toml_over_defaults(cli, scored):
    folder, _, model = scored
    base = [folder, "--model", model, "--quiet", "--report", "r.json"]

    cli.run(*base, "--output", "a")
    assert (_report()["batch_size"], _report()["batch_size_source"]) == (16384, "onnx default")

    Path("batchscore.toml").write_text("batch_size = 3\n")
    cli.run(*base, "--output", "b")
    assert _report()["batch_size"] == 3

    env = {"BATCHSCORE_BATCH_SIZE": "5"}
    cli.run(*base, "--output", "c", env=env)
    assert _report()["batch_size"] == 5

    cli.run(*base, "--output", "d", "--batch-size", "7", env=env)
    assert _report()["batch_size"] == 7


def test_environment_names_follow_the_flags(cli, scored):
    folder, _, model = scored
    env = {
        "BATCHSCORE_MODEL": model,
        "BATCHSCORE_OUTPUT": "env-out",
        "BATCHSCORE_KEEP": "id,name",
        "BATCHSCORE_PREDICTION_PREFIX": "p_",
        "BATCHSCORE_QUIET": "1",
        "BATCHSCORE_RUN_ID": "from-env",
    }
    res = cli.run(folder, env=env)
    assert res.stderr == ""
    out = read_output("env-out")
    assert out.column_names == ["id", "name", "p_score"]
    assert json.loads(out.schema.metadata[b"batchscore"])["run_id"] == "from-env"


def test_overwrite_shorthand_in_toml_and_env(cli, scored):
    folder, _, model = scored
    cli.run(folder, "--model", model, "--output", "out", "--quiet")
    cli.fails(folder, "--model", model, "--output", "out", "--quiet", code=2)
    cli.run(folder, "--model", model, "--output", "out", "--quiet", env={"BATCHSCORE_OVERWRITE": "true"})
    Path("batchscore.toml").write_text("overwrite = true\n")
    cli.run(folder, "--model", model, "--output", "out", "--quiet")


def test_batchscore_config_variable_names_the_file(cli, scored, tmp_path):
    folder, _, model = scored
    (tmp_path / "c.toml").write_text(f'model = "{model}"\noutput = "{tmp_path / "o"}"\nquiet = true\n')
    cli.run(folder, env={"BATCHSCORE_CONFIG": str(tmp_path / "c.toml")})
    assert read_output(tmp_path / "o").num_rows == 13


# -- build_job: the merge itself -------------------------------------------------------
def _toml(tmp_path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "flag, env, toml, want",
    [
        (None, None, None, Job.prefetch),
        (None, None, "prefetch = 3", 3),
        (None, "5", "prefetch = 3", 5),
        (7, "5", "prefetch = 3", 7),
        (7, None, None, 7),
        (7, "5", None, 7),
        (None, "5", None, 5),
    ],
)
def test_build_job_precedence(tmp_path, flag, env, toml, want):
    config = _toml(tmp_path, toml) if toml else None
    envmap = {"BATCHSCORE_PREFETCH": env} if env else {}
    job = build_job({"inputs": ["x"], "model": "m.onnx", "prefetch": flag}, env=envmap, config=config)
    assert job.prefetch == want


def test_build_job_reads_batchscore_toml_from_cwd_argument(tmp_path):
    (tmp_path / "batchscore.toml").write_text('model = "m.onnx"\nfeatures = "a, b"\nkeep = "none"\n')
    job = build_job({"inputs": ["x"]}, cwd=tmp_path)
    assert job.model == str(tmp_path / "m.onnx")
    assert job.features == ["a", "b"]
    assert job.keep == []
    assert job.config_path == str(tmp_path / "batchscore.toml")


def test_build_job_without_a_config(tmp_path):
    job = build_job({"inputs": ["x"], "model": "m.onnx"}, cwd=tmp_path)
    assert job.config_path is None
    assert (job.device, job.if_exists, job.log_format, job.input_format) == ("auto", "fail", "text", "auto")


def test_job_is_serialisable(tmp_path):
    job = build_job({"inputs": ["x"], "model": "m.onnx", "features": "f*"}, cwd=tmp_path)
    assert Job(**json.loads(json.dumps(job.to_dict()))) == job


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
        ({"prefetch": 0}, "--prefetch must be at least 1, got 0"),
        ({"threads": 0}, "--threads must be at least 1, got 0"),
        ({"if_exists": "merge"}, "--if-exists 'merge' is not one of: fail, replace, append, resume"),
        ({"input_format": "xls"}, "--input-format 'xls' is not one of: auto, parquet, csv, ndjson, ipc"),
        ({"log_format": "xml"}, "--log-format 'xml' is not one of: text, json"),
        ({"device": "quantum"},
         "--device 'quantum' is not a device: use auto, cpu, gpu, gpu:N, cuda:N, tpu or mps"),
        ({"features": []}, "--features is empty: give a comma list of columns, e.g. --features 'f*'"),
        ({"where": "  "}, "--where is empty: give an SQL predicate, e.g. --where \"ts >= '2026-12-03'\""),
        ({"model": None}, 'no model: pass --model PATH or set model = "..." in batchscore.toml'),
        ({"inputs": None}, "no input: pass one or more files, directories or globs"),
    ],
)
def test_invalid_values_are_usage_errors(tmp_path, flags, message):
    base = {"inputs": ["x"], "model": "m.onnx"}
    base.update(flags)
    with pytest.raises(UsageError) as info:
        build_job(base, cwd=tmp_path)
    assert str(info.value) == message
    assert info.value.exit_status == 2


def test_environment_booleans(tmp_path):
    for text, want in [("1", True), ("yes", True), ("on", True), ("0", False), ("off", False)]:
        job = build_job({"inputs": ["x"], "model": "m"}, env={"BATCHSCORE_QUIET": text}, cwd=tmp_path)
        assert job.quiet is want
    with pytest.raises(ConfigError) as info:
        build_job({"inputs": ["x"], "model": "m"}, env={"BATCHSCORE_QUIET": "maybe"}, cwd=tmp_path)
    assert str(info.value) == "environment variable BATCHSCORE_QUIET: invalid value 'maybe' for 'quiet'"
