"""Generated docs stay in sync with --help, and the docs' links resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_MD = ROOT / "docs" / "cli.md"


def _render() -> str:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "tools" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render()


@pytest.mark.xfail(
    not CLI_MD.exists(),
    reason="docs/cli.md is missing (README links it): python tools/gen_cli_docs.py > docs/cli.md",
    strict=True,
)
def test_cli_reference_matches_help(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # render() sets it; restore it afterwards
    assert CLI_MD.read_text() == _render(), "docs/cli.md is stale: python tools/gen_cli_docs.py > docs/cli.md"


def _missing_links() -> list[str]:
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    return missing


_MISSING = _missing_links()


@pytest.mark.xfail(bool(_MISSING), reason=f"docs link to missing files: {_MISSING}", strict=True)
def test_relative_links_in_the_docs_resolve():
    assert _missing_links() == []


def test_readme_lists_every_exit_code():
    from batchscore.errors import ExitStatus

    readme = (ROOT / "README.md").read_text()
    for status in ExitStatus:
        assert re.search(rf"^\| {int(status)} \|", readme, re.M), f"exit code {int(status)} missing from README"
