"""Long runs are safe: a run killed mid-training continues where it stopped and ends with the numbers
of an uninterrupted run; its state lives in runs/<paper>/<profile>/ and belongs to one set of parameters.

The killed run is a real ``python -m reproduce run`` (papermill, a kernel, ``reproduce.train.train``
checkpoints, ``run.state`` rows) of the test paper in tests/resume.ipynb, killed with SIGKILL (no
clean-up) while its second training is between checkpoints.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, subprocess_env
from reproduce import config, results, rundir

SPECS = {"REPRODUCE_SPECS": "resume_spec", "OMP_NUM_THREADS": "1"}


def _command(out, *params):
    return [sys.executable, "-m", "reproduce", "run", "resumable", "--profile", "smoke", "--output-dir", str(out),
            "--no-progress", *[x for p in params for x in ("-p", p)]]


def _record(out):
    return json.loads((out / "results" / "resumable" / "smoke.json").read_text())


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_numbers_of_an_uninterrupted_run(tmp_path):
    env = subprocess_env(**SPECS)
    whole = subprocess.run(_command(tmp_path / "whole"), env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    state = out / "runs" / "resumable" / "smoke"
    proc = subprocess.Popen(_command(out, "step_sleep=0.15"), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=REPO_ROOT, start_new_session=True)
    try:  # wait for row a stored and row b past its second checkpoint, then kill everything (kernel included)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = sorted((state / "checkpoints" / "fit-b").glob("step_*/trainer_state.json"))
            if (state / "rows" / "fit-a.json").is_file() and len(done) >= 2:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("the run did not reach row b's second checkpoint in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "results" / "resumable" / "smoke.json").exists()  # killed before its first claim

    again = subprocess.run(_command(out, "step_sleep=0.15"), env=env, capture_output=True, text=True, timeout=300,
                           cwd=REPO_ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed, reference = _record(out), _record(tmp_path / "whole")
    assert resumed["complete"] is True
    assert resumed["provenance"]["resumed_rows"] == ["fit-a"]  # row a read back, not retrained
    assert resumed["measured"]["fit.b.resumed_from"] >= 8  # row b continued from a checkpoint, not from step 0
    assert reference["measured"]["fit.b.resumed_from"] == 0
    for row in ("a", "b"):
        assert resumed["measured"][f"fit.{row}.losses"] == pytest.approx(reference["measured"][f"fit.{row}.losses"], abs=1e-6)
        assert resumed["measured"][f"fit.{row}.weights"] == pytest.approx(reference["measured"][f"fit.{row}.weights"], abs=1e-6)
    assert not (state / "rows").exists() and not (state / "checkpoints").exists()  # dropped once the record is saved


def _params(**overrides):
    import resume_spec  # noqa: F401 - registers the test paper

    return config.resolve("resumable", "smoke", overrides)


def test_rows_are_kept_for_the_same_parameters_only(tmp_path, capsys):
    first = rundir.RunDir(_params(steps=5), root=tmp_path / "state")
    calls = []
    assert first.row("x", lambda: calls.append(1) or {"v": 1}) == {"v": 1}
    same = rundir.RunDir(_params(steps=5, threads=1), root=tmp_path / "state")  # threads: not part of the state
    assert same.row("x", lambda: calls.append(2) or {"v": 2}) == {"v": 1} and calls == [1]
    assert same.reused == ["x"]
    other = rundir.RunDir(_params(steps=6), root=tmp_path / "state")  # other parameters: start afresh
    assert other.row("x", lambda: {"v": 3}) == {"v": 3}
    assert "moved to" in capsys.readouterr().out
    assert len(list(tmp_path.glob("state.old-*"))) == 1
    fresh = rundir.RunDir(_params(steps=6, resume=False), root=tmp_path / "state")
    assert not fresh.has_row("x") and len(list(tmp_path.glob("state.old-*"))) == 2


def test_row_keys_name_files_safely(tmp_path):
    state = rundir.RunDir(_params(), root=tmp_path / "state")
    with pytest.raises(ValueError, match="use letters, digits"):
        state.row("../escape", lambda: 1)
    assert state.key("table3", "(A) h=1", 0) == "table3-_A__h=1-0"
    assert len(state.key("x" * 100)) == 12


def test_a_partial_record_never_replaces_a_finished_one(tmp_path):
    params = _params(output_dir=str(tmp_path))
    finished = results.Run(params)
    finished.claim("c", artifact="Training", section="1", text="t", ours=1.0, relation="<", threshold=2.0, source="ours: a test threshold")
    path = finished.save()
    assert json.loads(path.read_text())["complete"] is True
    later = results.Run(params)
    later.claim("c", artifact="Training", section="1", text="t", ours=3.0, relation="<", threshold=2.0, source="ours: a test threshold")
    assert json.loads(path.read_text())["claims"][0]["ours"]["value"] == 1.0  # the finished record is untouched
    partial = later.partial_path()
    assert partial == tmp_path / "runs" / "resumable" / "smoke" / "partial.json"
    assert json.loads(partial.read_text())["complete"] is False
    assert [r["paper"] for r in results.load_all(tmp_path / "results")] == ["resumable"]
    later.save()
    assert json.loads(path.read_text())["claims"][0]["ours"]["value"] == 3.0 and not partial.exists()


def test_kept_rows_belong_to_one_code_version_and_thread_count(tmp_path, monkeypatch):
    """Rows from older code (or timed at another thread count) are never read back into a new record."""
    from reproduce import rundir, sources

    source = tmp_path / "mechanism.py"
    source.write_text("SCALE = 1\n")
    monkeypatch.setattr(sources, "paper_paths", lambda paper: [str(source)])
    before = rundir.code_version("pipeline")
    assert rundir.code_version("pipeline") == before
    source.write_text("SCALE = 2\n")  # a change that moves a number
    assert rundir.code_version("pipeline") != before
    params = _params(output_dir=str(tmp_path))
    first = rundir.fingerprint(params)
    source.write_text("SCALE = 3\n")
    assert rundir.fingerprint(params)["code"] != first["code"]
    import torch

    state = rundir.RunDir(params, root=tmp_path / "state")
    assert state.row("timing", lambda: {"ms": 1.0}, timed=True) == {"ms": 1.0}
    assert state.row("timing", lambda: {"ms": 2.0}, timed=True) == {"ms": 1.0}  # same threads: read back
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads != 1 else 2)
        assert state.row("timing", lambda: {"ms": 3.0}, timed=True) == {"ms": 3.0}  # other threads: timed again
    finally:
        torch.set_num_threads(threads)
