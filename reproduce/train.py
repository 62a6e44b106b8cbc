"""The training loop shared by the paper notebooks, built on Hugging Face ``accelerate``.

One code path runs on CPU, one GPU or several GPUs:

    result = train(model, optimizer, batches, loss_fn, TrainConfig(steps=300, grad_accum=2, device="auto"),
                   scheduler=scheduler, eval_fn=evaluate, tokens_in="input_ids")

- In a notebook or a plain ``python`` process it trains on ``TrainConfig.device`` (the run's device).
- Data parallel over N processes (each builds the same model and iterates the same batches; the
  loop gives process ``r`` its share of every batch):
  a script: ``accelerate launch --num_processes 8 script.py`` or ``torchrun --nproc_per_node 8
  script.py``; CPU processes (gloo) start with ``torchrun`` (``accelerate launch --cpu`` runs one
  process unless MPI is set up); tested with 2 CPU processes in ``tests/_train_worker.py``;
  a whole paper run: ``accelerate launch --num_processes 8 -m reproduce run <paper> --profile gpu``
  (or ``torchrun --nproc_per_node 8 -m reproduce run ...``) starts 8 runs whose notebook kernels
  inherit RANK/WORLD_SIZE/LOCAL_RANK and join one process group (``reproduce.distributed``); tested
  with 2 CPU processes on every notebook's smoke profile (tests/test_distributed.py).

Batches and losses (what makes N processes equal one):
- ``batches`` yields *global* batches: dicts whose tensors hold the batch on dim 0. Every process
  must see the same sequence (seed the generator). Process r of N trains on rows
  ``[r*B/N, (r+1)*B/N)``; values that are not tensors reach every process unchanged.
- One optimizer step consumes ``grad_accum`` batches (micro-batches); ``TrainConfig.steps``
  counts optimizer steps.
- ``loss_fn(model, batch)`` returns the mean loss over the batch's items/tokens. Gradients are
  averaged over micro-batches and processes, so a step's gradient is that of the global batch's
  mean loss whenever every shard and micro-batch holds the same number of loss terms (fixed-length
  sequences; each share's loss is weighted by its rows, so shares may differ by a row).
  Deviation: with varying counts per row (padding, random masks) it is the mean of
  the shard means, as in most data-parallel trainers.

Checkpoints: ``accelerator.save_state`` into ``checkpoint_dir/step_000100/`` (model weights in
``model.safetensors``; optimizer, scheduler and every process's RNG state beside them, as
accelerate's torch pickles), then ``trainer_state.json`` (step, history, losses), written last and
atomically as the mark of a complete checkpoint. With ``resume=True`` a run continues from the
newest complete checkpoint: it skips the batches already consumed, then restores the saved state,
so an interrupted and an uninterrupted run end with the same weights.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from tqdm.auto import tqdm

from . import distributed

Batch = Mapping[str, Any]
MIXED_PRECISION = ("no", "fp16", "bf16")
STATE_FILE = "trainer_state.json"


@dataclass
class TrainConfig:
    """What the loop does; learning rate and schedule live in the optimizer and scheduler passed in."""

    steps: int  # optimizer steps (each consumes grad_accum batches)
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0  # None: no clipping
    eval_every: int = 0  # 0: evaluate only after the last step (when eval_fn is given)
    log_every: int = 10
    checkpoint_every: int = 0  # 0: no checkpoints
    checkpoint_dir: str | Path | None = None
    keep_checkpoints: int = 2  # the newest ones stay; older ones are deleted
    resume: bool = True  # continue from the newest complete checkpoint in checkpoint_dir (False: it must have none)
    mixed_precision: str = "no"
    device: str = "auto"  # "auto" (the run's device: reproduce.runtime.pick_device), "cpu" or "cuda[:n]"
    desc: str = "train"
    find_unused_parameters: bool = False  # several processes: a model whose loss leaves some parameters unused (FLAVA's rows)
    log_dir: str | Path | None = None  # training curves through accelerate's tracker API (JSON lines; TensorBoard if installed)

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "log_every", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("eval_every", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be an integer >= 0 (0 = off), got {getattr(self, name)!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"TrainConfig.max_grad_norm must be > 0 or None (no clipping), got {self.max_grad_norm!r}")
        if self.checkpoint_every and self.checkpoint_dir is None:
            raise ValueError("TrainConfig.checkpoint_every needs a checkpoint_dir")
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda[:n]', got {self.device!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"TrainConfig.mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")


@dataclass
class TrainResult:
    history: list[dict[str, float]]  # every log_every steps: step, loss (mean since last entry), lr, tokens_per_s, eval metrics
    losses: list[float]  # every step's global-batch loss, from step 1 (resumed runs include the checkpoint's)
    final_loss: float
    wall_time_s: float  # this call only
    tokens_per_s: float  # this call only, global (all processes)
    steps: int
    resumed_from: int = 0  # step of the checkpoint this call continued from (0: fresh start)
    eval: dict[str, float] = field(default_factory=dict)  # the last evaluation
    accelerator: Any = None  # the Accelerator train() made from the config (its device, unwrap_model, free_memory)


def make_accelerator(device: str = "auto", mixed_precision: str = "no", grad_accum: int = 1,
                     find_unused_parameters: bool = False) -> Accelerator:
    """An ``Accelerator`` on ``device`` ("auto": CUDA when present; "cpu"; "cuda").

    accelerate keeps one device and mixed-precision setting per process: asking for another one
    later in the same process (notebook kernel) raises; restart the kernel to change them.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no GPU; use device='auto' or 'cpu'")
    from accelerate.utils import DistributedDataParallelKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    return Accelerator(cpu=device == "cpu", mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       kwargs_handlers=handlers)


def accumulation(batch: int, micro_batch: int = 0, processes: int | None = None) -> tuple[int, int]:
    """``(rows per forward over all processes, micro-batches per optimizer step)`` for a global batch.

    ``micro_batch`` is what one process computes in one forward/backward (what fits one device; 0:
    its whole share). With N processes a forward takes ``micro_batch * N`` rows of the stream, so
    every process trains on a micro-batch of the configured size: ``lm_micro_batch=4`` on 8 GPUs
    with ``lm_batch=8`` is one row per GPU and no accumulation, not 4 rows split over 8 GPUs (half
    of them computing weight-0 dummy rows). One process: ``(micro_batch or batch, batch / micro_batch)``.
    """
    n = processes or distributed.world_size()
    if batch < 1 or micro_batch < 0:
        raise ValueError(f"batch must be >= 1 and micro_batch >= 0, got batch={batch}, micro_batch={micro_batch}")
    if not micro_batch or micro_batch * n >= batch:  # each process's share fits one forward
        return batch, 1
    if batch % (micro_batch * n):
        fits = [m for m in range(1, batch // n + 1) if batch % (m * n) == 0]
        raise ValueError(f"a global batch of {batch} rows does not split into micro-batches of {micro_batch} on {n} "
                         f"process(es); use a micro-batch in {fits}")
    return micro_batch * n, batch // (micro_batch * n)


def shard_bounds(rows: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of process ``index`` of ``count``: contiguous, sizes differ by at most one."""
    base, extra = divmod(rows, count)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def shard(batch: Batch, index: int, count: int, device: torch.device | None = None) -> dict[str, Any]:
    """Process ``index``'s contiguous share (of ``count``) of a global batch's tensors, on ``device``.

    Any batch size splits: the first ``rows % count`` processes take one row more (length-bucketed
    batches have every size). :func:`train` weights each share's loss by its rows, so the gradient
    is that of the global batch; with fewer rows than processes, a process without a row computes
    on row 0 with weight 0 (its backward pass still joins the gradient all-reduce).
    """
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor)}
    if len(sizes) != 1:
        raise ValueError(f"batch tensors disagree on the batch size (dim 0): {sorted(sizes)}")
    (rows,) = sizes
    if rows < 1:
        raise ValueError("a global batch of 0 rows cannot be trained on")
    start, stop = shard_bounds(rows, index, count)
    if start == stop:  # fewer rows than processes: this one computes on row 0 with weight 0 (see train)
        start, stop = 0, 1
    return {k: v[start:stop].to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _rows(batch: Batch) -> int:
    return next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))


class JSONLinesTracker(GeneralTracker):
    """An accelerate tracker that appends every logged entry to ``<logging_dir>/<run_name>.jsonl``
    (always available; TensorBoard is added when installed)."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | Path):
        super().__init__()
        self.path = Path(logging_dir) / f"{run_name}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"config": values}, default=str) + "\n")

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}, default=str) + "\n")


def make_trackers(log_dir: str | Path, run_name: str) -> list[GeneralTracker]:
    """Training-curve trackers under ``log_dir``: JSON lines, and TensorBoard when it is installed."""
    trackers: list[GeneralTracker] = [JSONLinesTracker(run_name, log_dir)]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return trackers
    from accelerate.tracking import TensorBoardTracker

    trackers.append(TensorBoardTracker(run_name, str(log_dir)))
    return trackers


def _token_counter(tokens_in: str | Callable[[Batch], int] | None) -> Callable[[Batch], int]:
    if tokens_in is None:  # count items: the batch size
        return lambda batch: next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
    if isinstance(tokens_in, str):
        return lambda batch: batch[tokens_in].numel()
    return tokens_in


def latest_checkpoint(checkpoint_dir: str | Path | None) -> Path | None:
    """The newest complete checkpoint (one with its ``trainer_state.json``) in ``checkpoint_dir``.

    With several processes, the main process's answer on every one (call it on every process): on a
    shared file system another process may not yet see the newest checkpoint, and processes that
    resumed from different steps would train on different batches.
    """
    def newest() -> Path | None:
        if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
            return None
        done = sorted(p for p in Path(checkpoint_dir).glob("step_*") if (p / STATE_FILE).is_file())
        return done[-1] if done else None

    return distributed.broadcast(newest())


def _save_checkpoint(accelerator: Accelerator, cfg: TrainConfig, state: dict) -> None:
    path = Path(cfg.checkpoint_dir) / f"step_{state['step']:06d}"
    accelerator.save_state(str(path))  # every process writes its RNG state; the main one the rest
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp = path / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path / STATE_FILE)  # atomic: a checkpoint without this file is ignored
        complete = sorted(p for p in Path(cfg.checkpoint_dir).glob("step_*") if (p / STATE_FILE).is_file())
        for old in complete[:-cfg.keep_checkpoints]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Batch],
          loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor], cfg: TrainConfig,
          scheduler: Any = None, eval_fn: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          tokens_in: str | Callable[[Batch], int] | None = None) -> TrainResult:
    """Train ``model`` for ``cfg.steps`` optimizer steps on ``batches`` (see the module docstring).

    Every training setting is read from ``cfg`` alone (device, mixed precision, accumulation, the
    data-parallel wrapper's unused parameters): the ``Accelerator`` is made here and returned in
    :attr:`TrainResult.accelerator`. ``scheduler`` steps once per optimizer step.
    ``eval_fn(model) -> {metric: value}`` runs every ``cfg.eval_every`` steps and after the last one,
    in eval mode without gradients, once on the main process. ``tokens_in`` counts a global batch's
    tokens for tokens/s: a batch key (its ``numel``), a function, or None (the batch size). The model
    is trained in place.
    """
    from .runtime import pick_device

    device = pick_device(cfg.device)
    if distributed.world_size() > 1 and device.type != pick_device("auto").type:
        raise ValueError(f"TrainConfig.device={cfg.device!r}, but this run's processes share {pick_device('auto')}: "
                         "several processes train on the run's device (device='auto')")
    accelerator = make_accelerator(device.type, mixed_precision=cfg.mixed_precision, grad_accum=cfg.grad_accum,
                                   find_unused_parameters=cfg.find_unused_parameters)
    model, optimizer = accelerator.prepare(model, optimizer)
    if scheduler is not None:
        accelerator.register_for_checkpointing(scheduler)  # stepped by hand below: once per optimizer step
    count_tokens = _token_counter(tokens_in)
    batches = iter(batches)
    history: list[dict[str, float]] = []
    losses: list[float] = []
    start, last_eval = 0, {}

    checkpoint = latest_checkpoint(cfg.checkpoint_dir)
    if checkpoint is not None and not cfg.resume:
        raise ValueError(f"{cfg.checkpoint_dir} holds another run's checkpoints ({checkpoint.name}); pass resume=True "
                         "to continue that run, or an empty checkpoint_dir to start afresh")
    if checkpoint is not None:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        if state["step"] > cfg.steps:
            raise ValueError(f"the checkpoint {checkpoint} is past steps={cfg.steps}; raise steps, or pass resume=False "
                             "or another checkpoint_dir to start afresh")
        start, history, losses, last_eval = state["step"], state["history"], state["losses"], state["eval"]
        for _ in itertools.islice(batches, start * cfg.grad_accum):
            pass  # skip consumed batches first; then load_state restores the RNG to where the run stopped
        accelerator.load_state(str(checkpoint))

    trackers = make_trackers(cfg.log_dir, cfg.desc.replace(" ", "_").replace("/", "_")) \
        if cfg.log_dir is not None and accelerator.is_main_process else []
    model.train()
    tokens, logged_tokens, window = 0, 0, []
    begin = last_log = time.perf_counter()
    progress = tqdm(total=cfg.steps, initial=start, desc=cfg.desc, disable=not accelerator.is_local_main_process)
    for step in range(start + 1, cfg.steps + 1):
        micro_losses = []
        for micro in range(cfg.grad_accum):
            try:
                batch = next(batches)
            except StopIteration:
                raise ValueError(f"batches ran out at step {step} of {cfg.steps} (micro-batch {micro + 1} of {cfg.grad_accum})") from None
            tokens += count_tokens(batch)
            local = shard(batch, accelerator.process_index, accelerator.num_processes, accelerator.device)
            # a share's mean loss, weighted by its rows: the processes' average is the global batch's mean
            first, last = shard_bounds(_rows(batch), accelerator.process_index, accelerator.num_processes)
            weight = (last - first) * accelerator.num_processes / _rows(batch) if accelerator.num_processes > 1 else 1.0
            with accelerator.accumulate(model):  # no gradient all-reduce until the last micro-batch
                loss = loss_fn(model, local) * weight
                accelerator.backward(loss)  # scales by 1/grad_accum
                if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()  # a no-op until the last micro-batch
                optimizer.zero_grad()
            micro_losses.append(loss.detach())
        if not accelerator.sync_gradients:
            raise RuntimeError("the accelerator's accumulation counter is out of step with grad_accum; pass a fresh accelerator")
        if scheduler is not None and not optimizer.step_was_skipped:
            scheduler.step()
        step_loss = accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean").item()  # global batch
        losses.append(step_loss)
        window.append(step_loss)
        progress.update(1)

        is_last = step == cfg.steps
        evaluate = eval_fn is not None and (is_last or (cfg.eval_every and step % cfg.eval_every == 0))
        if evaluate:  # once, on the main process; every process gets its numbers
            model.eval()
            with torch.no_grad():
                last_eval = distributed.on_main(
                    lambda: {k: float(v) for k, v in eval_fn(accelerator.unwrap_model(model)).items()})
            model.train()
        if evaluate or is_last or step % cfg.log_every == 0:
            now = time.perf_counter()
            rate = (tokens - logged_tokens) / max(now - last_log, 1e-9)
            entry = {"step": step, "loss": sum(window) / len(window), "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": rate}
            metrics = {(f"eval_{k}" if k in entry else k): v for k, v in last_eval.items()} if evaluate else {}
            history.append({**entry, **metrics})  # an eval metric named like a training entry gets an eval_ prefix
            for tracker in trackers:
                tracker.log({**entry, **metrics}, step=step)
            progress.set_postfix({"loss": f"{entry['loss']:.4f}", "tok/s": f"{rate:,.0f}", **{k: f"{v:.4g}" for k, v in metrics.items()}})
            window, logged_tokens, last_log = [], tokens, now
        if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or is_last):
            _save_checkpoint(accelerator, cfg, {"step": step, "history": history, "losses": losses, "eval": last_eval})
    progress.close()
    for tracker in trackers:
        tracker.finish()

    wall = time.perf_counter() - begin
    return TrainResult(history=history, losses=losses, final_loss=losses[-1] if losses else float("nan"),
                       wall_time_s=wall, tokens_per_s=tokens / wall if wall > 0 else 0.0, steps=cfg.steps,
                       resumed_from=start, eval=last_eval, accelerator=accelerator)
