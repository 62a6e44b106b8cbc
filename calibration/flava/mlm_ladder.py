"""Issue #28, does MLM learn context at the cpu profile's scale? (calibration, seed disjoint from the record's)

The MLM row's loss in the records flattened at ~5.6 nats (ln 1000 = 6.91 for a uniform guess over the
vocabulary): about what predicting every masked token from word frequencies alone gives. This trains
the MLM row (text only, ``pretraining.pretrain`` as the record does) for each ``--runs`` setting
(steps:lr) and prints its loss windows, the unigram baseline (the entropy of the masked tokens' ids
under the training text's token frequencies) and the cloze probe (``evaluation.cloze_probe``) against
the untrained encoder. One thread.

Usage:  .venv/bin/python calibration/flava/mlm_ladder.py --seed 101 --runs 2000:1e-3 2000:3e-4
Results: calibration/flava/tasks.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from reproduce import config
from reproduce.flava import data as D
from reproduce.flava import evaluation as V
from reproduce.flava import experiments as E
from reproduce.flava.model import build_model
from reproduce.flava.pretraining import FlavaTrainConfig, loss_windows, pretrain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--runs", nargs="+", default=["2000:1e-3"], help="steps:lr")
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = config.resolve("flava", "cpu", {"seed": args.seed, "seeds": [args.seed], "rows": ["MLM"]})
    data, ev = E.prepare(params)
    ids = data.text_ids[data.text_mask.bool()].numpy()
    special = set(data.tokenizer.all_special_ids)
    ids = ids[~np.isin(ids, list(special))]
    p = np.bincount(ids, minlength=len(data.tokenizer)) / len(ids)
    unigram = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    sizes = E.sizes_from(params)
    print(f"# MLM ladder, seed {args.seed}; unigram entropy of the training text's tokens {unigram:.2f} nats "
          f"(uniform {np.log(len(data.tokenizer)):.2f})")
    print(f"- cloze, untrained: {V.cloze_probe(build_model(sizes, args.seed).eval(), ev.cloze, args.seed):.1f} % "
          f"(majority {V.chance_scores(ev)['language'][V.CLOZE]:.1f} %, {len(ev.cloze.train_y)} / {len(ev.cloze.test_y)} sentences)",
          flush=True)
    row = E.rows_from(params)["MLM"]
    for setting in args.runs:
        steps, lr = setting.split(":")
        model = build_model(sizes, args.seed)
        sampler = D.BatchSampler(data, sizes, params.batch_size, args.seed)
        cfg = FlavaTrainConfig(steps=int(steps), batch_size=params.batch_size, lr=float(lr), warmup=params.warmup,
                               weight_decay=params.weight_decay, seed=args.seed)
        t0 = time.perf_counter()
        history = pretrain(model, row, sampler, cfg, "cpu")
        print(f"- MLM {steps} steps at lr {lr} ({time.perf_counter() - t0:.0f} s): loss windows "
              + ", ".join(f"{x:.2f}" for x in loss_windows(history["mlm"], 10))
              + f"; cloze {V.cloze_probe(model.eval(), ev.cloze, args.seed):.1f} %", flush=True)


if __name__ == "__main__":
    main()
