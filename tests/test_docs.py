"""The README's promises that the docs build does not check (#31): the README lies outside `docs/`, so
`mkdocs build --strict` (.ci/run) does not see its links, and CI must run exactly its test command."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEST_COMMAND = 'python -m pip install -e ".[test]" && python -m pytest'


def test_ci_runs_the_readme_test_command_last():
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{TEST_COMMAND}\n```" in readme
    assert "chromium" in readme  # the browser tests' system dependency is said where the command is
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == TEST_COMMAND
    build = [i for i, line in enumerate(lines) if "mkdocs build --strict" in line]
    assert build and build[0] < len(lines) - 1  # the docs are built, before the tests
    assert "--quiet" not in lines[build[0]].split("#")[0]  # mkdocs 1.6: --quiet drops the warnings --strict counts


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert "docs/images/catch-lanes-frame.png" in local and "docs/security.md" in local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def test_raw_benchmarks_live_in_one_folder():
    """docs/bench/ holds every raw JSON, and docs/benchmarks.md links each of them (mkdocs --strict checks
    that every link resolves; this, that no file is left unexplained)."""
    assert not list((ROOT / "docs").glob("bench-*.json"))
    raw = {p.name for p in (ROOT / "docs" / "bench").glob("*.json")}
    linked = set(re.findall(r"\]\(bench/([^)]+\.json)\)", (ROOT / "docs" / "benchmarks.md").read_text()))
    assert raw and linked == raw, (raw - linked, linked - raw)
