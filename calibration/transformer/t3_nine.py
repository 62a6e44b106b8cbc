"""Table 3, nine seeds (issue #31): does the design ``t3_heldout.md``'s power analysis asks for settle h = 1?

``t3_heldout.md`` ("Power") estimated that ~9 seeds of base and h = 1 settle "one head is worse" four times in
five. The budget pays for 5 on the record's host (``t3_speed.md``: ~48 min with 9). This script tests that
estimate on fresh seeds **130-138**, disjoint from the record's 0-4 and the other calibrations' 100-121: the
rows base, A: h=1 and source-blind (every claim's precondition), with ``t3_heldout.py``'s training (the
record's code and settings; each run scored on the 400 dev verses + 4,800 held-out verses, whose first 1,200 are
the record's), judged with the record's code on the record's design (1,200 held-out verses). The rule is in
``t3_nine.md``; nothing here changes the cpu profile.

    # train: one JSON line per (row, seed) in runs/t3_nine.<part>.jsonl, one file per process
    .venv/bin/python calibration/transformer/t3_nine.py train --jobs "base:130,A: h=1:130,..." --part a
    .venv/bin/python calibration/transformer/t3_nine.py judge     # writes runs/t3_nine_judge.json
"""

from __future__ import annotations

import json
import sys

import t3_heldout  # beside this script (its folder is first on sys.path)
import t3_judging

RUNS = t3_heldout.RUNS
SEEDS = list(range(130, 139))
ROWS = ["base", "A: h=1", "source-blind"]
HELD = 1200  # the record's design
CLAIMS = ("t3_one_head_worse", "t3_one_head_worse_best", "t3_base_reads_source")


def judge_seeds(runs: dict, seeds: list[int], params, base, recipe, epoch) -> dict:
    finished = [t3_heldout.design_row(runs[r, s], HELD) for r in ROWS for s in seeds]
    table, claims = t3_judging.judge(params, finished, base, recipe, epoch)
    ppl = {r: table[r]["dev_ppl_per_seed"] for r in ROWS}
    diff = [a - b for a, b in zip(ppl["A: h=1"], ppl["base"])]
    return {"seeds": seeds, "h1_minus_base_per_seed": [round(x, 3) for x in diff],
            "claims": {k: claims[k] for k in CLAIMS if k in claims}}


def judge(_args) -> None:
    params, _, base, recipe, epoch = t3_heldout.setup()
    runs = t3_judging.load_runs(RUNS, "t3_nine")
    missing = [f"{r}:{s}" for r in ROWS for s in SEEDS if (r, s) not in runs]
    if missing:
        sys.exit(f"runs missing: {','.join(missing)}")
    out = {"rule": "t3_nine.md", "heldout": HELD,
           "nine": judge_seeds(runs, SEEDS, params, base, recipe, epoch),
           "first_five": judge_seeds(runs, SEEDS[:5], params, base, recipe, epoch)}  # information only
    for name in ("nine", "first_five"):
        print(f"\n{name} (seeds {out[name]['seeds'][0]}-{out[name]['seeds'][-1]}): h=1 - base per seed "
              f"{out[name]['h1_minus_base_per_seed']}")
        for key, c in out[name]["claims"].items():
            print(t3_judging.claim_line(key, c, width=26))
    (RUNS / "t3_nine_judge.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    t3_heldout.cli(__doc__, "t3_nine", "base:130", judge, seeds=SEEDS)


if __name__ == "__main__":
    main()
