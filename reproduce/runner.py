"""Papermill orchestration: validate, execute a paper's notebook, collect its result record.

The source notebook is never modified: papermill writes the executed copy under ``runs/<paper>/``
(git-ignored). Parameters are validated by :mod:`reproduce.config` before papermill (and torch)
is imported, so a bad value costs a fraction of a second, not a kernel start.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from . import claims, config, distributed
from .paths import NOTEBOOKS_DIR, results_dir, runs_dir

KERNEL = "python3"


@dataclass
class Outcome:
    """What one notebook run produced."""

    paper: str
    profile: str
    status: str  # "ok" | "failed"
    wall_time_s: float
    executed: Path
    results: Path | None = None
    verdicts: dict[str, int] = field(default_factory=dict)  # verdict -> number of claims
    error: str = ""
    failed_cell: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def notebook_path(paper: str) -> Path:
    return NOTEBOOKS_DIR / config.get_spec(paper).notebook


def executed_path(paper: str, profile: str, root: str | Path | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return runs_dir(root) / paper / f"{profile}-{stamp}.ipynb"


def papermill_parameters(params: config.Params) -> dict[str, Any]:
    """What papermill injects: the profile plus the user's overrides (already validated)."""
    return {"profile": params.profile, **params.overrides}


def execute(params: config.Params, progress: bool = True, notebook: Path | None = None) -> Outcome:
    """Execute one notebook with papermill and return its :class:`Outcome` (never raises on a cell error)."""
    import papermill as pm  # imported here: validation must not pay for it

    source = notebook or notebook_path(params.paper)
    root = params.get("output_dir") or None  # passed to the notebook as a parameter too (an override)
    out = executed_path(params.paper, params.profile, root)
    if not distributed.is_main():  # one writer: the other processes' executed copies are thrown away
        import tempfile

        out = Path(tempfile.mkdtemp(prefix=f"reproduce-rank{distributed.rank()}-")) / out.name
        progress = False
    out.parent.mkdir(parents=True, exist_ok=True)
    result_file = results_dir(root) / params.paper / f"{params.profile}.json"
    before = result_file.stat().st_mtime if result_file.exists() else None
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # silence a debugger warning in kernels
    t0 = time.perf_counter()
    outcome = Outcome(params.paper, params.profile, "ok", 0.0, out)
    try:
        pm.execute_notebook(
            str(source),
            str(out),
            parameters=papermill_parameters(params),
            kernel_name=KERNEL,
            progress_bar=progress,
            cwd=str(source.parent),
        )
    except pm.PapermillExecutionError as e:
        outcome.status = "failed"
        outcome.error = f"{e.ename}: {e.evalue}"
        outcome.failed_cell = _cell_source(out, e.exec_count)
    except Exception as e:  # kernel died, notebook missing, ...
        outcome.status = "failed"
        outcome.error = f"{type(e).__name__}: {e}"
    outcome.wall_time_s = round(time.perf_counter() - t0, 1)
    if not distributed.is_main():
        import shutil

        shutil.rmtree(out.parent, ignore_errors=True)
        return outcome
    if result_file.exists() and result_file.stat().st_mtime != before:
        outcome.results = result_file
        record = json.loads(result_file.read_text(encoding="utf-8"))
        outcome.verdicts = claims.counts(record["claims"])
        if not record.get("complete", True) and outcome.status == "ok":
            outcome.status = "failed"
            outcome.error = "the notebook finished without saving its record (run.save() in its last cell); " \
                            f"{result_file.name} holds a partial one"
    elif outcome.status == "ok":
        outcome.status = "failed"
        outcome.error = f"the notebook finished but wrote no {result_file.relative_to(results_dir(root).parent)}"
    return outcome


def _cell_source(executed: Path, exec_count: int | None) -> str:
    """The source of the cell that failed, read back from the executed notebook."""
    try:
        nb = json.loads(executed.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return ""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and cell.get("execution_count") == exec_count:
            return "".join(cell.get("source", ""))
    for cell in nb.get("cells", []):  # papermill marks the failing cell in its metadata
        if cell.get("metadata", {}).get("papermill", {}).get("exception"):
            return "".join(cell.get("source", ""))
    return ""
