"""One worker pool for every paper: jobs in single-threaded processes, each result kept as it finishes.

    pool = Pool(rows, workers=2, shared=corpus_arrays, log_path="runs/.../workers.log")
    for job in jobs:                          # frozen dataclasses with a ``key`` and a ``run`` method
        pool.submit(job)
    for job, result in pool.as_completed():   # as each finishes (stored through ``rows`` first)
        ...                                   # may submit more jobs: they are waited for too

- A job is a frozen dataclass (picklable: it crosses to a spawned process) with ``key`` (its row
  key in ``rows``, :mod:`reproduce.rundir`) and ``run(shared, checkpoint_dir)``, which computes the
  result from the job's fields, the pool's ``shared`` data (handed to each worker once, when it
  starts) and the folder where its training checkpoints (``rows.checkpoint_dir(key)``).
- A job whose row is already stored (an interrupted run finished it) is not run: its result is read
  back. Every other result is stored through ``rows.row(key, ...)`` by this process as soon as it
  is known, so a crash later loses no finished job.
- ``workers`` 0, 1 without ``help``, or several processes in the run (torchrun: each process trains
  its share of every batch): the jobs run here, one after the other, in submission order. Otherwise
  ``workers`` spawned processes with one torch thread each (a fork of a process with live torch
  threads can deadlock), their output appended to ``log_path`` instead of the notebook's cell; one
  worker with ``help`` is a worker beside this process (which computes something else meanwhile).
- ``help=True``: while this process waits in :meth:`Pool.as_completed`, it runs not-yet-started jobs
  itself, from the back of the queue, as the workers take them from the front, so no core idles.
- The queue stays here: a job goes to the workers only when one of them is free (a done-callback hands
  it the next). A process pool marks as running every job it has moved to its call queue, ahead of the
  workers, and none of those can be taken back: with all jobs handed over at once, the last two of a
  one-worker pool ran one after the other in the worker while this process waited beside them idle
  (the Transformer's cpu record at cacd146: 5 minutes of one core).

Each job seeds itself and runs single-threaded, so where it runs changes no number (tested).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from . import distributed
from .rundir import MemoryRows, Rows

_SHARED: dict[str, Any] = {}  # in a worker: the pool's shared data


class Job(Protocol):
    key: str

    def run(self, shared: Any, checkpoint_dir: str | None) -> Any: ...


def _start_worker(shared: Any, threads: int, log_path: str | None) -> None:
    import torch

    torch.set_num_threads(threads)
    # a worker shares the notebook kernel's stderr, which the kernel copies into the running cell: its
    # progress bars would fill the executed notebook. Errors still reach the caller, as exceptions.
    log = open(log_path or os.devnull, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the worker
    if log_path:
        os.dup2(log.fileno(), 2)
    sys.stderr = log
    _SHARED["data"] = shared


def _run_in_worker(job: Job, checkpoint_dir: str | None) -> Any:
    return job.run(_SHARED.get("data"), checkpoint_dir)


class Pool:
    """Jobs run in ``workers`` processes (or here); see the module docstring."""

    def __init__(self, rows: Rows | None = None, workers: int = 1, *, shared: Any = None, log_path: str | Path | None = None,
                 fmt: str = "json", help: bool = False, desc: str = "jobs"):
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {workers!r}")
        self.rows = rows if rows is not None else MemoryRows()
        self.shared, self.fmt, self.help, self.desc = shared, fmt, help, desc
        self.workers = 0 if workers == 0 or (workers == 1 and not help) or distributed.world_size() > 1 else workers
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if self.workers:
            if log_path is not None:
                Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                initargs=(shared, 1, str(log_path) if log_path is not None else None))
        self._order: list[Job] = []  # every submitted job, in submission order
        self._queued: list[Job] = []  # to run here (no workers)
        self._waiting: list[tuple[Job, str | None]] = []  # for the workers (with its checkpoint folder), not yet
        # handed to them: at most ``workers`` are at once
        self._futures: dict[concurrent.futures.Future, Job] = {}  # handed to the workers, result not yet taken
        self._lock = threading.RLock()  # _waiting and _futures: the executor's thread feeds workers through _feed
        self._ready: list[tuple[Job, Any]] = []  # known, not yet yielded
        self.results: dict[str, Any] = {}  # key -> result, every job known so far

    # -- submitting --------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue ``job`` (or take its stored result); it starts at once when there are workers."""
        if job.key in self.results or any(j.key == job.key for j in self._order):
            raise ValueError(f"a job with key {job.key!r} was submitted twice")
        self._order.append(job)
        if self.rows.has_row(job.key, self.fmt):  # finished by an earlier, interrupted run
            self._ready.append((job, self.rows.row(job.key, _never, self.fmt)))
        elif self._executor is None:
            self._queued.append(job)
        else:
            directory = self._checkpoint_dir(job)  # a bad key fails here, at once
            with self._lock:
                self._waiting.append((job, directory))
            self._feed()

    def _feed(self, _done: concurrent.futures.Future | None = None) -> None:
        """Hand waiting jobs to the workers, the first first, while fewer than ``workers`` are busy; also the
        done-callback of every job handed over (it runs in the executor's thread)."""
        with self._lock:
            while (self._executor is not None and self._waiting
                   and sum(not f.done() for f in self._futures) < self.workers):
                job, directory = self._waiting.pop(0)
                try:
                    future = self._executor.submit(_run_in_worker, job, directory)
                except Exception as e:  # e.g. a broken pool, in a callback: the error reaches as_completed, not a log
                    future = concurrent.futures.Future()
                    future.set_exception(e)
                else:
                    future.add_done_callback(self._feed)
                self._futures[future] = job

    def _checkpoint_dir(self, job: Job) -> str | None:
        directory = self.rows.checkpoint_dir(job.key)
        return str(directory) if directory is not None else None

    def _run_here(self, job: Job) -> Any:
        return job.run(self.shared, self._checkpoint_dir(job))

    def _store(self, job: Job, result: Any) -> Any:
        return self.rows.row(job.key, lambda: result, self.fmt)

    # -- waiting -----------------------------------------------------------------------------------
    def as_completed(self) -> Iterator[tuple[Job, Any]]:
        """``(job, result)`` of every submitted job as it finishes, stored first; jobs submitted while
        iterating are waited for too."""
        from tqdm.auto import tqdm

        progress = tqdm(total=len(self._order), desc=self.desc, leave=False)
        try:
            while self._pending():
                progress.total = len(self._order)
                if self._ready:
                    job, result = self._ready.pop(0)
                elif self._queued:  # no workers: in submission order
                    job = self._queued.pop(0)
                    result = self.rows.row(job.key, lambda job=job: self._run_here(job), self.fmt)
                else:
                    job, result = self._next_from_workers()
                self.results[job.key] = result
                progress.update(1)
                yield job, result
        finally:
            progress.close()

    def _pending(self) -> bool:
        """Any job not yet yielded; under the lock, as a callback moves a job from _waiting to _futures."""
        with self._lock:
            return bool(self._ready or self._queued or self._futures or self._waiting)

    def _next_from_workers(self) -> tuple[Job, Any]:
        while True:
            with self._lock:
                done = [f for f in self._futures if f.done()]
                if not done and self.help and self._waiting:  # no result yet: run the last waiting job here
                    job, _ = self._waiting.pop()
                    break
                if not done and not self._futures:  # a callback has not fed the workers yet
                    self._feed()
                    continue
                futures = list(self._futures)
            if not done:
                concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
                continue
            with self._lock:
                future = min(done, key=lambda f: self._order.index(self._futures[f]))  # several done: the first submitted
                job = self._futures.pop(future)
            return job, self._store(job, future.result())
        return job, self._store(job, self._run_here(job))

    def wait(self) -> list[Any]:
        """Every submitted job's result, in submission order (waits for the rest)."""
        for _ in self.as_completed():
            pass
        return [self.results[job.key] for job in self._order]

    # -- closing -----------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            executor, self._executor, self._waiting = self._executor, None, []
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _never():
    raise AssertionError("a stored row was to be read back, not computed")
