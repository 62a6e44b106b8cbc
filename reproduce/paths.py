"""Where things live. Paths come from the package location, never from the working directory.

Environment variables redirect outputs (tests use them to keep the repository clean):
``REPRODUCE_OUTPUT_DIR`` moves ``results/``, ``figures/`` and ``runs/`` under one folder;
``REPRODUCE_CACHE`` moves the data/model cache (default ``<repo>/.cache``).
Smoke runs (CI, ``make reproduce``) write their figures under ``runs/figures`` so that they never
overwrite the committed figures of the cpu-profile runs; their results go to
``results/<paper>/smoke.json``, which git ignores.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def _output_root() -> Path:
    env = os.environ.get("REPRODUCE_OUTPUT_DIR")
    return Path(env).resolve() if env else REPO_ROOT


def results_dir() -> Path:
    return _output_root() / "results"


def runs_dir() -> Path:
    return _output_root() / "runs"


def figures_dir(profile: str | None = None) -> Path:
    """``figures/`` for real runs; ``runs/figures/`` for the smoke profile."""
    if profile == "smoke":
        return runs_dir() / "figures"
    return _output_root() / "figures"


def cache_dir() -> Path:
    env = os.environ.get("REPRODUCE_CACHE")
    path = Path(env).resolve() if env else REPO_ROOT / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
