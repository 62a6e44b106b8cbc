"""Where things live. Paths come from the package location, never from the working directory.

Outputs (``results/``, ``figures/``, ``runs/``) go under the repository, or under the folder a run
names: the ``output_dir`` parameter (``python -m reproduce run ... --output-dir D`` passes it to the
notebook as a parameter), else the ``REPRODUCE_OUTPUT_DIR`` environment variable (a user's or a
test's default). ``REPRODUCE_CACHE`` moves the data/model cache (default ``<repo>/.cache``).
Smoke runs (CI, ``make reproduce``) write their figures under ``runs/figures`` so that they never
overwrite the committed figures of the cpu-profile runs; their results go to
``results/<paper>/smoke.json``, which git ignores.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def output_root(root: str | Path | None = None) -> Path:
    """``root`` when given (a run's ``output_dir``), else ``$REPRODUCE_OUTPUT_DIR``, else the repository."""
    if root:
        return Path(root).resolve()
    env = os.environ.get("REPRODUCE_OUTPUT_DIR")
    return Path(env).resolve() if env else REPO_ROOT


def results_dir(root: str | Path | None = None) -> Path:
    return output_root(root) / "results"


def runs_dir(root: str | Path | None = None) -> Path:
    return output_root(root) / "runs"


def figures_dir(profile: str | None = None, root: str | Path | None = None) -> Path:
    """``figures/`` for real runs; ``runs/figures/`` for the smoke profile."""
    if profile == "smoke":
        return runs_dir(root) / "figures"
    return output_root(root) / "figures"


def cache_dir() -> Path:
    env = os.environ.get("REPRODUCE_CACHE")
    path = Path(env).resolve() if env else REPO_ROOT / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path
