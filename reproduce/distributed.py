"""Several processes, one run: who computes, who writes.

``accelerate launch -m reproduce run <paper> --profile gpu`` (or ``torchrun``) starts one
``reproduce run`` per process; each runs the notebook with papermill, and every notebook kernel
inherits ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address. Then:

- every process computes the same sections with the same seeds, so they stay in step;
- trainings (:func:`reproduce.train.train`) split every global batch over the processes;
- evaluations run once, on the main process, and their results are broadcast (:func:`on_main`);
- only the main process writes: the executed notebook, ``results/``, figures, checkpoints' metadata.

With one process (a notebook in JupyterLab, ``python -m reproduce run``) every function here is a
no-op or the identity. ``torch`` is imported only when more than one process runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


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


def init(device_type: str = "cpu"):
    """Join the run's process group (if several processes run) and return the device of this process.

    Goes through ``accelerate.PartialState``, which picks the backend (NCCL on GPUs, gloo on CPU) and
    puts process ``LOCAL_RANK`` on ``cuda:LOCAL_RANK``; the later ``Accelerator`` of a training
    shares that state. One process: nothing is started, and the device is returned as asked.
    """
    import torch

    if world_size() == 1:
        return torch.device(device_type)
    from accelerate import PartialState

    state = PartialState(cpu=device_type == "cpu")
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


def broadcast(value: T) -> T:
    """The main process's ``value`` on every process (any picklable object)."""
    if not _initialized():
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on the main process only and give its result to every process.

    For evaluations: computed once instead of once per process. ``fn`` must not itself call
    collectives (it runs on one process). An exception on the main process is raised on every one.
    """
    if not _initialized():
        return fn(*args, **kwargs)
    result: Any = None
    error: BaseException | None = None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised below, on every process
            error = e
    error_text = broadcast(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if error_text is not None:
        raise RuntimeError(f"the main process failed: {error_text}")
    return broadcast(result)
