"""The command line: help, version, output streams, log formats, the flags that
only the CLI has, and that start-up stays light."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import typer

import batchscore
from batchscore.cli import app
from tests.helpers import assert_predictions, read_output, reference


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help_in_a_subprocess(argv):
    proc = _python("-m", "batchscore", *argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "Usage: batchscore" in proc.stdout


@pytest.mark.skipif(shutil.which("batchscore") is None, reason="the console script is not on PATH")
def test_console_script_help():
    proc = subprocess.run(["batchscore", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: batchscore run [OPTIONS] [INPUT...]")


def test_run_help_lists_flags_and_exit_codes():
    proc = _python("-m", "batchscore", "run", "--help")
    text = " ".join(proc.stdout.split())
    for flag in ("--model", "--output", "--features", "--keep", "--where", "--batch-size", "--if-exists",
                 "--overwrite", "--resume", "--dry-run", "--allow-empty", "--report", "--config", "--quiet",
                 "--log-format", "--prediction-prefix", "--run-id", "--device"):
        assert flag in text, flag
    assert (
        "Exit codes: 0 ok, 1 failed (retry may help), 2 usage/config/model/input problem, "
        "3 rows skipped or quarantined, 4 output locked, 130 interrupted, 70 internal error."
    ) in text


def test_importing_the_cli_loads_no_heavy_library():
    code = (
        "import sys, batchscore.cli\n"
        "heavy = ['onnxruntime', 'pyarrow', 'polars', 'torch', 'numpy', 'onnx', 'jax']\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_every_command_and_option_has_help_text():
    group = typer.main.get_command(app)
    assert group.help
    ctx = group.context_class(group)  # typer's own (vendored) click: not the click package's classes
    assert group.list_commands(ctx), "no commands"
    options = 0
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command.help, f"command {name} has no help"
        for param in command.params:
            if param.param_type_name == "option":
                options += 1
                assert param.help, f"{name} {param.opts} has no help"
    assert options > 40  # the checks above really ran (run alone has over 40 options)


def test_no_arguments_prints_usage(cli):
    res = cli()
    assert "Usage:" in res.stdout + res.stderr
    assert res.exit_code in (0, 2)


@pytest.mark.parametrize("argv", [["--version"], ["run", "--version"]])
def test_version(cli, argv):
    res = cli(*argv)
    assert res.exit_code == 0
    assert res.stdout == f"batchscore {batchscore.__version__}\n"
    assert res.stderr == ""


def test_run_scores_and_prints_a_summary_on_stderr(cli, scored):
    folder, table, model = scored
    res = cli.run(folder, "--model", model, "--output", "out")
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert all(line.startswith("batchscore: ") for line in lines), res.stderr
    assert "batchscore: status: ok" in lines
    assert "batchscore: rows written: 13" in lines
    assert "batchscore: shards: 3/3 (1 empty)" in lines
    assert "batchscore: output: out" in lines
    assert_predictions(read_output("out"), table, reference(model, table))


def test_short_flags(cli, scored):
    folder, table, model = scored
    res = cli.run(folder, "-m", model, "-o", "out.parquet", "-q")
    assert res.stderr == ""
    assert read_output("out.parquet").num_rows == 13


def test_quiet_prints_nothing_on_success(cli, scored):
    folder, _, model = scored
    res = cli.run(folder, "--model", model, "--output", "out", "--quiet")
    assert (res.stdout, res.stderr) == ("", "")


def test_log_format_json_writes_json_lines(cli, scored):
    folder, _, model = scored
    res = cli.run(folder, "--model", model, "--output", "out", "--log-format", "json")
    assert res.stdout == ""
    records = [json.loads(line) for line in res.stderr.splitlines()]
    assert records, "no log lines"
    assert all({"ts", "level", "msg"} <= set(r) for r in records)
    summary = [r for r in records if r["msg"] == "summary"]
    assert len(summary) == 1
    assert summary[0]["summary"]["status"] == "ok"
    assert summary[0]["summary"]["rows_written"] == 13


def test_log_format_json_reports_errors_as_json(cli, model):
    res = cli("run", "nowhere.parquet", "--model", model, "--log-format", "json")
    assert res.exit_code == 2
    assert res.stdout == ""
    assert [json.loads(line) for line in res.stderr.splitlines()] == [
        {"level": "error", "msg": "input nowhere.parquet does not exist: check the path", "exit_code": 2}
    ]


def test_log_format_from_the_environment_applies_to_errors(cli, model):
    res = cli("run", "nowhere.parquet", "--model", model, env={"BATCHSCORE_LOG_FORMAT": "json"})
    assert res.exit_code == 2
    assert json.loads(res.stderr)["msg"] == "input nowhere.parquet does not exist: check the path"


def test_dry_run_prints_the_plan_and_writes_nothing(cli, scored):
    folder, _, model = scored
    res = cli.run(folder, "--model", model, "--output", "out", "--dry-run", "--batch-size", "4")
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    plan = lines[lines.index("shards: 3, 13 rows"):]
    assert plan[1:4] == [
        f"  {folder}/part-000.parquet (parquet, 5 rows) -> part-000.parquet",
        f"  {folder}/part-001.parquet (parquet, 0 rows) -> part-001.parquet",
        f"  {folder}/part-002.parquet (parquet, 8 rows) -> part-002.parquet",
    ]
    assert plan[4].startswith(f"model: {model} (onnx, sha256 ")
    assert plan[5:12] == [
        "features (the 3 floating-point columns):",
        "  features <- f0, f1, f2",
        "keep: id, name, ts, count",
        "output schema:",
        "  id: int64",
        "  name: string",
        "  ts: timestamp[us]",
    ]
    assert "batch size: 4 (--batch-size), prefetch 4" in plan
    assert "output: out" in plan
    assert not os.path.exists("out")
    assert os.listdir(".") == []


def test_allow_empty_with_a_glob_matching_nothing_exits_0(cli, model):
    res = cli("run", "nothing/*.parquet", "--model", model, "--allow-empty")
    assert res.exit_code == 0
    assert "batchscore: warning: no input matches nothing/*.parquet; nothing to do (--allow-empty)" in res.stderr
    assert os.listdir(".") == []


def test_a_glob_matching_nothing_without_allow_empty_exits_2(cli, model):
    assert cli.fails("nothing/*.parquet", "--model", model, code=2) == (
        "no input matches nothing/*.parquet: check the paths "
        "(or pass --allow-empty for a nightly glob that may match nothing)"
    )


def test_overwrite_and_resume_together_are_refused(cli, scored):
    folder, _, model = scored
    assert cli.fails(folder, "--model", model, "--overwrite", "--resume", code=2) == (
        "--overwrite and --resume contradict each other: pass one"
    )


def test_run_id_is_used(cli, scored):
    folder, _, model = scored
    res = cli.run(folder, "--model", model, "--output", "out", "--run-id", "job-42")
    assert "batchscore: run id: job-42" in res.stderr.splitlines()


def test_traceback_flag_shows_one_for_user_errors(cli, model):
    res = cli("run", "nowhere.parquet", "--model", model, "--traceback")
    assert res.exit_code == 2
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.splitlines()[-1] == "batchscore: error: input nowhere.parquet does not exist: check the path"


def test_an_internal_error_exits_70_with_a_traceback(cli, scored, monkeypatch):
    folder, _, model = scored

    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr("batchscore.api.run_job", boom)
    res = cli("run", folder, "--model", model)
    assert res.exit_code == 70
    assert "Traceback (most recent call last)" in res.stderr
    assert res.stderr.splitlines()[-1] == (
        "batchscore: error: internal error (a bug, please report it): RuntimeError: kaput"
    )


def test_keyboard_interrupt_exits_130_with_a_message(scored, monkeypatch, capsys):
    folder, _, model = scored

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("batchscore.api.run_job", interrupt)
    from batchscore.cli import main

    previous = signal.getsignal(signal.SIGTERM)  # main() installs a SIGTERM handler
    try:
        with pytest.raises(SystemExit) as info:
            main(["run", folder, "--model", model])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert info.value.code == 130
    assert capsys.readouterr().err.splitlines()[-1] == "batchscore: error: interrupted before scoring started; nothing was written"
