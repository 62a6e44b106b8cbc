"""The RetNet notebook's small language models (arXiv:2307.08621, Tables 5 and 6): train one, sweep the
learning rate of every row on a seed of its own, train every row at its chosen rate, tabulate.

- :class:`LMBudget` (what every run gets) and :class:`LMRunOptions` (how it trains: memory,
  precision, checkpoints); :func:`train_language_model` trains one row with the shared accelerate
  loop (:mod:`reproduce.train`) and scores it on validation windows (:func:`window_nll`: per window
  and per position inside the windows);
- :func:`train_language_models`: the lr sweep of each row, then every (row, seed), as jobs of the shared worker
  pool (:class:`reproduce.pool.Pool`, :class:`LMRun`), each kept through the :class:`Rows` protocol;
- :func:`lm_table`: one row per variant, with its interval.

The text (:class:`Corpus`, :func:`batches`) comes from :mod:`reproduce.retnet.data`.

Deviations from the paper (scale): models of a few hundred thousand parameters trained for 1000
steps on five public-domain novels (the packaged corpus's training split) instead of 200M-6.7B
models on 100B tokens; CPU instead of A100 GPUs; one short lr sweep per row (the paper gives its
recipe, not a sweep).
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reproduce.pool import Pool
from reproduce.rundir import MemoryRows, Rows

from .baselines import FAMILY, LABELS, VARIANTS, LMShape, build_model
from .data import Corpus, batches


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy (both model families shift the labels inside)."""
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


@dataclass(frozen=True)
class LMBudget:
    """What every LM run gets: steps x batch x length tokens, warm-up, and the validation windows.

    Validation windows are the non-overlapping ``length``-token windows of the validation text:
    the first ``eval_windows`` give the reported perplexity, the next ``select_windows`` (disjoint)
    choose the learning rate, so the reported number is not the one the choice was made on.
    """

    steps: int
    batch: int
    length: int
    warmup: int
    eval_windows: int
    select_windows: int

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "length", "eval_windows", "select_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"LMBudget.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"LMBudget.warmup must be in [0, steps={self.steps}], got {self.warmup}")

    def windows_needed(self) -> int:
        return self.eval_windows + self.select_windows


def window_nll(model, ids: np.ndarray, length: int, first: int, count: int, batch: int = 16,
               autocast: torch.dtype | None = None, positions: list[float] | None = None) -> list[float]:
    """Mean next-token NLL (nats) of each of ``count`` non-overlapping windows, from window ``first``.

    Window w covers ``ids[w * length:(w + 1) * length]`` and scores its ``length - 1`` next tokens.
    Runs on the model's device (``autocast``: the dtype of ``torch.autocast`` there, None = fp32);
    the loss is taken in fp32. ``positions`` (a list, filled here): the mean NLL at each position
    over the windows, entry i for the token at position i + 1, predicted from i + 1 tokens of context
    (what a mixer does with its context: the no-mixer control's curve is flat).
    """
    if first < 0 or count < 1:
        raise ValueError(f"need first >= 0 and count >= 1, got first={first}, count={count}")
    available = (ids.size - 1) // length
    if first + count > available:
        raise ValueError(f"validation text has {ids.size} tokens: {available} windows of {length}, "
                         f"fewer than the {first + count} asked for (lower lm_eval_windows/lm_select_windows)")
    device = next(model.parameters()).device
    rows = torch.from_numpy(ids[first * length:(first + count) * length].reshape(count, length)).long()  # (N, T)
    out: list[float] = []
    position_sum = torch.zeros(length - 1, dtype=torch.float64)  # (T-1,)
    model.eval()
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.no_grad(), amp:
        for i in range(0, count, batch):
            chunk = rows[i:i + batch].to(device)  # (b, T)
            logits = model(input_ids=chunk).logits[:, :-1].float()  # (b, T-1, vocab)
            nll = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")  # (b, T-1)
            out += nll.mean(-1).tolist()
            position_sum += nll.sum(0).double().cpu()
    if positions is not None:
        positions[:] = (position_sum / count).tolist()
    return out


def perplexity(model, ids: np.ndarray, length: int, windows: int, batch: int = 8) -> float:
    """exp(mean next-token loss) over the first ``windows`` non-overlapping windows of ``ids``."""
    return math.exp(statistics.fmean(window_nll(model, ids, length, 0, windows, batch)))


@dataclass(frozen=True)
class LMRunOptions:
    """How (not what) an LM run trains: memory, precision, checkpoints. The defaults are the cpu
    profile's (one batch per step, fp32 on CPU, no checkpoints), which give the same numbers.

    - ``micro_batch``: windows per forward/backward on each process (0: its whole share); the
      micro-batches are accumulated into each optimizer step (the same windows: the same gradient;
      ``reproduce.train.accumulation``);
    - ``checkpointing``: activation checkpointing per block (each block's activations are recomputed
      in the backward pass; only the block inputs are kept);
    - ``precision``: the ``precision`` parameter (``auto``: bf16 autocast on a GPU, fp32 on the CPU);
    - ``checkpoint_every``: steps between training checkpoints (0: none) in the row's checkpoint folder;
    - ``log_dir``: training curves (accelerate trackers); ``eval_batch``: windows per validation forward.
    """

    micro_batch: int = 0
    checkpointing: bool = False
    precision: str = "auto"
    checkpoint_every: int = 0
    log_dir: str | None = None
    eval_batch: int = 16

    @classmethod
    def from_params(cls, params, log_dir: str | Path | None = None) -> LMRunOptions:
        """The run's parameters (``lm_micro_batch``, ``lm_checkpointing``, ``precision``, ``lm_checkpoint_every``)."""
        return cls(micro_batch=params.lm_micro_batch, checkpointing=params.lm_checkpointing, precision=params.precision,
                   checkpoint_every=params.lm_checkpoint_every, log_dir=str(log_dir) if log_dir is not None else None,
                   eval_batch=params.lm_micro_batch or 16)


def enable_checkpointing(model) -> None:
    """Activation checkpointing per block, for the Transformer and RetNet rows (transformers' own mechanism)."""
    if not hasattr(model, "gradient_checkpointing_enable"):
        raise ValueError(f"{type(model).__name__} has no activation checkpointing; set lm_checkpointing=False or "
                         "leave this row out of variants")
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def train_language_model(train_ids: np.ndarray, valid_ids: np.ndarray, shape: LMShape, variant: str, seed: int,
                         lr: float, budget: LMBudget, device: str = "auto", options: LMRunOptions = LMRunOptions(),
                         checkpoint_dir: str | None = None) -> dict:
    """Train one Table 5/6 row (or the control) with the shared accelerate loop.

    Same budget for every row: ``steps`` x ``batch`` x ``length`` tokens, AdamW (beta2 0.98, weight
    decay 0.01, as in §3.1's setup), linear warm-up over ``budget.warmup`` steps, then linear decay
    to 0. Returns the curve, the per-window validation NLLs and perplexity, the mean NLL at each
    position of the validation windows (``position_nll``), and the selection windows' perplexity
    (evaluated once, on the main process, on the model's device).
    ``checkpoint_dir``: where this run checkpoints (every ``options.checkpoint_every`` steps) and
    resumes from.
    """
    from reproduce import distributed, runtime
    from reproduce import train as trainer

    from .model import count_parameters

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    micro, accumulate = trainer.accumulation(budget.batch, options.micro_batch)  # rows per forward over all processes
    where = runtime.pick_device(device)
    mixed = runtime.mixed_precision(options.precision, where)
    model = build_model(shape, variant, seed)
    if options.checkpointing:
        enable_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm, steps = budget.warmup, budget.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(1, warm), max(0.0, (steps - s) / max(1, steps - warm))))
    every = options.checkpoint_every if checkpoint_dir else 0
    cfg = trainer.TrainConfig(steps=steps, grad_accum=accumulate, log_every=max(1, steps // 50),
                              desc=f"{variant} seed {seed} lr {lr:g}", mixed_precision=mixed,
                              checkpoint_every=every, checkpoint_dir=checkpoint_dir if every else None,
                              keep_checkpoints=1, log_dir=options.log_dir, device=str(where))
    result = trainer.train(model, optimizer, batches(train_ids, budget.batch, budget.length, seed, micro), lm_loss, cfg,
                           scheduler=scheduler, tokens_in="input_ids")
    optimizer.state.clear()  # AdamW's state (2 x the weights): evaluation does not need it; the scheduler and
    result.accelerator.free_memory(optimizer, scheduler)  # the accelerator's checkpoint list still hold the optimizer
    del optimizer, scheduler
    amp = runtime.autocast_dtype(options.precision, where)

    def evaluate() -> tuple[list[float], list[float], list[float]]:
        positions: list[float] = []
        return (window_nll(model, valid_ids, budget.length, 0, budget.eval_windows, options.eval_batch, amp, positions),
                window_nll(model, valid_ids, budget.length, budget.eval_windows, budget.select_windows,
                           options.eval_batch, amp), positions)

    nll, select, positions = distributed.on_main(evaluate)
    return {"variant": variant, "family": FAMILY[variant], "seed": seed, "lr": lr, "params": count_parameters(model),
            "trainable_params": count_parameters_trainable(model),
            "valid_ppl": math.exp(statistics.fmean(nll)), "select_ppl": math.exp(statistics.fmean(select)),
            "window_nll": [round(x, 5) for x in nll], "position_nll": [round(x, 5) for x in positions],
            "final_train_loss": result.final_loss,
            "tokens": steps * budget.batch * budget.length,
            "curve": [{"step": h["step"], "loss": h["loss"]} for h in result.history]}


def count_parameters_trainable(model: nn.Module) -> int:
    """Unique parameters that the optimizer updates (the control's frozen zero projections left out)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


def choose_lr(sweep: Sequence[dict]) -> dict[str, float]:
    """Per row (``variant``): the swept lr whose run has the lowest perplexity on the selection windows
    (a run that diverged, with a non-finite perplexity, never wins)."""
    def score(r: dict) -> float:
        return r["select_ppl"] if r["select_ppl"] is not None and math.isfinite(r["select_ppl"]) else math.inf

    best: dict[str, dict] = {}
    for r in sweep:
        if r["variant"] not in best or score(r) < score(best[r["variant"]]):
            best[r["variant"]] = r
    return {variant: r["lr"] for variant, r in best.items()}


def run_key(rows: Rows, variant: str, seed: int, lr: float) -> str:
    """The row key of one (variant, seed, lr) training."""
    return rows.key("lm", variant, seed, f"{lr:g}")


@dataclass(frozen=True)
class LMRun:
    """One (variant, seed, lr) training: a job of :class:`reproduce.pool.Pool`. ``shared`` is the pair
    of token arrays (training, validation), handed to each worker once."""

    key: str
    shape: LMShape
    variant: str
    seed: int
    lr: float
    budget: LMBudget
    device: str
    options: LMRunOptions

    def run(self, shared: tuple[np.ndarray, np.ndarray], checkpoint_dir: str | None) -> dict:
        train_ids, valid_ids = shared
        return train_language_model(train_ids, valid_ids, self.shape, self.variant, self.seed, self.lr, self.budget,
                                    self.device, self.options, checkpoint_dir)


def train_language_models(corpus: Corpus, shape: LMShape, variants: Sequence[str], seeds: Sequence[int],
                          lrs: dict[str, Sequence[float]], budget: LMBudget, workers: int = 1,
                          device: str = "auto", options: LMRunOptions = LMRunOptions(),
                          rows: Rows = MemoryRows(), sweep_seed: int | None = None) -> dict:
    """Sweep the lr of every row on ``sweep_seed``, then train every (variant, seed) at its row's chosen lr.

    Each row sweeps the grid ``lrs[FAMILY[row]]`` (Transformer, RetNet, Linear Transformer, and one
    grid shared by the Table 6 rows and the control, each row choosing on its own) on ``sweep_seed``,
    a seed none of ``seeds`` is (design.md: calibration on seeds disjoint from the record's); the
    lowest selection-window perplexity chooses (:func:`choose_lr`, windows disjoint from the reported
    ones). A grid of one rate needs no sweep: the row trains at it. Every row sees the same windows
    in the same order for a given seed. ``workers`` > 1 trains in that many spawned single-threaded
    processes of :class:`reproduce.pool.Pool` (CPU; never under several processes: then in this
    one), their output in ``<options.log_dir>/workers.log``; a row's reported runs are submitted as
    soon as its sweep is done. Returns ``{"sweep", "chosen_lr", "runs"}`` (``chosen_lr`` per row;
    runs in (variant, seed) order).

    ``rows`` (:class:`reproduce.rundir.Rows`, e.g. the run's :class:`~reproduce.rundir.RunDir`): each
    (variant, seed, lr) training is one of its rows (:func:`run_key`), checkpointing into the row's
    checkpoint folder; a rerun reads the finished rows back and continues an unfinished one from its
    last checkpoint. The default keeps nothing.
    """
    from reproduce import distributed

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    grids = list(dict.fromkeys(FAMILY[v] for v in variants))
    if not seeds or any(not lrs.get(g) for g in grids):
        raise ValueError(f"train_language_models needs at least one seed and one learning rate per grid "
                         f"({', '.join(grids)}); got seeds {list(seeds)}, lrs {dict(lrs)}")
    swept = [v for v in variants if len(lrs[FAMILY[v]]) > 1]
    if swept and (sweep_seed is None or sweep_seed in seeds):
        raise ValueError(f"the lr sweep of {swept} needs a sweep_seed that is not one of seeds {list(seeds)} "
                         f"(got {sweep_seed}): the rate is chosen on a seed the record does not report")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    available = (corpus.valid_ids.size - 1) // budget.length
    if budget.windows_needed() > available:
        raise ValueError(f"validation text has {available} windows of {budget.length} tokens, fewer than "
                         f"lm_eval_windows + lm_select_windows = {budget.windows_needed()}")
    if distributed.world_size() > 1:
        workers = 1  # every process trains its share of each batch in process
    where = device if workers == 1 else "cpu"  # workers: single-threaded CPU processes

    def job(variant: str, seed: int, lr: float) -> LMRun:
        return LMRun(run_key(rows, variant, seed, lr), shape, variant, seed, lr, budget, where, options)

    sweep = {v: [job(v, sweep_seed, lr) for lr in lrs[FAMILY[v]]] for v in swept}
    chosen: dict[str, float] = {v: lrs[FAMILY[v]][0] for v in variants if v not in sweep}  # one rate: no choice
    log_path = Path(options.log_dir) / "workers.log" if options.log_dir else None
    with Pool(rows, workers, shared=(corpus.train_ids, corpus.valid_ids), log_path=log_path,
              desc="language models") as pool:
        for v in variants:  # rows without a sweep start at once; the others' sweeps first
            if v in sweep:
                for j in sweep[v]:
                    pool.submit(j)
            else:
                for s in seeds:
                    pool.submit(job(v, s, chosen[v]))
        left = {v: len(jobs) for v, jobs in sweep.items()}
        for done, _ in pool.as_completed():
            v = done.variant
            if v in sweep and done in sweep[v]:
                left[v] -= 1
                if not left[v]:  # this row's sweep is complete: choose its lr, start its reported runs
                    chosen[v] = choose_lr([pool.results[j.key] for j in sweep[v]])[v]
                    for s in seeds:
                        pool.submit(job(v, s, chosen[v]))
        results = pool.results
    return {"sweep": [results[j.key] for v in swept for j in sweep[v]], "chosen_lr": {v: chosen[v] for v in variants},
            "runs": [results[run_key(rows, v, s, chosen[v])] for v in variants for s in seeds]}


def lm_table(runs: list[dict]) -> list[dict]:
    """One row per variant: mean validation PPL over seeds with its t interval (unpaired: a row on
    its own), min and max, the lr it trained at (the paper's numbers: ``sections.PAPER``)."""
    from reproduce import claims

    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        ppl = [r["valid_ppl"] for r in mine]
        mean = claims.t_interval(ppl)
        rows.append({"variant": variant, "label": LABELS[variant], "lr": mine[0]["lr"],
                     "ppl_mean": mean.value, "ppl_low": mean.low, "ppl_high": mean.high,
                     "ppl_min": min(ppl), "ppl_max": max(ppl), "seeds": len(ppl), "params": mine[0]["params"]})
    return rows
