"""Regenerate docs/cli.md from the CLI's own --help (tests/test_docs.py checks it is in sync).

    python tools/gen_cli_docs.py > docs/cli.md
"""

from __future__ import annotations

import os

from typer.testing import CliRunner


def render() -> str:
    from batchscore.cli import app

    os.environ["COLUMNS"] = "100"
    runner = CliRunner()
    parts = [
        "# Command-line reference\n",
        "Generated from `--help` by `python tools/gen_cli_docs.py > docs/cli.md`; do not edit by hand.\n",
    ]
    for args, title in ((["--help"], "batchscore"), (["run", "--help"], "batchscore run")):
        out = runner.invoke(app, args, prog_name="batchscore", env={"COLUMNS": "100", "TERM": "dumb"}).output
        parts.append(f"## `{title}`\n\n```text\n{out.rstrip()}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
