"""Issue #28, ITM ladder (calibration, seeds disjoint from the record's 0, 1, 2): the cheapest rungs after
the one-batch overfit test (tests/test_flava_itm.py), each a short training at the cpu profile's scale.

Rungs (one process, one thread, one at a time):
  a  ITM only, on the *unmasked* pair, easy negatives (the caption of another image of the batch:
     ``itm_hard_fraction=0``), the cpu profile's sizes (1 multimodal layer).
  b  the same with ``multimodal_layers=2`` (a FlavaSizes parameter: no code change).
  c  baseline without the fusion encoder: GC only (FLAVA_C), then P(match) := [cosine(image, text) > t],
     t chosen on a separate validation split, scored on the same test pairs as a and b.
  j  GC + ITM trained jointly (unmasked, easy negatives).
  w  warm start: ITM (unmasked, easy negatives) continuing rung c's GC-trained model.
  r  the record's FLAVA_MM row (GC + MMM + ITM, mined negatives) with ITM on the unmasked pair and the
     fusion parts at their own lr (``--mm_lr``): the options ``itm_pair`` and ``multimodal_lr``;
     ``r:FLAVA`` for full FLAVA.
  m  (reference) ITM only on the *masked* pair as training draws it (block-masked image, BERT-masked
     text), the same easy negatives: isolates what the masking costs.

Everything goes through the project's public functions: ``reproduce.config.resolve('flava', 'cpu')`` for
the sizes and optimisation (lr 1e-3, warmup 60, cosine, AdamW wd 0.1, batch 32, clip 1.0),
``data.build_pretrain_data`` / ``data.BatchSampler`` for the generated scenes and ITM pairs, and
``pretraining.pretrain`` (the record's loop) with an ``AblationRow`` whose objectives are ITM or GC
only. The only thing done outside reproduce/ is unmasking: a thin sampler wrapper hands ``pretrain``
the sampler's paired batch with the masked text restored (``mlm_labels`` hold the original ids) and an
all-False image mask; ``objectives.paired_losses`` then scores ITM on the unmasked pair.

Held-out test sets: scenes of the *test* attribute combinations (``SceneSampler("test")``, as
``build_eval_data``), balanced (even index: true caption, odd: a negative), two kinds of negative:
easy (the caption of another held-out scene, ``data.other_captions``) and hard (a one-attribute swap,
the kind of the record's ``itm.heldout`` set, other scenes). Accuracy = P(match) > 0.5 (ITM) or similarity > t (baseline); 95 %
Clopper-Pearson interval over the pairs (scipy). ITM loss = mean cross-entropy on the test pairs.

Usage:  .venv/bin/python calibration/flava/itm_ladder.py --rungs a,b,c --steps 600 --seed 101
        [--lr 1e-4] [--mm_layers 2]   (rung w continues rung c's model: list c before w, e.g. --rungs c,w)
The runs and their printed results: calibration/flava/itm_ladder.md.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from reproduce import config
from reproduce.data import scenes
from reproduce.flava import data as D
from reproduce.flava import evaluation as V
from reproduce.flava import objectives as O
from reproduce.flava import pretraining as P
from reproduce.flava.ablation import AblationRow
from reproduce.flava.experiments import sizes_from
from reproduce.flava.model import build_model


class Unmasked:
    """A ``BatchSampler`` whose paired batches carry the unmasked ITM pair (what ``draw`` returns to ``pretrain``)."""

    def __init__(self, sampler: D.BatchSampler, unmask: bool):
        self.sampler, self.unmask = sampler, unmask

    def draw(self, row):
        source, batch = self.sampler.draw(row)
        if self.unmask and source == "paired":
            ids = batch.itm_ids_masked.where(batch.mlm_labels.eq(O.CE_IGNORE), batch.mlm_labels)  # original ITM text
            batch = replace(batch, itm_ids_masked=ids, mlm_labels=torch.full_like(ids, O.CE_IGNORE),
                            bool_masked_pos=torch.zeros_like(batch.bool_masked_pos))
        return source, batch


def heldout_sets(data: D.PretrainData, sizes, n: int, seed: int) -> dict[str, tuple]:
    """Balanced held-out ITM pairs on the test attribute combinations: {'easy', 'hard'} -> (images, ids, mask, y)."""
    s = scenes.make_scenes(n, sizes.image_size, seed, scenes.SceneSampler("test", emoji_prob=0.0))
    negative = np.arange(n) % 2 == 1
    easy = D.other_captions(s.captions, np.random.default_rng(seed + 1))
    out = {}
    for kind, neg in (("easy", easy), ("hard", s.negatives)):
        texts = [ng if f else c for c, ng, f in zip(s.captions, neg, negative)]
        ids, mask = D.tokenize(data.tokenizer, texts, sizes.max_text_len)
        out[kind] = (s.images, ids, mask, (~negative).astype(np.int64))
    return out


def interval(hits: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(hits, n).proportion_ci(0.95, method="exact")
    return 100 * ci.low, 100 * ci.high


def score(correct: np.ndarray) -> str:
    k, n = int(correct.sum()), len(correct)
    lo, hi = interval(k, n)
    return f"{100 * k / n:5.1f} % [{lo:.1f}, {hi:.1f}] (n={n})"


@torch.no_grad()
def spread(model, images, ids, mask) -> dict[str, float]:
    """How much h_CLS,M and the ITM pooler's output vary across held-out pairs (std over pairs, mean over
    dimensions, relative to the mean absolute value): ~0 means every pair gets the same representation."""
    o = model.flava(pixel_values=D.to_pixels(images), input_ids=ids, attention_mask=mask)
    cls = o.multimodal_embeddings[:, 0]
    pooled = model.itm_head.pooler(o.multimodal_embeddings)
    rel = lambda x: float(x.std(0).mean() / x.abs().mean().clamp_min(1e-12))
    return {"cls_m_rel_spread": rel(cls), "pooler_rel_spread": rel(pooled),
            "pooler_saturated_frac": float((pooled.abs() > 0.99).float().mean())}


def itm_rung(name: str, params, sizes, data, tests, unmask: bool, seed: int, objectives: O.Objectives = O.Objectives(itm=True),
             model=None) -> dict:
    row = AblationRow(f"ITM-{name}", objectives, {"paired": 1.0}, ("multimodal",))
    sampler = Unmasked(D.BatchSampler(data, sizes, params.batch_size, seed, itm_negative_prob=0.5, itm_hard_fraction=0.0),
                       unmask)
    model = model if model is not None else build_model(sizes, seed)
    cfg = P.FlavaTrainConfig(steps=params.steps, batch_size=params.batch_size, lr=params.lr, warmup=params.warmup,
                             weight_decay=params.weight_decay, itm_negatives="sampled", seed=seed)
    t0 = time.perf_counter()
    history = P.pretrain(model, row, sampler, cfg, device="cpu")
    wall = time.perf_counter() - t0
    out = {"rung": name, "steps": params.steps, "train_s": wall, "multimodal_layers": sizes.multimodal_layers,
           "unmasked": unmask, "train_itm_windows": P.loss_windows(history["itm"], 10)}
    for kind, (images, ids, mask, y) in tests.items():
        p = V.itm_match_probability(model, images, ids, mask)
        correct = (p > 0.5) == y.astype(bool)
        loss = float(F.binary_cross_entropy(torch.from_numpy(p).double().clamp(1e-7, 1 - 1e-7), torch.from_numpy(y).double()))
        out[kind] = {"accuracy": score(correct), "itm_loss": loss}
    images, ids, mask, _ = tests["easy"]
    out["representation (easy test, 256 pairs)"] = spread(model, images[:256], ids[:256], mask[:256])
    return out


def record_rung(params, sizes, data, tests, seed: int, mm_lr: float, row_name: str = "FLAVA_MM") -> dict:
    """The record's row as ``experiments.run_ablation`` trains it (mined negatives, the profile's sampler),
    with ITM on the unmasked pair (``itm_pair='unmasked'``) and the fusion parts at ``mm_lr``."""
    from reproduce.flava.ablation import table3_rows

    row = table3_rows(params.p_paired, params.p_images, params.p_text)[row_name]
    sampler = D.BatchSampler(data, sizes, params.batch_size, seed, 0.0, params.itm_hard_fraction)
    model = build_model(sizes, seed)
    cfg = P.FlavaTrainConfig(steps=P.row_steps(row, params.steps), batch_size=params.batch_size, lr=params.lr,
                             warmup=params.warmup, weight_decay=params.weight_decay, itm_negatives="mined", seed=seed,
                             itm_pair="unmasked", multimodal_lr=mm_lr)
    t0 = time.perf_counter()
    history = P.pretrain(model, row, sampler, cfg, device="cpu")
    out = {"rung": f"r ({row_name} as the record trains it, mined neg., ITM unmasked, fusion lr {mm_lr:g})",
           "steps": cfg.steps, "train_s": time.perf_counter() - t0,
           "train_itm_windows": P.loss_windows(history["itm"], 10)}
    for kind, (images, ids, mask, y) in tests.items():
        p = V.itm_match_probability(model, images, ids, mask)
        out[kind] = {"accuracy": score((p > 0.5) == y.astype(bool))}
    return out


def contrastive_rung(params, sizes, data, val, tests, seed: int, keep: list | None = None) -> dict:
    row = AblationRow("FLAVA_C", O.Objectives(gc=True), {"paired": 1.0}, ("multimodal",))
    sampler = D.BatchSampler(data, sizes, params.batch_size, seed, itm_negative_prob=0.0, itm_hard_fraction=0.0)
    model = build_model(sizes, seed)
    cfg = P.FlavaTrainConfig(steps=params.steps, batch_size=params.batch_size, lr=params.lr, warmup=params.warmup,
                             weight_decay=params.weight_decay, itm_negatives="sampled", seed=seed)
    t0 = time.perf_counter()
    history = P.pretrain(model, row, sampler, cfg, device="cpu")
    wall = time.perf_counter() - t0
    out = {"rung": "c (GC + threshold)", "steps": params.steps, "train_s": wall,
           "train_gc_windows": P.loss_windows(history["global_contrastive"], 10)}

    def sims(images, ids, mask):
        a, b = V.contrastive_embeddings(model, images, ids, mask)
        return (a * b).sum(-1).numpy()

    for kind in tests:
        images, ids, mask, y = val[kind]
        s = sims(images, ids, mask)
        cands = np.concatenate([[-np.inf], np.sort(s)])
        accs = [((s > t) == y.astype(bool)).mean() for t in cands]
        t = float(cands[int(np.argmax(accs))])  # best threshold on the validation split only
        images, ids, mask, y = tests[kind]
        correct = (sims(images, ids, mask) > t) == y.astype(bool)
        out[kind] = {"accuracy": score(correct), "threshold": t, "val_accuracy": 100 * float(max(accs))}
    if keep is not None:
        keep.append(model)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rungs", default="a,b,c", help="comma list of a, b, c, m")
    ap.add_argument("--seed", type=int, default=101, help="data, model and sampler seed (the record uses 0-3)")
    ap.add_argument("--steps", type=int, default=600, help="updates per rung (cpu profile: 600)")
    ap.add_argument("--n_pairs", type=int, default=10_000, help="training pairs (cpu profile: 10,000)")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate (cpu profile: 1e-3)")
    ap.add_argument("--mm_layers", type=int, default=None, help="multimodal layers of every rung but b (cpu profile: 1)")
    ap.add_argument("--mm_lr", type=float, default=1e-4, help="rung r: peak lr of the fusion parts (multimodal_lr)")
    ap.add_argument("--n_test", type=int, default=600, help="held-out pairs per test set (cpu profile's n_probe: 600)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = config.resolve("flava", "cpu", {"seed": args.seed, "steps": args.steps, "n_pairs": args.n_pairs,
                                                **({"lr": args.lr} if args.lr else {}),
                                                **({"multimodal_layers": args.mm_layers} if args.mm_layers else {})})
    sizes = sizes_from(params)
    t0 = time.perf_counter()
    texts = D.text_sources()
    data = D.build_pretrain_data(sizes, params.n_pairs, params.n_images, params.n_text, params.emoji_prob, args.seed, texts)
    # held-out seeds: 10x the run seed + offsets, never a seed of the record (0..2 + 100..105)
    val = heldout_sets(data, sizes, args.n_test, 10 * args.seed + 1)
    tests = heldout_sets(data, sizes, args.n_test, 10 * args.seed + 2)
    print(f"# ITM ladder, seed {args.seed}, cpu profile sizes {sizes}, lr {params.lr}, warmup {params.warmup}, "
          f"batch {params.batch_size}, steps {params.steps}, n_pairs {params.n_pairs}; data built in "
          f"{time.perf_counter() - t0:.0f} s; torch threads {torch.get_num_threads()}", flush=True)
    print(f"# ln 2 = {math.log(2):.4f}", flush=True)
    gc_models: list = []
    for r in args.rungs.split(","):
        if r == "a":
            res = itm_rung(f"a (unmasked, easy neg., {sizes.multimodal_layers} mm layer(s))", params, sizes, data, tests, True, args.seed)
        elif r == "b":
            res = itm_rung("b (unmasked, easy neg., 2 mm layers)", params, replace(sizes, multimodal_layers=2), data, tests,
                           True, args.seed)
        elif r == "m":
            res = itm_rung(f"m (masked as in training, easy neg., {sizes.multimodal_layers} mm layer(s))", params, sizes, data, tests, False, args.seed)
        elif r == "j":
            res = itm_rung(f"j (GC + ITM jointly, unmasked, easy neg., {sizes.multimodal_layers} mm layer(s))", params, sizes, data, tests, True, args.seed,
                           O.Objectives(gc=True, itm=True))
        elif r.startswith("r"):  # r or r:<row>: the record's row with ITM unmasked and the fusion lr --mm_lr
            res = record_rung(params, sizes, data, tests, args.seed, args.mm_lr, r[2:] or "FLAVA_MM")
        elif r == "c":
            res = contrastive_rung(params, sizes, data, val, tests, args.seed, keep=gc_models)
        elif r == "w":  # warm start: ITM from the GC model of rung c (run c first in the same call)
            if not gc_models:
                raise SystemExit("rung w continues rung c's GC model: list c before w")
            res = itm_rung("w (ITM warm-started from rung c's GC model, unmasked, easy neg.)", params, sizes, data, tests,
                           True, args.seed, model=gc_models[-1])
        else:
            raise SystemExit(f"unknown rung {r!r}")
        print(f"\n## rung {res.pop('rung')}", flush=True)
        for k, v in res.items():
            if isinstance(v, list):
                v = "[" + ", ".join(f"{x:.3f}" for x in v) + "]"
            elif isinstance(v, float):
                v = f"{v:.1f}"
            elif isinstance(v, dict):
                v = {a: round(b, 4) if isinstance(b, float) else b for a, b in v.items()}
            print(f"- {k}: {v}", flush=True)


if __name__ == "__main__":
    main()
