"""Table 3, can speed buy the seeds (issue #31)? The cost of one Table 3 run, and the levers on it.

``t3_heldout.md`` ("Power") found that settling h = 1 four times in five takes ~9 seeds of base and h = 1, four more
runs of each than the record: 7.4 minutes of both cores at the record's speeds (~10 with the source-blind row on
the same seeds) that the 45-minute budget does not have. This script
asks whether a faster run could pay for them without touching the design: it times the record's Table 3 base run
(``variations.run_table3_row``, the cpu profile's ``table3_base`` / ``table3_recipe``, one torch thread) on seed 120
(disjoint from the record's 0-4 and the calibrations' 100-114), in four settings:

- ``fp32``: as the record, alone on the machine;
- ``bf16``: the same run under bf16 autocast (``Recipe.mixed_precision``; this CPU has AVX512-BF16);
- ``fp32_pair``: two fp32 runs at once (seeds 120 and 121), one per core, as the record runs its pool;
- parts of the fp32 run that are not training steps: after its training (``job_s - train_s``: the dev beam
  decode, the last dev and held-out scoring) and, inside ``train_s``, its per-epoch dev evaluations (one dev
  perplexity pass timed alone, x the evaluations).

    .venv/bin/python calibration/transformer/t3_speed.py     # ~8 min on 2 idle cores; writes runs/t3_speed.json
    # where a run's time goes: one run under cProfile, its top functions (runs/t3_speed_profile.<precision>.txt)
    .venv/bin/python calibration/transformer/t3_speed.py --profile no
    .venv/bin/python calibration/transformer/t3_speed.py --profile bf16
    # does the host change the numbers? base and h = 1 on the record's seed 0, against the record (~1.5 min)
    .venv/bin/python calibration/transformer/t3_speed.py --record-seed     # runs/t3_speed_record_seed0.json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import multiprocessing as mp
import pstats
import time
from pathlib import Path

import torch

from reproduce import config
from reproduce.data import de_en
from reproduce.transformer import data as td
from reproduce.transformer import experiments as ex
from reproduce.transformer import variations as v

RUNS = Path(__file__).resolve().parent / "runs"
SEEDS = (120, 121)


def setup():
    params = config.resolve("transformer", "cpu", {"output_dir": "/tmp/t3_speed"})
    corpus = de_en.bible_book_corpus(params.bible_dev_books, params.bible_test_books, params.dev_size, params.test_size)
    sub = v.table3_data(params, td.TranslationData(None, None, None, None, corpus))
    recipe, epoch = v.table3_recipe(params, sub)
    return params, sub, v.table3_base(params, sub.vocab_size), recipe, epoch


def one_run(seed: int, precision: str, parts: bool = False, row: str = "base") -> dict:
    torch.set_num_threads(1)
    params, sub, base, recipe, epoch = setup()
    t0 = time.perf_counter()
    r = v.run_table3_row(row, base, sub, dataclasses.replace(recipe, seed=seed, mixed_precision=precision),
                         params.beam, params.alpha, "cpu", eval_every=epoch)
    out = {"row": row, "seed": seed, "precision": precision, "job_s": time.perf_counter() - t0, "train_s": r.wall_time_s,
           "steps": recipe.steps, "evals": len(r.curve), "dev_ppl": r.dev_ppl, "best_dev_ppl": r.best_dev_ppl,
           "dev_bleu": r.dev_bleu}
    if parts:  # one dev perplexity pass (teacher forcing: its cost does not depend on the weights), timed alone
        model = ex.Transformer(base).eval()
        t = time.perf_counter()
        ex.perplexity(model, sub.dev)
        out["dev_ppl_pass_s"] = time.perf_counter() - t
    return out


def profile(precision: str) -> None:
    prof = cProfile.Profile()
    prof.runcall(one_run, SEEDS[0], precision)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(40)
    path = RUNS / f"t3_speed_profile.{precision}.txt"
    path.write_text(out.getvalue().replace(str(Path.cwd()) + "/", ""))
    print(path.read_text())


def record_seed() -> None:
    """Base and h = 1 on the record's seed 0, here, against the record's numbers (another host ran it)."""
    record = json.loads((Path(__file__).resolve().parents[2] / "results/transformer/cpu.json").read_text())
    table = record["measured"]["t3.table"]
    with mp.get_context("spawn").Pool(2) as pool:
        runs = pool.starmap(one_run, [(0, "no", False, row) for row in ("base", "A: h=1")])
    out = {"record_commit": record["provenance"]["git_commit"], "runs": []}
    for r in runs:
        i = table[r["row"]]["seeds"].index(0)
        theirs = {k: table[r["row"]][f"{k}_per_seed"][i] for k in ("dev_ppl", "best_dev_ppl", "dev_bleu")}
        same = all(r[k] == x for k, x in theirs.items())
        out["runs"].append({"row": r["row"], "here": {k: r[k] for k in theirs}, "record": theirs, "identical": same})
        print(f"{r['row']}: here {[r[k] for k in theirs]}, record {list(theirs.values())}: "
              f"{'identical' if same else 'DIFFERENT'}")
    (RUNS / "t3_speed_record_seed0.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=("no", "bf16"), help="profile one run at this precision instead")
    ap.add_argument("--record-seed", action="store_true", help="base and h = 1 on seed 0 against the record instead")
    args = ap.parse_args()
    RUNS.mkdir(exist_ok=True)
    if args.profile:
        return profile(args.profile)
    if args.record_seed:
        return record_seed()
    res = {"seeds": SEEDS, "machine": f"{mp.cpu_count()} cores, one torch thread per run"}
    ctx = mp.get_context("spawn")  # a process per setting: accelerate fixes its precision once per process
    with ctx.Pool(1) as pool:
        res["fp32"] = pool.apply(one_run, (SEEDS[0], "no", True))
    print("fp32 alone:", res["fp32"], flush=True)
    with ctx.Pool(1) as pool:
        res["bf16"] = pool.apply(one_run, (SEEDS[0], "bf16"))
    print("bf16 alone:", res["bf16"], flush=True)
    with ctx.Pool(2) as pool:
        res["fp32_pair"] = pool.starmap(one_run, [(s, "no") for s in SEEDS])
    print("fp32, two at once:", res["fp32_pair"], flush=True)
    f = res["fp32"]
    pair = sum(r["job_s"] for r in res["fp32_pair"]) / 2
    not_steps = f["evals"] * f["dev_ppl_pass_s"] + f["job_s"] - f["train_s"]
    res["summary"] = {
        "bf16_over_fp32_job": res["bf16"]["job_s"] / f["job_s"],
        "pair_over_alone_job": pair / f["job_s"],
        "not_training_steps_share": not_steps / f["job_s"],
    }
    print("summary:", {k: round(x, 3) for k, x in res["summary"].items()})
    (RUNS / "t3_speed.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
