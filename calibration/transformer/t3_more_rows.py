"""Table 3, rows never tried at the record's design (issue #31): can h = 32 or d_k / 4 settle a third row?

The cpu profile settles two Table 3 rows (N - 1 contradicted, learned positions holds); h = 1 and d_ff x 2 stay
inconclusive, and ``t3_nine.md`` found that more seeds are no reliable way to settle h = 1. Two rows of the
paper's Table 3 have claims in the ledger but were never trained at the record's design (400 dev + 1,200
held-out verses): (A) h = 32 (``t3_too_many_heads_worse``) and (B) d_k / 4 (``t3_small_dk_hurts``; tried once
at the older 300-dev-verse design in ``t3_power.md``: inconclusive, +0.93 [-0.66, +2.51]). This script trains
them on seeds **130-134** with ``t3_heldout.py``'s training (the record's code and settings), pairs them with
``t3_nine.py``'s base, A: h=1 and source-blind runs of the same seeds (the same code; ``t3_speed.md`` showed
runs are identical to the last digit across hosts), and judges all five rows with the record's code on the
record's design. The rule, written before any run, is in ``t3_more_rows.md``.

    # train: one JSON line per (row, seed) in runs/t3_more_rows.<part>.jsonl, one file per process
    .venv/bin/python calibration/transformer/t3_more_rows.py train --jobs "A: h=32:130,..." --part a
    .venv/bin/python calibration/transformer/t3_more_rows.py judge   # writes runs/t3_more_rows_judge.json
"""

from __future__ import annotations

import json
import statistics
import sys

import t3_heldout  # beside this script (its folder is first on sys.path)
import t3_judging

RUNS = t3_heldout.RUNS
SEEDS = list(range(130, 135))
NEW = ["A: h=32", "B: d_k/4"]  # the rows this script trains, cheapest first is decided by their measured seconds
OLD = ["base", "A: h=1", "source-blind"]  # t3_nine.py's runs of the same seeds
ROWS = ["base", "A: h=1", "A: h=32", "B: d_k/4", "source-blind"]  # the profile's order: heads, then (B)
HELD = 1200  # the record's design
CLAIM = {"A: h=32": "t3_too_many_heads_worse", "B: d_k/4": "t3_small_dk_hurts"}
# The budget (rule 4 of t3_more_rows.md): the record at 26b1c5a ran 37.8 min on a slower host; t3_nine.py's jobs
# here took 1.15-1.22x less time than the record's same rows (base 91.6 s against 105.1): 1.15, the smallest.
RECORD_MIN, HOST_FACTOR, LINE_MIN, RECORD_SEEDS = 37.8, 1.15, 40.5, 5


def budget(job_s: dict[str, float], chosen: list[str]) -> tuple[float, float]:
    """Predicted minutes of the cpu record with ``chosen`` rows added: (this host, the record's host at 26b1c5a).
    The two processes share the added jobs; a job here also scores 3,600 held-out verses the record does not."""
    extra = sum(job_s[r] * RECORD_SEEDS for r in chosen) / 2 / 60
    return RECORD_MIN / HOST_FACTOR + extra, RECORD_MIN + extra * HOST_FACTOR


def judge(_args) -> None:
    params, _, base, recipe, epoch = t3_heldout.setup()
    runs = ({k: d for k, d in t3_judging.load_runs(RUNS, "t3_nine").items() if k[0] in OLD and k[1] in SEEDS}
            | t3_judging.load_runs(RUNS, "t3_more_rows"))
    missing = [f"{r}:{s}" for r in ROWS for s in SEEDS if (r, s) not in runs]
    if missing:
        sys.exit(f"runs missing: {','.join(missing)}")
    finished = [t3_heldout.design_row(runs[r, s], HELD) for r in ROWS for s in SEEDS]
    table, claims = t3_judging.judge(params, finished, base, recipe, epoch)
    settled = [r for r in NEW if CLAIM[r] in t3_judging.settled(claims)]
    job_s = {r: statistics.fmean(runs[r, s]["job_s"] for s in SEEDS) for r in NEW}
    chosen = []
    for r in sorted(settled, key=job_s.get):  # rule 4: cheapest first, while the prediction here stays on the line
        if budget(job_s, chosen + [r])[0] <= LINE_MIN:
            chosen.append(r)
    here, old = budget(job_s, chosen)
    out = {"rule": "t3_more_rows.md", "seeds": SEEDS, "heldout": HELD,
           "dev_ppl_per_seed": {r: [round(x, 3) for x in table[r]["dev_ppl_per_seed"]] for r in ROWS},
           "job_s": {r: round(x, 1) for r, x in job_s.items()}, "settled": settled, "chosen": chosen,
           "predicted_min": {"here": round(here, 1), "record_host": round(old, 1)},
           "claims": {k: c for k, c in claims.items() if k.startswith(tuple(CLAIM.values())) or k == "t3_base_reads_source"}}
    for r in ROWS:
        print(f"  {r:13s} dev PPL per seed {out['dev_ppl_per_seed'][r]}")
    for key, c in out["claims"].items():
        print(t3_judging.claim_line(key, c, width=32))
    print(f"settled: {settled}; s per job {out['job_s']}; chosen for the cpu profile: {chosen}; "
          f"predicted {here:.1f} min here, {old:.1f} min on the record's host")
    (RUNS / "t3_more_rows_judge.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> None:
    t3_heldout.cli(__doc__, "t3_more_rows", "A: h=32:130", judge, seeds=SEEDS, rows=NEW)


if __name__ == "__main__":
    main()
