"""The package's layering (pyproject.toml [tool.importlinter]): no import cycles, commands above papers
above shared infrastructure above the core, no paper importing another. Checked with import-linter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*LINT, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_import_contracts_hold():
    done = _lint(REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout or "0 broken" in done.stdout


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "reproduce", root / "reproduce", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_a_reintroduced_cycle_or_a_paper_importing_another_breaks_them(tmp_path):
    root = _copy(tmp_path)
    rundir = root / "reproduce" / "rundir.py"
    rundir.write_text(rundir.read_text() + "\n\ndef _late():\n    from .results import Run  # results imports rundir\n")
    done = _lint(root)
    assert done.returncode != 0 and "No cycles are allowed in reproduce" in done.stdout, done.stdout[-2000:]

    root = _copy(tmp_path / "second")
    plots = root / "reproduce" / "tova" / "plots.py"
    plots.write_text(plots.read_text() + "\n\nfrom reproduce.retnet import retention  # noqa: E402\n")
    done = _lint(root)
    assert done.returncode != 0 and "reproduce.tova is not allowed to import reproduce.retnet" in done.stdout, done.stdout[-2000:]
