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
    """Environment for a child process: this one's, the tests folder and this checkout's ``reproduce``
    importable (not another checkout's editable install), plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), str(REPO_ROOT), env.get("PYTHONPATH", "")]))
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


def run_profile(paper: str, profile: str, overrides: dict, out, timeout: int = 300):
    """``python -m reproduce run <paper> --profile <profile> -p k=v ... --output-dir out`` on CPU, hub offline,
    one thread; returns ``(record, wall seconds)`` and fails the test with the run's output when it fails."""
    import json
    import subprocess
    import time

    args = [a for k, v in overrides.items() for a in ("-p", f"{k}={v if isinstance(v, str) else json.dumps(v)}")]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "reproduce", "run", paper, "--profile", profile, *args,
                           "--output-dir", str(out), "--no-progress"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env=subprocess_env(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"))
    wall = time.perf_counter() - t0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "results" / paper / f"{profile}.json").read_text()), wall


class KeptRows:
    """``reproduce.rundir.Rows`` kept in memory as a rerun finds them on disk: each row computed once
    (``computed`` lists them), then read back; with a ``root``, each row has a checkpoint folder."""

    def __init__(self, root=None):
        self.root, self.kept, self.computed = root, {}, []

    def row(self, key, compute, fmt="json", timed=False):
        if key not in self.kept:
            self.computed.append(key)
            self.kept[key] = compute()
        return self.kept[key]

    def has_row(self, key, fmt="json"):
        return key in self.kept

    def checkpoint_dir(self, key):
        return None if self.root is None else self.root / key

    def key(self, *parts):
        from reproduce.rundir import row_key

        return row_key(*parts)



def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(target, args, world: int = 2, timeout: float = 120) -> list:
    """Run ``target(*args(rank, port, queue))`` in ``world`` spawned processes (one rendezvous port); each
    puts one result on the queue. Returns the results sorted, once every process exited with 0."""
    import torch

    ctx = torch.multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=target, args=args(rank, port, queue)) for rank in range(world)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"process exited with {p.exitcode}"
    return results
