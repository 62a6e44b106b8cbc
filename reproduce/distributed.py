"""Several processes, one run: who computes, who writes.

``accelerate launch -m reproduce run <paper> --profile gpu`` (or ``torchrun``) starts one
``reproduce run`` per process; each runs the notebook with papermill, and every notebook kernel
inherits ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address. Then:

- every process computes the same sections with the same seeds, so they stay in step;
- trainings (:func:`reproduce.train.train`) split every global batch over the processes;
- evaluations run once, on the main process, and their results are broadcast (:func:`on_main`);
- long preparation (streaming and tokenising a hub corpus into a cache) runs on the main process
  first while the others wait on the rendezvous store, outside any collective (:func:`main_first`);
- only the main process writes: the executed notebook, ``results/``, figures, checkpoints' metadata.

Timeouts: a collective that waits longer than the process group's timeout aborts every process
(NCCL's watchdog: 10 minutes by default). The group is made with ``REPRODUCE_DIST_TIMEOUT_S``
seconds (default 3 hours), and :func:`main_first` waits up to ``REPRODUCE_MAIN_FIRST_TIMEOUT_S``
(default 24 hours), so a slow step on the main process no longer kills the waiting ones.

With one process (a notebook in JupyterLab, ``python -m reproduce run``) every function here is a
no-op or the identity. ``torch`` is imported only when more than one process runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")
TIMEOUT_ENV, TIMEOUT_S = "REPRODUCE_DIST_TIMEOUT_S", 3 * 3600  # the process group's collectives
MAIN_FIRST_TIMEOUT_ENV, MAIN_FIRST_TIMEOUT_S = "REPRODUCE_MAIN_FIRST_TIMEOUT_S", 24 * 3600  # main_first's wait
_main_first_calls = itertools.count()  # every process makes the same calls in the same order: one key per call


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """Processes in this run (``WORLD_SIZE``, set by torchrun / accelerate launch; 1 otherwise)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def rank() -> int:
    """This process's index in the run (0 = the main process, which writes)."""
    return _env_int("RANK", 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's index on its machine: the GPU it uses."""
    return _env_int("LOCAL_RANK", rank()) if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def _seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    try:
        seconds = float(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{name}={value!r} must be > 0 seconds")
    return seconds


def timeout() -> timedelta:
    """How long a collective may wait before the process group aborts (``REPRODUCE_DIST_TIMEOUT_S``)."""
    return timedelta(seconds=_seconds(TIMEOUT_ENV, TIMEOUT_S))


def init(device_type: str = "cpu"):
    """Join the run's process group (if several processes run) and return the device of this process.

    Goes through ``accelerate.PartialState``, which picks the backend (NCCL on GPUs, gloo on CPU) and
    puts process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``; the later ``Accelerator`` of a training
    shares that state. The group's collectives wait up to :func:`timeout` (not NCCL's 10 minutes).
    One process: nothing is started, and the device is returned as asked.
    """
    import torch

    if world_size() == 1:
        return torch.device(device_type)
    from accelerate import PartialState

    state = PartialState(cpu=device_type == "cpu", timeout=timeout())
    if state.num_processes != world_size():
        raise RuntimeError(f"WORLD_SIZE={world_size()} but the process group has {state.num_processes} processes; "
                           "start the run with torchrun or accelerate launch")
    return state.device


def _initialized() -> bool:
    if world_size() == 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait until every process arrives (no-op with one process)."""
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on the main process, and only when it has finished, on every other one.

    For long work whose result the others read from a cache the main process writes (a hub corpus
    streamed and tokenised). The others wait on the rendezvous store (``TCPStore.wait``), not in a
    collective, so the process group's timeout and NCCL's watchdog do not apply; they wait up to
    ``REPRODUCE_MAIN_FIRST_TIMEOUT_S`` seconds (default 24 hours). A failure on the main process is
    raised on every process. One process: ``fn()``.
    """
    if not _initialized():
        return fn()
    import torch.distributed as dist

    store = dist.distributed_c10d._get_default_store()
    key = f"reproduce/main_first/{next(_main_first_calls)}"
    if is_main():
        try:
            result = fn()
        except BaseException as e:
            store.set(key, f"failed: {type(e).__name__}: {e}")
            raise
        store.set(key, "ok")
        return result
    store.wait([key], timedelta(seconds=_seconds(MAIN_FIRST_TIMEOUT_ENV, MAIN_FIRST_TIMEOUT_S)))
    status = store.get(key).decode()
    if status != "ok":
        raise RuntimeError(f"the main process failed: {status.removeprefix('failed: ')}")
    return fn()


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process (any picklable object)."""
    if not _initialized():
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _forked_random_state():
    """Draws inside leave torch's (CPU and this process's GPU), NumPy's and Python's random states as they were."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the main process only and give its result to every process.

    For evaluations: computed once instead of once per process. ``fn`` must not itself call
    collectives (it runs on one process). Its random draws are made on forked random states (torch,
    NumPy, ``random``), so that the processes stay in step afterwards. An exception on the main
    process is raised on every one.
    """
    if not _initialized():
        return fn(*args, **kwargs)
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            with _forked_random_state():
                result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every process
            error = e
    error_text = broadcast(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if error_text is not None:
        raise RuntimeError(f"the main process failed: {error_text}")
    return broadcast(result)
