"""Shared test set-up: the hub is offline, outputs go to a temporary folder, never the repository."""

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("MPLBACKEND", None)  # kernels started by tests pick their own backend
os.environ.pop("JUPYTER_PATH", None)
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture
def output_dir(tmp_path, monkeypatch):
    """Redirect results/, figures/ and runs/ into a temporary folder for one test."""
    out = tmp_path / "out"
    monkeypatch.setenv("REPRODUCE_OUTPUT_DIR", str(out))
    return out


def subprocess_env(**extra: str) -> dict:
    """Environment for a child process: this one's, the tests folder importable, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection in this test fails it (an AssertionError, not an OSError,
    so no library mistakes it for "offline" and carries on)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"tried to reach the network: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
