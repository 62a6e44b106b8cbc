"""Training and evaluation runs of the Table 2 recipe (Table 3's runs use them: :mod:`.variations`).

Recipe (§5): Adam(β1 0.9, β2 0.98, ε 1e-9) with the eq. (3) schedule, label smoothing ε_ls,
residual dropout P_drop, batches of sentence pairs grouped by approximate length with a token
budget per batch (§5.1, :mod:`.data`), checkpoints every ``checkpoint_every`` steps; inference
(§6.1) with beam 4, α 0.6, max length input + 50, and the average of the last 5 checkpoints. BLEU
with sacrebleu on detokenised text; dev perplexity per wordpiece without label smoothing (Table 3's PPL).

Training runs through the shared accelerate loop, :func:`reproduce.train.train`.
"""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from reproduce import distributed, paths, train
from reproduce.data.de_en import Pair

from .data import BOS_ID, EOS_ID, PAD_ID, EncodedPairs, TranslationData, fixed_batches, token_batches
from .decoding import average_checkpoints, beam_search, greedy_decode
from .model import Transformer, TransformerConfig, label_smoothed_loss, noam_lr

# ------------------------------------------------------------------------------------------------
# Training (§5) through the shared accelerate loop
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """§5.2-5.4 hyper-parameters; defaults are the paper's except where the scale forces a change."""

    steps: int
    batch_tokens: int  # paper: ~25,000 source + 25,000 target tokens per batch
    warmup: int = 4000  # eq. (3)
    lr_scale: float = 1.0  # multiplies eq. (3); 1.0 = the paper
    checkpoint_every: int = 0  # paper: every 10 minutes; 0 = only the last
    average_last: int = 5  # §6.1: base models average the last 5 checkpoints
    seed: int = 0
    grad_accum: int = 1  # micro-batches of batch_tokens / grad_accum tokens per step (same batch, less memory)
    mixed_precision: str = "no"  # "bf16" on a GPU (reproduce.runtime.mixed_precision)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_tokens", "warmup", "average_last", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"Recipe.{name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 0 or not self.lr_scale > 0:
            raise ValueError(f"Recipe: checkpoint_every must be >= 0 and lr_scale > 0, got {self.checkpoint_every}, {self.lr_scale}")


@dataclass
class TrainedModel:
    cfg: TransformerConfig
    recipe: Recipe
    model: Transformer  # the last checkpoint
    checkpoints: list[dict[str, Tensor]]  # the last ``average_last`` checkpoints, oldest first
    losses: list[float]
    wall_time_s: float
    tokens_per_s: float
    lr: list[float] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)  # {"step", "dev_ppl"} every eval_every steps
    dev_nll: dict[int, list[float]] = field(default_factory=dict)  # step -> per-sentence dev NLL (evaluated steps)

    def to(self, device) -> TrainedModel:
        """This run with its model and kept checkpoints on ``device`` (in place)."""
        self.model.to(device)
        self.checkpoints = [{k: v.to(device) for k, v in c.items()} for c in self.checkpoints]
        return self

    def averaged(self) -> Transformer:
        """A copy of the model with the mean of the kept checkpoints' weights (§6.1)."""
        model = Transformer(self.cfg).to(next(self.model.parameters()).device)
        model.load_state_dict(average_checkpoints(self.checkpoints))
        return model.eval()


def _loss_fn(epsilon: float):
    def loss_fn(model: Transformer, batch: dict[str, Tensor]) -> Tensor:
        tgt = batch["tgt"]
        logits = model(batch["src"], tgt[:, :-1])  # teacher forcing: predict tgt[1:] from tgt[:-1]
        return label_smoothed_loss(logits, tgt[:, 1:], epsilon, PAD_ID)

    return loss_fn


def train_translation(
    cfg: TransformerConfig, data: TranslationData, recipe: Recipe, device: str = "auto", desc: str = "train",
    eval_every: int = 0, checkpoint_dir: str | Path | None = None,
) -> TrainedModel:
    """Train ``cfg`` on the training split with the paper's optimiser and schedule (§5.3).

    ``eval_every`` > 0: the dev perplexity every that many steps (and after the last), kept as the
    learning curve ``TrainedModel.curve``. The model comes back on the device it trained on.
    ``checkpoint_dir``: where the checkpoints are kept (``run.state.checkpoint_dir(key)``): a rerun
    continues from the newest one (a finished training trains no further step); None: a temporary
    folder, deleted at the end.
    """
    torch.manual_seed(recipe.seed)
    model = Transformer(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr_scale, betas=(0.9, 0.98), eps=1e-9)  # §5.3
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: noam_lr(i + 1, cfg.d_model, recipe.warmup)
    )  # eq. (3); LambdaLR counts from 0, the paper's step_num from 1
    every = recipe.checkpoint_every or recipe.steps
    dev_nll: dict[int, list[float]] = {}  # eval number -> per-sentence dev NLL (this process's evals only)

    def eval_fn(m: Transformer) -> dict[str, float]:
        nll, count = sentence_nll(m, data.dev)
        dev_nll[len(dev_nll)] = nll.tolist()
        return {"dev_ppl": math.exp(nll.sum() / count.sum())}

    if checkpoint_dir is None and distributed.world_size() > 1:  # every process must find the main one's checkpoints
        raise ValueError("several processes train: pass checkpoint_dir (a folder every process sees), e.g. "
                         "run.state.checkpoint_dir(key)")
    with contextlib.ExitStack() as stack:
        ckpt_dir = checkpoint_dir if checkpoint_dir is not None else stack.enter_context(
            tempfile.TemporaryDirectory(dir=paths.cache_dir(), prefix="transformer-ckpt-"))
        tc = train.TrainConfig(
            steps=recipe.steps,
            grad_accum=recipe.grad_accum,
            max_grad_norm=None,  # the paper clips nothing
            log_every=max(1, recipe.steps // 20),
            eval_every=eval_every,
            checkpoint_every=every,
            checkpoint_dir=ckpt_dir,
            keep_checkpoints=recipe.average_last,
            resume=checkpoint_dir is not None,
            mixed_precision=recipe.mixed_precision,
            device=str(device),
            desc=desc,
            log_dir=Path(checkpoint_dir).parent.parent / "logs" if checkpoint_dir is not None else None,
        )
        batches = token_batches(data.train, recipe.batch_tokens // recipe.grad_accum, recipe.seed)
        count = lambda b: int((b["tgt"][:, 1:] != PAD_ID).sum())  # noqa: E731 — target tokens per batch
        result = train.train(model, optimizer, batches, _loss_fn(cfg.label_smoothing), tc, scheduler=scheduler,
                             tokens_in=count, eval_fn=eval_fn if eval_every else None)
        accel = result.accelerator
        dirs = sorted(p for p in Path(ckpt_dir).glob("step_*") if (p / train.STATE_FILE).is_file())
        load_on = "cpu" if accel.device.type == "cpu" else str(accel.device)  # safetensors names no "cpu:0"
        checkpoints = [load_file(str(d / "model.safetensors"), device=load_on) for d in dirs[-recipe.average_last :]]
    model = accel.unwrap_model(model).eval()
    curve = [{"step": h["step"], "dev_ppl": h["dev_ppl"]} for h in result.history if "dev_ppl" in h]
    # a resumed run evaluated only its last len(dev_nll) points here: they are the curve's last ones
    sentence = {curve[len(curve) - len(dev_nll) + i]["step"]: v for i, v in dev_nll.items()} if curve else {}
    return TrainedModel(
        cfg, recipe, model, checkpoints, result.losses, result.wall_time_s, result.tokens_per_s,
        lr=[h["lr"] for h in result.history], curve=curve, dev_nll=sentence,
    )


# ------------------------------------------------------------------------------------------------
# Evaluation (§6.1): perplexity, BLEU with beam search or greedy decoding
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def sentence_nll(model: Transformer, data: EncodedPairs, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Per-sentence negative log-likelihood (nats, summed over the reference's wordpieces, teacher
    forcing, no label smoothing) and wordpiece counts, in ``data``'s order: the units a dev-set
    bootstrap resamples (:func:`reproduce.claims.seeds_and_items`)."""
    model.eval()
    device = next(model.parameters()).device  # evaluated where the model is
    nll, count = np.zeros(len(data)), np.zeros(len(data), dtype=np.int64)
    for idx, batch in fixed_batches(data, batch_size):
        src, tgt = batch["src"].to(device), batch["tgt"].to(device)
        logits = model(src, tgt[:, :-1]).float()  # (B, T, V)
        target = tgt[:, 1:]  # (B, T)
        token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=PAD_ID,
                                                      reduction="none")  # (B, T)
        nll[idx] = token_nll.sum(1).double().cpu().numpy()
        count[idx] = (target != PAD_ID).sum(1).cpu().numpy()
    return nll, count


def perplexity(model: Transformer, data: EncodedPairs, batch_size: int = 128) -> float:
    """Per-wordpiece perplexity of the references (teacher forcing, no label smoothing) — Table 3's PPL."""
    nll, count = sentence_nll(model, data, batch_size)
    return math.exp(nll.sum() / count.sum())


@torch.no_grad()
def translate(
    model: Transformer, data: EncodedPairs, detok, beam: int, alpha: float, batch_size: int = 64, desc: str = "decode"
) -> list[str]:
    """Detokenised translations of ``data``'s sources, in the original order (beam 1 = greedy)."""
    model.eval()
    device = next(model.parameters()).device  # decoded where the model is
    out: list[str] = [""] * len(data)
    batches = list(fixed_batches(data, batch_size))
    for idx, batch in tqdm(batches, desc=desc, leave=False):
        src = batch["src"].to(device)
        if beam == 1:
            ids = greedy_decode(model, src, BOS_ID, EOS_ID)
        else:
            ids = beam_search(model, src, BOS_ID, EOS_ID, beam=beam, alpha=alpha)
        for i, row in zip(idx, ids):
            out[i] = detok(row)
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """Corpus BLEU (sacrebleu, default 13a tokenisation) and its signature."""
    import sacrebleu

    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(metric.get_signature())


def bleu_stats(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """sacrebleu's per-sentence BLEU statistics (sentences x [len_h, len_r, 4 matches, 4 totals])."""
    import sacrebleu

    metric = sacrebleu.metrics.BLEU()
    return np.asarray(metric._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=np.int64)


def bleu_from_stats(stats: np.ndarray) -> float:
    """Corpus BLEU from summed :func:`bleu_stats` (the same number :func:`bleu` gives)."""
    import sacrebleu

    return sacrebleu.metrics.BLEU()._compute_score_from_stats(np.asarray(stats).tolist()).score


def bleu_interval(hypotheses: Sequence[str], references: Sequence[str], resamples: int = 1000, seed: int = 0):
    """Corpus BLEU with a bootstrap 95 % interval over sentences (Koehn 2004): a
    :class:`reproduce.claims.Estimate`."""
    from reproduce.claims import CONFIDENCE, Estimate

    stats = bleu_stats(hypotheses, references)
    n = len(stats)
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])  # resamples, sentences
    scores = np.array([bleu_from_stats(s) for s in draws @ stats])
    lo, hi = np.quantile(scores, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(bleu_from_stats(stats.sum(0)), float(lo), float(hi), f"bootstrap over {n} test sentences", n)


def bleu_difference(hyps_a: Sequence[str], hyps_b: Sequence[str], references: Sequence[str],
                    resamples: int = 1000, seed: int = 0):
    """Corpus BLEU(a) - BLEU(b) with a paired bootstrap 95 % interval over sentences.

    Both systems translate the same sentences; each resample draws sentences with replacement and
    recomputes both corpus BLEUs from the drawn sentences' n-gram statistics (sacrebleu's own
    per-sentence statistics, as its paired bootstrap test does; Koehn 2004). Returns a
    :class:`reproduce.claims.Estimate`.
    """
    from reproduce.claims import CONFIDENCE, Estimate

    stats_a, stats_b = bleu_stats(hyps_a, references), bleu_stats(hyps_b, references)  # sentences, stats
    score = bleu_from_stats

    n = len(stats_a)
    value = score(stats_a.sum(0)) - score(stats_b.sum(0))
    rng = np.random.default_rng(seed)
    draws = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(resamples)])  # resamples, sentences
    diffs = np.array([score(a) - score(b) for a, b in zip(draws @ stats_a, draws @ stats_b)])
    lo, hi = np.quantile(diffs, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return Estimate(value, float(lo), float(hi), f"paired bootstrap over {n} test sentences", n)


def evaluate_bleu(model: Transformer, data: TranslationData, split: str, beam: int, alpha: float) -> dict:
    """Decode ``split`` and score it with sacreBLEU, once, on the main process (every process gets the result)."""
    def decode_and_score() -> dict:
        enc = getattr(data, split)
        hyps = translate(model, enc, data.detokenize, beam, alpha, desc=f"{split} beam={beam}")
        score, sig = bleu(hyps, [p.de for p in enc.pairs])
        return {"bleu": score, "signature": sig, "hypotheses": hyps}

    return distributed.on_main(decode_and_score)


# ------------------------------------------------------------------------------------------------
# Controls: systems that learn no translation, scored on the same sentences
# ------------------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def _words(text: str) -> frozenset[str]:
    return frozenset(_WORD.findall(text.lower()))


def copy_source(pairs: Sequence[Pair]) -> list[str]:
    """The copy control: each English source as its own "translation" (names, numbers and cognates match)."""
    return [p.en for p in pairs]


def retrieve_nearest(train: Sequence[Pair], queries: Sequence[str], max_pairs: int = 0) -> list[str]:
    """The retrieval control: for each query, the German of the training pair whose English word set
    (lower-cased ``\\w+``) has the largest Jaccard overlap with the query's (ties: the earliest pair).

    A translation memory with no model: what a system gets from recalling whole training sentences.
    ``max_pairs`` > 0 searches every k-th training pair only (k chosen to keep at most that many: WMT14's
    4.5M pairs). Overlaps are sparse products (scipy), a block of queries at a time.
    """
    import scipy.sparse as sp

    step = max(1, -(-len(train) // max_pairs)) if max_pairs else 1
    pool = [train[i] for i in range(0, len(train), step)]
    vocab: dict[str, int] = {}

    def rows(texts) -> tuple[list[int], list[int]]:  # CSR index pointers and word ids of each text's word set
        indptr, indices = [0], []
        for t in texts:
            indices.extend(sorted({vocab.setdefault(w, len(vocab)) for w in _words(t)}))
            indptr.append(len(indices))
        return indptr, indices

    t_ptr, t_idx = rows(p.en for p in pool)
    q_ptr, q_idx = rows(queries)
    width = len(vocab)
    T = sp.csr_matrix((np.ones(len(t_idx), np.float32), t_idx, t_ptr), shape=(len(pool), width))
    Q = sp.csr_matrix((np.ones(len(q_idx), np.float32), q_idx, q_ptr), shape=(len(queries), width))
    t_len, q_len = np.diff(T.indptr).astype(np.float32), np.diff(Q.indptr).astype(np.float32)
    out, block = [], max(1, 2**24 // max(1, len(pool)))  # queries per block: <= 16M overlaps (64 MB) at once
    for start in range(0, len(queries), block):
        overlap = (Q[start:start + block] @ T.T).toarray()  # (queries, pool): shared words
        union = q_len[start:start + block, None] + t_len[None, :] - overlap
        best = np.argmax(overlap / np.maximum(union, 1.0), axis=1)  # the first maximum: the earliest pair
        out.extend(pool[int(b)].de for b in best)
    return out


@dataclass(frozen=True)
class ControlJob:
    """A control trained like the Table 2 model and scored on its test sentences (the source-blind
    model): a job of :class:`reproduce.pool.Pool` whose shared data is ``{"table2": TranslationData, ...}``."""

    key: str
    cfg: TransformerConfig
    recipe: Recipe
    beam: int
    alpha: float
    device: str

    def run(self, shared: dict, checkpoint_dir: str | None) -> dict:
        data = shared["table2"]
        trained = train_translation(self.cfg, data, self.recipe, device=self.device, desc=self.key,
                                    checkpoint_dir=checkpoint_dir)
        averaged = trained.averaged()
        result = evaluate_bleu(averaged, data, "test", self.beam, self.alpha)
        return {"bleu": result["bleu"], "hypotheses": result["hypotheses"], "dev_ppl": perplexity(averaged, data.dev),
                "steps": self.recipe.steps, "wall_time_s": trained.wall_time_s,
                "params": sum(p.numel() for p in trained.model.parameters())}
