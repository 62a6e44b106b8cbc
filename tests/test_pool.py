"""The shared worker pool (reproduce/pool.py) and the resume protocol it stores through (Rows)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

import pipeline_spec  # noqa: F401 - registers the test paper
from reproduce import config
from reproduce.pool import Pool
from reproduce.rundir import MemoryRows, RunDir


@dataclass(frozen=True)
class Square:
    key: str
    x: int

    def run(self, shared, checkpoint_dir):
        import torch

        return {"y": self.x * self.x + (shared or 0), "pid": os.getpid(), "threads": torch.get_num_threads(),
                "checkpoint_dir": checkpoint_dir}


@dataclass(frozen=True)
class Sleeps:
    key: str
    seconds: float

    def run(self, shared, checkpoint_dir):
        import time

        time.sleep(self.seconds)
        return {"pid": os.getpid()}


@dataclass(frozen=True)
class Fails:
    key: str

    def run(self, shared, checkpoint_dir):
        raise ValueError(f"job {self.key} failed")


def test_in_process_jobs_run_in_submission_order_with_shared_data():
    with Pool(MemoryRows(), workers=1, shared=10) as pool:
        for x in (3, 1, 2):
            pool.submit(Square(f"x{x}", x))
        order = [job.key for job, _ in pool.as_completed()]
        assert order == ["x3", "x1", "x2"]
        assert [r["y"] for r in pool.wait()] == [19, 11, 14]
        assert {r["pid"] for r in pool.results.values()} == {os.getpid()}


@pytest.mark.parametrize("help", [False, True])
def test_worker_processes_give_what_this_process_gives(help):
    with Pool(MemoryRows(), workers=2, shared=1, help=help) as pool:
        for x in range(6):
            pool.submit(Square(f"x{x}", x))
        results = pool.wait()
    assert [r["y"] for r in results] == [x * x + 1 for x in range(6)]
    elsewhere = [r for r in results if r["pid"] != os.getpid()]
    assert elsewhere and all(r["threads"] == 1 for r in elsewhere)  # single-threaded workers


def test_a_helping_process_runs_every_job_no_worker_has_started():
    """One worker busy with the first job: this process must run both others. A process pool marks the jobs
    in its call queue as running before any worker takes them, so with every job handed over at once this
    process could take only the last and sat idle while the worker ran the middle one (the cpu record at
    cacd146 lost 5 minutes of a core that way)."""
    with Pool(MemoryRows(), workers=1, help=True) as pool:
        for i, seconds in enumerate((3.0, 1.0, 1.0)):  # the worker's first job outlasts this process's two
            pool.submit(Sleeps(f"s{i}", seconds))
        results = pool.wait()
    here = [job for job, r in zip(("s0", "s1", "s2"), results) if r["pid"] == os.getpid()]
    assert here == ["s1", "s2"]


def test_jobs_submitted_while_waiting_are_waited_for():
    with Pool(MemoryRows(), workers=2) as pool:
        pool.submit(Square("a", 2))
        seen = []
        for job, result in pool.as_completed():
            seen.append(job.key)
            if job.key == "a":  # e.g. a sweep finished: start the runs it chose
                pool.submit(Square("b", result["y"]))
        assert seen == ["a", "b"] and pool.results["b"]["y"] == 16


def test_stored_rows_are_read_back_not_run_again(tmp_path):
    params = config.resolve("pipeline", "smoke", {"output_dir": str(tmp_path)})
    first = RunDir(params)
    with Pool(first, workers=1) as pool:
        pool.submit(Square("kept", 4))
        pool.wait()
    assert first.row_path("kept").is_file()
    again = RunDir(params)  # a rerun of the same parameters: the row is kept
    with Pool(again, workers=2) as pool:
        pool.submit(Square("kept", 4))
        pool.submit(Square("new", 5))
        results = pool.wait()
    assert again.reused == ["kept"] and results[0]["y"] == 16 and results[1]["y"] == 25
    assert results[1]["checkpoint_dir"] == str(again.checkpoint_dir("new"))


def test_a_failing_job_raises_and_a_key_is_submitted_once():
    with Pool(MemoryRows(), workers=2) as pool:
        pool.submit(Fails("bad"))
        with pytest.raises(ValueError, match="job bad failed"):
            pool.wait()
    with Pool(MemoryRows(), workers=1) as pool:
        pool.submit(Square("a", 1))
        with pytest.raises(ValueError, match="submitted twice"):
            pool.submit(Square("a", 2))
    with pytest.raises(ValueError, match="workers must be"):
        Pool(MemoryRows(), workers=-1)
