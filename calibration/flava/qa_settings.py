"""Issue #28, the fused task's fine-tuning schedule (calibration, seed disjoint from the record's 0, 1, 2).

Trains FLAVA_C, FLAVA_MM and MLM once at the cpu profile's settings (with the overrides given, as the
record trains them: ``experiments.AblationJob``'s configuration), keeps their weights under ``--cache``,
then fine-tunes scene QA (``evaluation.finetune_multimodal``) from the untrained model and from each
trained row for every ``--qa`` setting (steps:lr), and scores cloze (``evaluation.cloze_probe``) for the
untrained model and MLM. One thread.

Usage:  .venv/bin/python calibration/flava/qa_settings.py --seed 101 --qa 300:5e-4 300:1e-4 600:5e-4 \\
            --set steps=2000 multimodal_lr=3e-4 itm_pair=unmasked
Results: calibration/flava/tasks.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from reproduce import config
from reproduce.flava import data as D
from reproduce.flava import evaluation as V
from reproduce.flava import experiments as E
from reproduce.flava.model import build_model
from reproduce.flava.pretraining import FlavaTrainConfig, pretrain, row_steps


def trained(params, data, name: str, seed: int, cache: Path):
    path = cache / f"{name}_{seed}_{params.steps}_{params.multimodal_lr:g}_{params.itm_pair}.pt"
    model = build_model(E.sizes_from(params), seed)
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    row = E.rows_from(params)[name]
    sampler = D.BatchSampler(data, E.sizes_from(params), params.batch_size, seed, 0.0, params.itm_hard_fraction)
    cfg = FlavaTrainConfig(steps=row_steps(row, params.steps), batch_size=params.batch_size, lr=params.lr,
                           warmup=params.warmup, weight_decay=params.weight_decay, itm_negatives=params.itm_negatives,
                           seed=seed, itm_pair=params.itm_pair, multimodal_lr=params.multimodal_lr)
    pretrain(model, row, sampler, cfg, "cpu")
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=101)
    ap.add_argument("--qa", nargs="+", default=["300:5e-4"], help="scene-QA fine-tuning settings, steps:lr")
    ap.add_argument("--set", nargs="*", default=[], help="cpu-profile overrides, name=value")
    ap.add_argument("--cache", default="runs/calibration/flava", help="where the trained rows' weights are kept")
    args = ap.parse_args()
    torch.set_num_threads(1)
    overrides = {}
    for a in args.set:
        k, v = a.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    params = config.resolve("flava", "cpu", {"seed": args.seed, "seeds": [args.seed], **overrides})
    t0 = time.perf_counter()
    data, ev = E.prepare(params)
    qa = ev.scene_qa
    print(f"# scene QA / cloze calibration, seed {args.seed}, overrides {overrides}")
    print(f"# scene QA: {len(qa.train_y)} train / {len(qa.test_y)} test questions; majority "
          f"{V.chance_scores(ev)['multimodal'][V.SCENE_QA]:.1f} %, question-only baseline "
          f"{D.question_prior_accuracy(qa.texts[0], qa.train_y, qa.texts[1], qa.test_y):.1f} %")
    models = {"untrained": build_model(E.sizes_from(params), args.seed).eval()}
    for name in ("FLAVA_C", "FLAVA_MM", "MLM"):
        models[name] = trained(params, data, name, args.seed, Path(args.cache))
    print(f"# rows trained or loaded in {time.perf_counter() - t0:.0f} s", flush=True)
    for name in ("untrained", "MLM"):
        print(f"- cloze, {name}: {V.cloze_probe(models[name], ev.cloze, args.seed):.1f} % "
              f"(majority {V.chance_scores(ev)['language'][V.CLOZE]:.1f} %)", flush=True)
    for setting in args.qa:
        steps, lr = setting.split(":")
        cfg = V.FinetuneConfig(steps=int(steps), lr=float(lr), warmup=int(steps) // 10)
        for name in ("untrained", "FLAVA_C", "FLAVA_MM"):
            t1 = time.perf_counter()
            acc = V.finetune_multimodal(models[name], qa, cfg, args.seed)
            print(f"- scene QA, {steps} steps at lr {lr}, {name}: {acc:.1f} % ({time.perf_counter() - t1:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
