"""Issue #28, the new evaluation tasks (calibration, seeds disjoint from the record's 0, 1, 2).

Runs the record's own pipeline (``experiments.prepare`` + ``experiments.run_ablation``, the cpu profile
with the overrides given) for a few Table 3 rows and one seed, and prints every task score of the
untrained row and of each trained row, the chance level and the question-only baseline of scene QA,
and the held-out ITM accuracy. What it answers: do the fused task (scene QA, fine-tuned) and the
language task (cloze, frozen probe) separate pretrained rows from the untrained one at this scale, and
does ITM learn with ``itm_pair='unmasked'`` and ``multimodal_lr``?

Usage:  .venv/bin/python calibration/flava/tasks.py --seed 101 --rows MLM,FLAVA_C,FLAVA_MM \\
            --set steps=2000 multimodal_lr=3e-4 itm_pair=unmasked qa_finetune_steps=300
Results: calibration/flava/tasks.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from reproduce import config
from reproduce.flava import data as D
from reproduce.flava import evaluation as V
from reproduce.flava import experiments as E


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=101, help="data and model seed (the record uses 0-3)")
    ap.add_argument("--rows", default="MLM,FLAVA_C,FLAVA_MM")
    ap.add_argument("--set", nargs="*", default=[], help="cpu-profile overrides, name=value (JSON values)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    overrides = {k: json.loads(v) if v[:1] in "[{0123456789-tf" and v not in ("masked", "unmasked") else v
                 for k, v in (a.split("=", 1) for a in args.set)}
    params = config.resolve("flava", "cpu", {"seed": args.seed, "seeds": [args.seed], "rows": args.rows.split(","),
                                              **overrides})
    t0 = time.perf_counter()
    data, ev = E.prepare(params)
    qa = ev.scene_qa
    print(f"# tasks calibration, seed {args.seed}, rows {params.rows}, overrides {overrides}; data {time.perf_counter() - t0:.0f} s")
    print(f"# chance (majority): {json.dumps(V.chance_scores(ev), indent=None)}")
    print(f"# scene QA question-only baseline: {D.question_prior_accuracy(qa.texts[0], qa.train_y, qa.texts[1], qa.test_y):.1f} %")
    runs, _ = E.run_ablation(params, data, ev, device="cpu")
    for r in runs:
        print(f"\n## {r.row} (seed {r.seed}, train {r.train_s:.0f} s)")
        for domain, tasks in r.scores.items():
            print(f"- {domain}: " + ", ".join(f"{k} {v:.1f}" for k, v in tasks.items()))
        if r.itm:
            print(f"- ITM held-out (one-attribute swaps): {r.itm['accuracy']:.1f} [{r.itm['low']:.1f}, {r.itm['high']:.1f}]")
        if "itm" in r.losses:
            print("- ITM training loss windows: " + ", ".join(f"{x:.3f}" for x in r.losses["itm"]))
    print(f"\n# total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
