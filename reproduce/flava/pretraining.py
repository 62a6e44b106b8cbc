"""FLAVA pretraining (§3.2, Table A.2): round-robin updates of one Table 3 row through the shared loop.

* ``FlavaTrainConfig``: ``reproduce.train.TrainConfig`` plus the paper's optimisation (AdamW
  0.9/0.999, weight decay 0.1, warmup then cosine) and the batch size.
* ``pretrain``: one row's objectives on batches of ``data.BatchSampler`` (one source per update),
  through ``reproduce.train.train`` (accelerate: one code path for CPU, one or several GPUs).
* The ablation's bookkeeping: how many updates a row gets (``row_steps``), the order rows train in
  (``training_order``: row 6 after its source rows) and row 6's start from their trained encoders
  (``build_row_model``).

Everything here returns plain data; nothing is plotted or claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch
from torch import Tensor

from reproduce import train
from reproduce.flava.ablation import AblationRow, initialise_from
from reproduce.flava.data import BatchSampler
from reproduce.flava.model import FlavaSizes, build_model
from reproduce.flava.objectives import ITM_NEGATIVES, ITM_PAIRS, ImageBatch, Objectives, PairedBatch, TextBatch, losses

LOSS_NAMES = ("mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text")


@dataclass
class FlavaTrainConfig(train.TrainConfig):
    """The shared loop's settings plus FLAVA's optimisation (§A, Table A.2)."""

    batch_size: int = 8192  # paper: 8,192 (one optimizer update)
    micro_batch: int = 0  # rows per forward/backward on each process (0: its share of batch_size); sets grad_accum
    lr: float = 1e-3
    warmup: int = 10_000
    weight_decay: float = 0.1
    itm_negatives: str = "sampled"  # "mined": ALBEF's hard negatives from the GC similarities (objectives.paired_losses)
    seed: int = 0  # the mined negatives' draws
    itm_pair: str = "masked"  # "unmasked": ITM classifies the unmasked pair (objectives.paired_losses; issue #28)
    multimodal_lr: float = 0.0  # peak lr of the fusion parts (MULTIMODAL_PARTS); 0 = lr, one lr for all (paper)
    forward_rows: int = field(init=False, default=0)  # rows of one forward over all processes (set from micro_batch)

    def __post_init__(self) -> None:
        if self.micro_batch:
            if self.micro_batch < 2 or self.batch_size % self.micro_batch:
                raise ValueError(f"micro_batch must be >= 2 and divide batch_size {self.batch_size}, got {self.micro_batch}")
        # per process: with N processes a forward takes micro_batch x N rows (train.accumulation)
        self.forward_rows, self.grad_accum = train.accumulation(self.batch_size, self.micro_batch)
        super().__post_init__()
        if self.batch_size < 2:
            raise ValueError(f"batch_size >= 2 required (in-batch negatives), got {self.batch_size}")
        if not 0 <= self.warmup <= self.steps * 10 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"bad optimisation settings: lr={self.lr}, warmup={self.warmup}, wd={self.weight_decay}")
        if self.itm_negatives not in ITM_NEGATIVES:
            raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {self.itm_negatives!r}")
        if self.itm_pair not in ITM_PAIRS:
            raise ValueError(f"itm_pair must be one of {ITM_PAIRS}, got {self.itm_pair!r}")
        if self.multimodal_lr < 0:
            raise ValueError(f"multimodal_lr must be >= 0 (0 = lr), got {self.multimodal_lr}")


class FlavaPretrainer(torch.nn.Module):
    """The model plus a row's objectives as one module whose forward is the loss of one batch.

    ``reproduce.train`` hands it the batch dict (a process's shard); going through ``forward`` keeps
    data-parallel wrappers in the path. ``last`` keeps the latest value of each loss for the history.
    """

    BATCHES = {"paired": PairedBatch, "images": ImageBatch, "text": TextBatch}

    def __init__(self, model, objectives: Objectives, itm_negatives: str = "sampled", seed: int = 0,
                 itm_pair: str = "masked"):
        super().__init__()
        self.model, self.objectives, self.itm_negatives, self.itm_pair = model, objectives, itm_negatives, itm_pair
        self.generator = torch.Generator().manual_seed(seed)  # the mined negatives' draws (CPU)
        self.last: dict[str, float] = {}

    def forward(self, source: str, **tensors: Tensor) -> Tensor:
        terms = losses(self.model, self.BATCHES[source](**tensors), self.objectives,
                       itm_negatives=self.itm_negatives, generator=self.generator, itm_pair=self.itm_pair)
        self.last = {name: float(value.detach()) for name, value in terms.items()}
        return terms.total()


def batch_stream(sampler: BatchSampler, row: AblationRow, micro_batch: int = 0):
    """Endless batches for ``reproduce.train``: dicts of tensors plus the source's name.

    Each update draws one full batch of one source (§3.2); with ``micro_batch`` (the rows of one
    forward over all processes, ``FlavaTrainConfig.forward_rows``) it is yielded as consecutive
    micro-batches, which ``train`` splits over the processes and accumulates into one update
    (``TrainConfig.grad_accum``). Deviation: GC's in-batch negatives and the mined ITM negatives then
    come from the micro-batch (gathered over the processes), not the whole batch (gradient
    accumulation does not enlarge them).
    """
    while True:
        source, batch = sampler.draw(row)
        tensors = {f.name: getattr(batch, f.name) for f in fields(batch)}
        rows = next(iter(tensors.values())).shape[0]
        step = micro_batch or rows
        for start in range(0, rows, step):
            yield {"source": source, **{k: v[start : start + step] for k, v in tensors.items()}}


# The fusion parts: the multimodal encoder, the projections into it and the heads on its outputs.
MULTIMODAL_PARTS = ("flava.multimodal_model", "flava.image_to_mm_projection", "flava.text_to_mm_projection",
                    "itm_head", "mmm_image_head", "mmm_text_head")


def optimizer(model, cfg: FlavaTrainConfig) -> torch.optim.AdamW:
    """AdamW (Table A.2), no weight decay on biases, norms and embeddings.

    ``cfg.multimodal_lr`` (a deviation where it is not 0, issue #28): the fusion parts
    (``MULTIMODAL_PARTS``) get their own peak lr; the schedule scales every group alike. Measured in
    calibration/flava/itm_ladder.md: at the paper's 1e-3 ITM collapses to one class at our scale."""
    groups: dict[tuple[float, float], list] = {}
    for n, p in model.named_parameters():
        decay = cfg.weight_decay if p.ndim >= 2 and "embeddings" not in n else 0.0
        fusion = cfg.multimodal_lr and any(n == part or n.startswith(part + ".") for part in MULTIMODAL_PARTS)
        groups.setdefault((cfg.multimodal_lr if fusion else cfg.lr, decay), []).append(p)
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()],
                             lr=cfg.lr, betas=(0.9, 0.999))


HISTORY_FILE = "flava_history_{step:06d}.json"  # per-loss history and the mined negatives' RNG at a checkpoint


def pretrain(model, row: AblationRow, sampler: BatchSampler, cfg: FlavaTrainConfig, device: str = "auto"
             ) -> dict[str, list[float]]:
    """Round-robin pretraining of one Table 3 row through the shared accelerate loop (``reproduce.train``).

    Returns each loss per update (mean over its micro-batches; NaN where the update's source does not
    carry it) and ``total``. With ``cfg.checkpoint_every`` and ``cfg.checkpoint_dir`` a rerun continues
    from the newest checkpoint there: the weights, optimizer and RNGs come back through
    ``reproduce.train``; the per-loss history and the mined negatives' generator from ``HISTORY_FILE``
    written beside it, so an interrupted run returns what an uninterrupted one does.
    """
    import json
    from pathlib import Path

    from transformers import get_cosine_schedule_with_warmup

    from reproduce import distributed

    opt = optimizer(model, cfg)
    sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup, cfg.steps // 2), cfg.steps)
    trainer = FlavaPretrainer(model, row.objectives, cfg.itm_negatives, cfg.seed, cfg.itm_pair)
    history: dict[str, list[float]] = {n: [] for n in (*LOSS_NAMES, "total")}
    checkpoint = train.latest_checkpoint(cfg.checkpoint_dir) if cfg.resume else None
    if checkpoint is not None:  # resume: the history up to the checkpoint and the generator's state there
        step = json.loads((checkpoint / train.STATE_FILE).read_text())["step"]
        saved = json.loads((Path(cfg.checkpoint_dir) / HISTORY_FILE.format(step=step)).read_text())
        history = saved["history"]
        trainer.generator.set_state(torch.tensor(saved["generator"], dtype=torch.uint8))
    micro: list[tuple[dict[str, float], float]] = []

    def loss_fn(module, batch):
        loss = module(**batch)
        inner = getattr(module, "module", module)  # unwrapped under data parallel
        micro.append((dict(inner.last), float(loss.detach())))
        if len(micro) == cfg.grad_accum:  # the update's last micro-batch: one history entry per update
            for n in LOSS_NAMES:
                got = [m[n] for m, _ in micro if n in m]
                history[n].append(sum(got) / len(got) if got else math.nan)
            history["total"].append(sum(t for _, t in micro) / len(micro))
            micro.clear()
            step = len(history["total"])
            if cfg.checkpoint_every and (step % cfg.checkpoint_every == 0 or step == cfg.steps) and distributed.is_main():
                path = Path(cfg.checkpoint_dir) / HISTORY_FILE.format(step=step)  # before train saves the checkpoint
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"history": history, "generator": inner.generator.get_state().tolist()}))
                tmp.replace(path)
        return loss

    # the data-parallel wrapper must allow unused parameters: a Table 3 row trains only its objectives'
    # parts (MIM: the image encoder), and an update of one source leaves the other sources' heads
    # without gradients (DDP would refuse the next update)
    loop = replace(cfg, log_every=max(1, cfg.steps // 10), desc=f"pretrain {row.name} seed {cfg.seed}", device=device,
                   find_unused_parameters=True)
    train.train(trainer, opt, batch_stream(sampler, row, cfg.forward_rows), loss_fn, loop, scheduler=sched)
    model.eval()
    return history


def loss_windows(values: list[float], n: int = 20) -> list[float]:
    """Mean of each of ``n`` equal windows, skipping NaN (steps whose source lacks the loss)."""
    arr = np.asarray(values, dtype=np.float64)
    out = []
    for chunk in np.array_split(arr, min(n, len(arr))):
        ok = chunk[~np.isnan(chunk)]
        out.append(float(ok.mean()) if len(ok) else math.nan)
    return out


# ---------------------------------------------------------------------------------------------------
# The ablation's rows: budget, order, row 6's initialisation
# ---------------------------------------------------------------------------------------------------
def row_steps(row: AblationRow, steps: int) -> int:
    """Updates of a row: ``steps`` draws of its main source (§4: "PMD sampled for 150K iterations in
    total (all ablations)"), so full FLAVA adds its unimodal batches on top: steps / p_paired."""
    p = row.sources.get("paired", 0.0)
    return steps if p in (0.0, 1.0) else round(steps / p)


def training_order(rows: dict[str, AblationRow]) -> list[str]:
    """Row names in the order they must train: a row after every row it initialises from."""
    order: list[str] = []
    pending = dict(rows)
    while pending:
        ready = [n for n, r in pending.items() if set(r.init.values()) <= set(order)]
        if not ready:
            raise ValueError(f"rows {sorted(pending)} initialise from rows that are missing or form a cycle")
        order += ready
        for n in ready:
            del pending[n]
    return order


def build_row_model(sizes: FlavaSizes, row: AblationRow, seed: int, trained: dict[tuple[str, str, int], dict]):
    """A fresh model for ``row`` and ``seed``; for row 6 its image and text parts are loaded from the
    trained rows named in ``row.init`` (``trained``: (row, part, seed) -> ``ablation.encoder_state``)."""
    model = build_model(sizes, seed)
    if row.init:
        missing = [(src, part) for part, src in row.init.items() if (src, part, seed) not in trained]
        if missing:
            raise ValueError(f"row {row.name!r} (seed {seed}) needs the trained parts {missing}; train those rows first")
        initialise_from(model, {part: trained[(src, part, seed)] for part, src in row.init.items()})
    return model
