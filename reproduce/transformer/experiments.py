"""Training and evaluation runs: the Table 2 recipe and the Table 3 variations at small scale.

Recipe (§5): Adam(β1 0.9, β2 0.98, ε 1e-9) with the eq. (3) schedule, label smoothing ε_ls,
residual dropout P_drop, batches of sentence pairs grouped by approximate length with a token
budget per batch (§5.1), checkpoints every ``checkpoint_every`` steps; inference (§6.1) with beam
4, α 0.6, max length input + 50, and the average of the last 5 checkpoints. BLEU with sacrebleu on
detokenised text; dev perplexity per wordpiece without label smoothing (Table 3's PPL).

Training runs through the shared accelerate loop, :func:`reproduce.train.train`.
"""

from __future__ import annotations

import contextlib

import math
import os
import random
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from reproduce import distributed, paths, train
from reproduce.configs.transformer import TABLE3_ROWS
from reproduce.data import de_en

from .decoding import average_checkpoints, beam_search, greedy_decode
from .model import Transformer, TransformerConfig, label_smoothed_loss, noam_lr

# ------------------------------------------------------------------------------------------------
# Data: tokenised pairs and length-bucketed batches (§5.1)
# ------------------------------------------------------------------------------------------------


class Ragged(Sequence):
    """Rows of token ids of different lengths in one flat int32 array and its offsets: the training
    split of WMT14 (4.5M pairs) in ~0.6 GB instead of ~300M Python ints. ``rows[i]`` is a NumPy view."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[int]]) -> Ragged:
        lengths, chunks = [0], []
        for r in rows:
            chunks.append(np.asarray(r, dtype=np.int32))
            lengths.append(len(r))
        flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
        return cls(flat, np.cumsum(np.asarray(lengths, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class _Kept(Sequence):
    """The pairs at ``keep`` of a lazy sequence (the training split's pairs are not materialised)."""

    def __init__(self, pairs: Sequence, keep: np.ndarray):
        self.pairs, self.keep = pairs, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i):
        return self.pairs[int(self.keep[i])]


@dataclass
class EncodedPairs:
    """Token ids of sentence pairs: source = English + </s>, target = <s> + German + </s>."""

    pairs: Sequence[de_en.Pair]
    src: Sequence[Sequence[int]]  # lists (dev, test) or a Ragged array (a training split read with compact=True)
    tgt: Sequence[Sequence[int]]

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass
class TranslationData:
    tokenizer: object  # tokenizers.Tokenizer
    train: EncodedPairs
    dev: EncodedPairs
    test: EncodedPairs
    corpus: de_en.Corpus

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


BOS_ID, EOS_ID, PAD_ID = 1, 2, 0  # reproduce.data.de_en.SPECIALS order


def encode_pairs(tokenizer, pairs: Sequence[de_en.Pair], max_tokens: int, compact: bool = False,
                 chunk: int = 100_000) -> EncodedPairs:
    """Encode pairs; pairs longer than ``max_tokens`` on either side are left out (training only).

    ``compact``: encode ``chunk`` pairs at a time into :class:`Ragged` arrays (the same ids), for a
    training split of millions of pairs; ``pairs`` then stays lazy.
    """
    if compact:
        src_rows, tgt_rows, keep = [], [], []
        for start in range(0, len(pairs), chunk):
            part = [pairs[i] for i in range(start, min(start + chunk, len(pairs)))]
            src = tokenizer.encode_batch([p.en for p in part], add_special_tokens=False)
            tgt = tokenizer.encode_batch([p.de for p in part], add_special_tokens=False)
            for j, (a, b) in enumerate(zip(src, tgt)):
                if len(a.ids) < max_tokens and len(b.ids) < max_tokens - 1:
                    keep.append(start + j)
                    src_rows.append([*a.ids, EOS_ID])
                    tgt_rows.append([BOS_ID, *b.ids, EOS_ID])
        return EncodedPairs(_Kept(pairs, np.asarray(keep, dtype=np.int64)), Ragged.from_rows(src_rows),
                            Ragged.from_rows(tgt_rows))
    src_ids = [e.ids for e in tokenizer.encode_batch([p.en for p in pairs], add_special_tokens=False)]
    tgt_ids = [e.ids for e in tokenizer.encode_batch([p.de for p in pairs], add_special_tokens=False)]
    keep = [i for i in range(len(pairs)) if len(src_ids[i]) < max_tokens and len(tgt_ids[i]) < max_tokens - 1]
    return EncodedPairs(
        [pairs[i] for i in keep], [src_ids[i] + [EOS_ID] for i in keep], [[BOS_ID, *tgt_ids[i], EOS_ID] for i in keep]
    )


def prepare_data(
    vocab_size: int, dev_size: int, test_size: int, with_bible: bool = False, max_tokens: int = 100,
    corpus: str = "beolingus", max_train: int = 0, wmt: dict | None = None,
) -> TranslationData:
    """Sentence-pair splits and a joint BPE vocabulary trained on the training split (§5.1).

    ``corpus="beolingus"``: the packaged dictionary sentences (dev/test by hash, sizes as given);
    ``"wmt14"``: WMT14 EN-DE from the hub (newstest2013 dev, newstest2014 test, as the paper).
    """
    if corpus == "beolingus":
        corpus = de_en.load_corpus(dev_size=dev_size, test_size=test_size, with_bible=with_bible, max_train=max_train)
    elif corpus == "wmt14":
        corpus = de_en.wmt14_corpus(**(wmt or {}), max_train=max_train or None)
    else:
        raise ValueError(f"corpus must be 'beolingus' or 'wmt14', got {corpus!r}")
    tok = de_en.train_tokenizer(de_en.corpus_texts(corpus.train), vocab_size)
    big = 10**6  # dev/test keep every pair
    return TranslationData(
        tok,
        encode_pairs(tok, corpus.train, max_tokens, compact=not isinstance(corpus.train, list)),
        encode_pairs(tok, corpus.dev, big),
        encode_pairs(tok, corpus.test, big),
        corpus,
    )


def hash_order(pairs: Sequence[de_en.Pair]) -> list[de_en.Pair]:
    """``pairs`` sorted by the hash of their English side: a fixed, uniform order (the dictionary's own
    order is alphabetical by headword, so its prefixes are not samples of it)."""
    return sorted(pairs, key=lambda p: (de_en.split_key(p), p.de))


def subset_data(corpus: de_en.Corpus, train_pairs: int, vocab_size: int, dev_size: int,
                max_tokens: int = 100) -> TranslationData:
    """A small training set with its own BPE vocabulary, for runs that must converge (Table 3).

    The first ``train_pairs`` training pairs and ``dev_size`` dev pairs in hash order
    (:func:`hash_order`); the joint vocabulary is trained on that subset alone, so its size fits the
    subset. Test pairs are encoded too, with the subset's tokenizer.
    """
    if not 1 <= train_pairs <= len(corpus.train):
        raise ValueError(f"train_pairs must be in 1..{len(corpus.train)} (the training split), got {train_pairs}")
    if not 1 <= dev_size <= len(corpus.dev):
        raise ValueError(f"dev_size must be in 1..{len(corpus.dev)} (the dev split), got {dev_size}")
    train_split, dev_split = hash_order(corpus.train)[:train_pairs], hash_order(corpus.dev)[:dev_size]
    tok = de_en.train_tokenizer(de_en.corpus_texts(train_split), vocab_size)
    sub = de_en.Corpus(train_split, dev_split, corpus.test, {"subset of": dict(corpus.sources), "pairs": train_pairs})
    big = 10**6
    return TranslationData(tok, encode_pairs(tok, train_split, max_tokens), encode_pairs(tok, dev_split, big),
                           encode_pairs(tok, corpus.test, big), sub)


def _pad(rows: Sequence[Sequence[int]]) -> Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r)
    return out  # (B, T)


def _epoch_batches(data: EncodedPairs, batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches (pair indices) in length order: pairs sorted by (jittered) length, cut into
    batches whose padded size fits ``batch_tokens``."""
    order = sorted(range(len(data)), key=lambda i: (len(data.src[i]) + rng.random() * 2, len(data.tgt[i])))
    batches, current, longest = [], [], 0
    for i in order:
        longest_next = max(longest, len(data.src[i]), len(data.tgt[i]))
        if current and longest_next * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_next = [], max(len(data.src[i]), len(data.tgt[i]))
        current.append(i)
        longest = longest_next
    batches.append(current)
    return batches


def token_batches(data: EncodedPairs, batch_tokens: int, seed: int) -> Iterator[dict[str, Tensor]]:
    """Endless batches of pairs with similar lengths, each ~``batch_tokens`` source and target tokens.

    §5.1: "Sentence pairs were batched together by approximate sequence length." Every epoch the
    pairs are sorted by (jittered) length, cut into batches whose padded size fits the budget, and
    the batches are shuffled; the order depends only on ``seed``.
    """
    rng = random.Random(seed)
    while True:
        batches = _epoch_batches(data, batch_tokens, rng)
        rng.shuffle(batches)
        for b in batches:
            yield {"src": _pad([data.src[i] for i in b]), "tgt": _pad([data.tgt[i] for i in b])}


def batches_per_epoch(data: EncodedPairs, batch_tokens: int, seed: int = 0) -> int:
    """How many batches :func:`token_batches` cuts the first epoch into (later epochs differ by a few
    batches at most, from the length jitter)."""
    return len(_epoch_batches(data, batch_tokens, random.Random(seed)))


def fixed_batches(data: EncodedPairs, batch_size: int) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """Evaluation batches in length order, with the indices they hold."""
    order = sorted(range(len(data)), key=lambda i: len(data.src[i]))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        yield idx, {"src": _pad([data.src[i] for i in idx]), "tgt": _pad([data.tgt[i] for i in idx])}


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
    eval_fn = (lambda m: {"dev_ppl": perplexity(m, data.dev)}) if eval_every else None
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
            desc=desc,
            log_dir=Path(checkpoint_dir).parent.parent / "logs" if checkpoint_dir is not None else None,
        )
        batches = token_batches(data.train, recipe.batch_tokens // recipe.grad_accum, recipe.seed)
        count = lambda b: int((b["tgt"][:, 1:] != PAD_ID).sum())  # noqa: E731 — target tokens per batch
        accel = train.make_accelerator(device, recipe.mixed_precision, recipe.grad_accum)
        result = train.train(model, optimizer, batches, _loss_fn(cfg.label_smoothing), tc, scheduler=scheduler,
                             accelerator=accel, tokens_in=count, eval_fn=eval_fn)
        dirs = sorted(p for p in Path(ckpt_dir).glob("step_*") if (p / train.STATE_FILE).is_file())
        load_on = "cpu" if accel.device.type == "cpu" else str(accel.device)  # safetensors names no "cpu:0"
        checkpoints = [load_file(str(d / "model.safetensors"), device=load_on) for d in dirs[-recipe.average_last :]]
    model = accel.unwrap_model(model).eval()
    curve = [{"step": h["step"], "dev_ppl": h["dev_ppl"]} for h in result.history if "dev_ppl" in h]
    return TrainedModel(
        cfg, recipe, model, checkpoints, result.losses, result.wall_time_s, result.tokens_per_s,
        lr=[h["lr"] for h in result.history], curve=curve,
    )


# ------------------------------------------------------------------------------------------------
# Evaluation (§6.1): perplexity, BLEU with beam search or greedy decoding
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def perplexity(model: Transformer, data: EncodedPairs, batch_size: int = 128) -> float:
    """Per-wordpiece perplexity of the references (teacher forcing, no label smoothing) — Table 3's PPL."""
    model.eval()
    device = next(model.parameters()).device  # evaluated where the model is
    nll, count = 0.0, 0
    for _, batch in fixed_batches(data, batch_size):
        src, tgt = batch["src"].to(device), batch["tgt"].to(device)
        logits = model(src, tgt[:, :-1])  # (B, T, V)
        n = int((tgt[:, 1:] != PAD_ID).sum())
        nll += float(label_smoothed_loss(logits, tgt[:, 1:], 0.0, PAD_ID)) * n
        count += n
    return math.exp(nll / count)


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


def bleu_difference(hyps_a: Sequence[str], hyps_b: Sequence[str], references: Sequence[str],
                    resamples: int = 1000, seed: int = 0):
    """Corpus BLEU(a) - BLEU(b) with a paired bootstrap 95 % interval over sentences.

    Both systems translate the same sentences; each resample draws sentences with replacement and
    recomputes both corpus BLEUs from the drawn sentences' n-gram statistics (sacrebleu's own
    per-sentence statistics, as its paired bootstrap test does; Koehn 2004). Returns a
    :class:`reproduce.claims.Estimate`.
    """
    import numpy as np
    import sacrebleu

    from reproduce.claims import CONFIDENCE, Estimate

    metric = sacrebleu.metrics.BLEU()
    refs = [list(references)]
    stats_a = np.asarray(metric._extract_corpus_statistics(list(hyps_a), refs), dtype=np.int64)  # sentences, stats
    stats_b = np.asarray(metric._extract_corpus_statistics(list(hyps_b), refs), dtype=np.int64)

    def score(stats) -> float:
        return metric._compute_score_from_stats(stats.tolist()).score

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
# Table 3: variations of the base model, as config changes
# ------------------------------------------------------------------------------------------------



def table3_config(base: TransformerConfig, row: str) -> TransformerConfig:
    """The config of Table 3 row ``row``, scaled to ``base`` the way the paper's row relates to its base.

    (A) h in {1, 4, 16, 32} with d_k = d_v = d_model / h (constant compute); (B) d_k shrunk by 4 or
    2 (d_v kept); (C) N one layer fewer/more than base... (the paper: 2/8 around 6), d_model and
    d_ff halved/doubled (d_k = d_model / h follows d_model); (D) dropout and ε_ls; (E) learned positions.
    """
    if row not in TABLE3_ROWS:
        raise ValueError(f"unknown Table 3 row {row!r}; known: {', '.join(TABLE3_ROWS)}")
    group, _, change = row.partition(": ")
    if row == "base":
        return base
    if group == "A":
        h = int(change.removeprefix("h="))
        return base.replace(n_heads=h)
    if change == "d_k/4":
        return base.replace(d_k=max(1, base.d_k // 4), d_v=base.d_v)
    if change == "d_k/2":
        return base.replace(d_k=max(1, base.d_k // 2), d_v=base.d_v)
    if change == "N-":
        return base.replace(n_layers=max(1, base.n_layers - 1))
    if change == "N+":
        return base.replace(n_layers=base.n_layers + 1)
    if change.startswith("d_model"):
        d = base.d_model // 2 if change.endswith("/2") else base.d_model * 2
        return base.replace(d_model=d)
    if change.startswith("d_ff"):
        return base.replace(d_ff=base.d_ff // 2 if change.endswith("/2") else base.d_ff * 2)
    if change.startswith("P_drop="):
        return base.replace(p_drop=float(change.split("=")[1]))
    if change.startswith("ls="):
        return base.replace(label_smoothing=float(change.split("=")[1]))
    return base.replace(positional="learned")  # row (E)


@dataclass
class RowResult:
    row: str
    seed: int
    params: int
    dev_ppl: float  # after the last step
    best_dev_ppl: float  # the lowest along the curve
    best_step: int
    dev_bleu: float  # after the last step
    train_loss: float
    wall_time_s: float
    curve: list[dict[str, float]] = field(default_factory=list)  # {"step", "dev_ppl"}


def run_table3_row(
    row: str, base: TransformerConfig, data: TranslationData, recipe: Recipe, beam: int, alpha: float, device: str,
    eval_every: int = 0, checkpoint_dir: str | Path | None = None,
) -> RowResult:
    """Train one Table 3 variation with ``recipe`` and score it on dev (beam search, no averaging, as Table 3).

    ``eval_every`` > 0: dev perplexity every that many steps, so the best point of the curve is known
    as well as the last (a run that overfits has its best before its end).
    """
    cfg = table3_config(base, row)
    trained = train_translation(cfg, data, recipe, device=device, desc=f"Table 3 {row} seed {recipe.seed}",
                                eval_every=eval_every, checkpoint_dir=checkpoint_dir)
    dev_bleu = evaluate_bleu(trained.model, data, "dev", beam, alpha)["bleu"]
    curve = trained.curve or [{"step": recipe.steps, "dev_ppl": perplexity(trained.model, data.dev)}]
    best = min(curve, key=lambda c: c["dev_ppl"])
    return RowResult(
        row, recipe.seed, sum(p.numel() for p in trained.model.parameters()), curve[-1]["dev_ppl"], best["dev_ppl"],
        int(best["step"]), dev_bleu, sum(trained.losses[-10:]) / len(trained.losses[-10:]), trained.wall_time_s, curve,
    )


def _row_worker_init(threads: int) -> None:
    torch.set_num_threads(threads)  # one process per core: intra-op threads would fight over the cores
    # A worker shares the notebook kernel's stderr, which the kernel copies into the running cell:
    # its progress bars would fill the executed notebook. Errors still reach the caller (as exceptions).
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 — lives as long as the worker


def _run_row_job(job: tuple) -> RowResult:
    return run_table3_row(*job)


class PendingRows:
    """Table 3 runs queued on worker processes; :meth:`result` waits for them (in job order).

    While it waits, this process takes part: it runs the not-yet-started jobs itself, from the back
    of the queue, as the workers take them from the front, so no core idles once this process has
    nothing else to do. Each job seeds itself, so where it runs changes no number when this process
    also computes single-threaded (tested).
    """

    def __init__(self, jobs: list[tuple], workers: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._jobs = jobs
        self.workers = min(workers, len(jobs))
        if self.workers == 0:  # several processes (torchrun) or nothing to do: every job runs here, in order
            self._pool, self._futures = None, []
            return
        ctx = multiprocessing.get_context("spawn")  # a fork of a process with live torch threads can deadlock
        self._pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_row_worker_init, initargs=(1,))
        self._futures = [self._pool.submit(_run_row_job, job) for job in jobs]

    def result(self, help: bool = True, on_result=None) -> list[RowResult]:
        """Every job's result, in job order; ``on_result(job, result)`` is called as soon as each one is
        known (the caller stores it: a crash later loses no finished row)."""
        store = on_result or (lambda job, result: None)
        if self._pool is None:
            out = []
            for job in tqdm(self._jobs, desc="Table 3 (this process)", leave=False):
                out.append(_run_row_job(job))
                store(job, out[-1])
            return out
        here: dict[int, RowResult] = {}
        stored: set[int] = set()

        def collect() -> None:  # the workers' finished jobs, stored once each
            for i, f in enumerate(self._futures):
                if i not in stored and i not in here and f.done() and not f.cancelled():
                    stored.add(i)
                    store(self._jobs[i], f.result())

        try:
            progress = tqdm(total=len(self._jobs), desc=f"Table 3 ({self.workers} workers + this process)", leave=False)
            while help:
                collect()
                waiting = [i for i, f in enumerate(self._futures) if not (f.running() or f.done())]
                if not waiting:
                    break
                if self._futures[waiting[-1]].cancel():  # False when a worker took it meanwhile
                    here[waiting[-1]] = _run_row_job(self._jobs[waiting[-1]])
                    store(self._jobs[waiting[-1]], here[waiting[-1]])
                    progress.update(1)
            out = []
            for i, f in enumerate(self._futures):
                out.append(here[i] if i in here else f.result())
                if i not in here and i not in stored:
                    stored.add(i)
                    store(self._jobs[i], out[-1])
                progress.update(0 if i in here else 1)
            progress.close()
            return out
        finally:
            self._pool.shutdown(cancel_futures=True)


def table3_jobs(rows: Sequence[str], seeds: Sequence[int], base: TransformerConfig, data: TranslationData,
                recipe: Recipe, beam: int, alpha: float, device: str, eval_every: int = 0,
                checkpoint_dirs: dict | None = None) -> list[tuple]:
    """One job per (row, seed); ``checkpoint_dirs[(row, seed)]``: where that training keeps its checkpoints."""
    for row in rows:
        table3_config(base, row)  # an unknown row fails here, before any process starts
    dirs = checkpoint_dirs or {}
    return [(row, base, data, replace(recipe, seed=seed), beam, alpha, device, eval_every, dirs.get((row, seed)))
            for row in rows for seed in seeds]


def start_table3_rows(
    rows: Sequence[str], seeds: Sequence[int], base: TransformerConfig, data: TranslationData, recipe: Recipe,
    beam: int, alpha: float, device: str, workers: int = 1, eval_every: int = 0, checkpoint_dirs: dict | None = None,
    jobs: list[tuple] | None = None,
) -> PendingRows:
    """Start every (row, seed) run of Table 3 (or the given ``jobs``) in ``workers`` single-threaded
    processes and return at once, so that this process can train something else meanwhile (the cpu
    profile trains Table 2). ``workers`` 0: the jobs run in this process when their result is asked for."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if jobs is None:
        jobs = table3_jobs(rows, seeds, base, data, recipe, beam, alpha, device, eval_every, checkpoint_dirs)
    return PendingRows(jobs, workers)


def run_table3_rows(
    rows: Sequence[str], seeds: Sequence[int], base: TransformerConfig, data: TranslationData, recipe: Recipe,
    beam: int, alpha: float, device: str, workers: int = 0, eval_every: int = 0,
) -> list[RowResult]:
    """Every (row, seed) run of Table 3, in that order: in this process (``workers`` 0) or in that many.

    Each run seeds itself from ``seed`` alone and runs single-threaded in its worker, so a run's
    numbers do not depend on ``workers`` when this process also computes with one thread, as the
    cpu profile does (tested) — only the wall time does.
    """
    if workers == 0:
        return [_run_row_job(job) for job in table3_jobs(rows, seeds, base, data, recipe, beam, alpha, device, eval_every)]
    return start_table3_rows(rows, seeds, base, data, recipe, beam, alpha, device, workers, eval_every).result()
