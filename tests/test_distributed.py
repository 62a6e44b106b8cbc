"""Many processes, one run: every notebook's smoke profile under ``torchrun --nproc_per_node 2`` (gloo,
two CPU processes) writes one complete record, one executed notebook and its figures, from process 0.

This is the command a GPU box runs as ``accelerate launch -m reproduce run <paper> --profile gpu`` (or
``torchrun``): each process runs the notebook, the kernels join one process group, trainings split
every batch, and only process 0 writes.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, subprocess_env
from reproduce import config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(paper, out, extra_env=None, *params):
    env = subprocess_env(OMP_NUM_THREADS="1", **(extra_env or {}))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "reproduce", "run", paper, "--profile", "smoke",
               "--output-dir", str(out), "--no-progress", *[x for p in params for x in ("-p", p)]]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # a hang: kill every process of the run (kernels included), not only torchrun
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{paper}: the 2-process run hung for 600 s\n{err[-3000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _check_one_writer(paper, out, proc):
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    record = json.loads((out / "results" / paper / "smoke.json").read_text())
    assert record["complete"] is True and record["claims"]
    executed = list((out / "runs" / paper).glob("smoke-*.ipynb"))
    assert len(executed) == 1, executed  # process 1's copy is not kept
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    assert proc.stdout.count("reproduce run") == 1  # one summary table, from process 0
    return record


@pytest.mark.slow
@pytest.mark.parametrize("paper", config.PAPERS)
def test_smoke_profile_under_two_processes(paper, tmp_path):
    out = tmp_path / "out"
    proc = _two_processes(paper, out)
    _check_one_writer(paper, out, proc)
    figures = list(out.rglob("*.png"))  # smoke figures go to runs/figures/
    if config.get_spec(paper).plots:
        assert figures, "process 0 wrote the figures"


@pytest.mark.slow
def test_a_run_of_two_processes_says_so_and_trains(tmp_path):
    """The record of a 2-process run names its 2 processes; its trainings learn (exact equality of 1 and 2
    processes is tests/test_train.py's)."""
    two = _check_one_writer("resumable", tmp_path / "two",
                            _two_processes("resumable", tmp_path / "two", {"REPRODUCE_SPECS": "resume_spec"}))
    assert two["provenance"]["processes"] == 2
    for row in ("a", "b"):
        assert two["measured"][f"fit.{row}.losses"][-1] < two["measured"][f"fit.{row}.losses"][0]
