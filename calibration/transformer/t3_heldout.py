"""Table 3, how many held-out training verses (issue #31): does scoring more of them settle more rows?

``t3_levers.md`` chose design D3: the last-epoch claims score each run's last checkpoint on the 400 short dev
verses + 1,200 held-out training-book verses (``t3_heldout``). There, held-out verses shrank the seeds' spread
of a row difference (h = 1 - base: sd 2.41 on the dev verses alone, 1.18 with them); the record at cacd146 then
missed h = 1 with the same estimate and a wider spread (sd 1.40). This script asks whether more held-out verses
(a smaller share of the dev books' seed-to-seed variation) settle more rows, on fresh seeds.

It trains the record's Table 3 rows with the record's own code (``variations.run_table3_row``, the cpu profile's
``table3_base`` / ``table3_recipe``, one torch thread per process) on seeds 110-114 (disjoint from the record's
0-4 and from the earlier calibrations' 100-109; the bigger row on the first 3, as the record), each scored after
the last epoch on the 400 dev verses + ``H_MAX`` held-out verses (``td.subset_data(heldout=H_MAX)``: distinct,
never trained on; its first 1,200 are the record's). A design H keeps the first H held-out verses.

    # train: one JSON line (a RowResult) per (row, seed) in runs/t3_heldout.<part>.jsonl, one file per process
    .venv/bin/python calibration/transformer/t3_heldout.py train --jobs "base:110,..." --part a
    # judge every Table 3 claim under each design (the rule is in t3_heldout.md)
    .venv/bin/python calibration/transformer/t3_heldout.py judge
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from reproduce import config
from reproduce.data import de_en
from reproduce.transformer import data as td
from reproduce.transformer import variations as v
import t3_judging  # beside this script (its folder is first on sys.path)

RUNS = Path(__file__).resolve().parent / "runs"
H_MAX = 4800
DESIGNS = {"H1200": 1200, "H2400": 2400, "H4800": 4800}  # H4800: for information only (t3_heldout.md, rule 2)
SEEDS = [110, 111, 112, 113, 114]


def setup():
    params = config.resolve("transformer", "cpu", {"t3_heldout": H_MAX, "output_dir": "/tmp/t3_heldout"})
    corpus = de_en.bible_book_corpus(params.bible_dev_books, params.bible_test_books, params.dev_size, params.test_size)
    sub = td.subset_data(corpus, params.t3_train_pairs, params.t3_vocab_size, params.t3_dev_size,
                         max_words=params.t3_max_words, heldout=H_MAX)
    record = td.subset_data(corpus, params.t3_train_pairs, params.t3_vocab_size, params.t3_dev_size,
                            max_words=params.t3_max_words, heldout=1200)
    assert sub.heldout.pairs[:1200] == record.heldout.pairs, "the first 1,200 held-out verses are not the record's"
    recipe, epoch = v.table3_recipe(params, sub)
    return params, sub, v.table3_base(params, sub.vocab_size), recipe, epoch


def train(args, prefix: str = "t3_heldout") -> None:
    torch.set_num_threads(1)
    params, sub, base, recipe, epoch = setup()
    out = RUNS / f"{prefix}.{args.part}.jsonl"  # t3_nine.py writes its own files
    for job in args.jobs.split(","):
        row, seed = job.rsplit(":", 1)
        if int(seed) < 110:
            sys.exit("this calibration's seeds are >= 110 (the record uses 0-4, earlier calibrations 100-109)")
        t0 = time.time()
        result = v.run_table3_row(row, base, sub, dataclasses.replace(recipe, seed=int(seed)), params.beam, params.alpha,
                                  "cpu", eval_every=epoch)
        line = dataclasses.asdict(result) | {"job_s": time.time() - t0}
        with out.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{row} seed {seed}: {line['job_s']:.0f} s, dev + {H_MAX} held-out PPL {result.dev_ppl:.2f}", flush=True)


def design_row(d: dict, held: int) -> v.RowResult:
    """A run as the record's RowResult had it scored the first ``held`` held-out verses."""
    keep = len(d["dev_tokens"]) - d["heldout"] + held
    nll, tokens = d["dev_nll"][:keep], d["dev_tokens"][:keep]
    fields = {f.name for f in dataclasses.fields(v.RowResult)}  # not the line's job_s
    return v.RowResult(**({k: x for k, x in d.items() if k in fields} | {
        "dev_nll": nll, "dev_tokens": tokens, "heldout": held, "dev_ppl": math.exp(math.fsum(nll) / sum(tokens))}))


def judge(args) -> None:
    params, sub, base, recipe, epoch = setup()
    runs = t3_judging.load_runs(RUNS, "t3_heldout")
    rows = [r for r in params.t3_rows if any((r, s) in runs for s in SEEDS)]
    seeds = {r: v.row_seeds(r, SEEDS, params.t3_bigger_seeds) for r in rows}
    missing = [f"{r}:{s}" for r in rows for s in seeds[r] if (r, s) not in runs]
    if missing:
        sys.exit(f"runs missing: {','.join(missing)}")
    out = {"seeds": SEEDS, "rows": rows, "job_s": {r: round(float(np.mean([runs[r, s]["job_s"] for s in seeds[r]])), 1)
                                                   for r in rows}, "designs": {}}
    for design, held in DESIGNS.items():
        finished = [design_row(runs[r, s], held) for r in rows for s in seeds[r]]
        table, claims = t3_judging.judge(params, finished, base, recipe, epoch)
        settled = t3_judging.settled(claims)
        ppl = {r: table[r]["dev_ppl_per_seed"] for r in rows}
        sd = {r: float(np.std([a - b for a, b in zip(ppl[r], ppl["base"])], ddof=1)) for r in rows if r != "base"}
        out["designs"][design] = {"heldout": held, "settled": settled, "mean_ppl": {r: table[r]["dev_ppl"] for r in rows},
                                  "sd_minus_base": sd, "claims": claims}
        print(f"\n{design}: {len(settled)} settled {settled}")
        for key, c in claims.items():
            print(t3_judging.claim_line(key, c))
        print("  seeds' sd of row - base (PPL, paired seeds):", {r: round(x, 2) for r, x in sd.items()})
    print("s per job:", out["job_s"])
    (RUNS / "t3_heldout_judge.json").write_text(json.dumps(out, indent=1) + "\n")


def cli(doc: str, prefix: str, default_jobs: str, judge_fn, seeds: list[int] | None = None,
        rows: list[str] | None = None) -> None:
    """The command line of this script and of the calibrations that train with :func:`train` (``t3_nine.py``,
    ``t3_more_rows.py``): ``train --jobs row:seed,... --part P`` (into ``runs/<prefix>.<P>.jsonl``) or ``judge``.
    A job outside ``seeds`` or ``rows`` (when given) is refused before anything trains."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("mode", choices=("train", "judge"))
    ap.add_argument("--jobs", default=default_jobs, help="row:seed,row:seed,...")
    ap.add_argument("--part", default="a", help=f"output file {prefix}.<part>.jsonl (one per process)")
    args = ap.parse_args()
    if args.mode == "judge":
        return judge_fn(args)
    for job in args.jobs.split(","):
        row, _, seed = job.rpartition(":")
        if not row or not seed.isdigit() or (seeds and int(seed) not in seeds) or (rows and row not in rows):
            sys.exit("--jobs: row:seed pairs" + (f", rows {rows}" if rows else "")
                     + (f", this calibration's seeds are {seeds[0]}-{seeds[-1]}" if seeds else ""))
    train(args, prefix=prefix)


def main() -> None:
    cli(__doc__, "t3_heldout", "base:110", judge)


if __name__ == "__main__":
    main()
