"""Judge a calibration's Table 3 runs with the record's own code (``variations.tabulate`` + ``claim_table3``),
for ``t3_levers.py``, ``t3_heldout.py`` and ``t3_nine.py``: nothing is written, the claims come back as plain dicts."""

from __future__ import annotations

import json
from pathlib import Path

from reproduce import results
from reproduce.transformer import variations as v


def load_runs(runs_dir: Path, prefix: str) -> dict[tuple[str, int], dict]:
    """Every JSON line of ``<runs_dir>/<prefix>.*.jsonl`` (one file per training process), keyed (row, seed);
    a (row, seed) trained twice is refused rather than one of its lines silently kept."""
    runs = {}
    for path in sorted(runs_dir.glob(f"{prefix}.*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            d = json.loads(line)
            if (d["row"], d["seed"]) in runs:
                raise SystemExit(f"{path.name}: {d['row']} seed {d['seed']} is in the runs twice; keep one line")
            runs[d["row"], d["seed"]] = d
    return runs


def judge(params, finished: list[v.RowResult], base, recipe, epoch: int) -> tuple[dict, dict]:
    """``(table, claims)``: the record's Table 3 table of ``finished`` and every claim it makes on it, by id."""
    table, _, items = v.tabulate(finished, base, recipe, params.t3_epochs, epoch)
    run = results.Run(params)
    run.save_partial = lambda: None  # nothing written: a calibration judges, it records nothing
    v.claim_table3(run, table, items)
    claims = {}
    for c in run.claims:
        d = c.to_dict()
        pre = d["precondition"]
        claims[d["id"]] = {"kind": d["kind"], "verdict": d["verdict"], "value": d["ours"]["value"],
                           "low": d["ours"]["low"], "high": d["ours"]["high"], "units": d["ours"]["units"],
                           "precondition": None if pre is None else [pre["value"], pre["holds"]]}
    return table, claims


def settled(claims: dict) -> list[str]:
    """The settled rows' claims: last-epoch paper claims that hold or are contradicted, precondition met."""
    return sorted(k for k, c in claims.items() if c["kind"] == "paper" and not k.endswith("_best")
                  and c["verdict"] in ("holds", "contradicted") and (c["precondition"] is None or c["precondition"][1]))


def claim_line(key: str, c: dict, width: int = 36) -> str:
    """One judged claim (a dict of :func:`judge`) as the calibrations print it."""
    pre = "" if c["precondition"] is None else f"  pre {c['precondition'][0]:.3f} {'ok' if c['precondition'][1] else 'FAILS'}"
    low, high = (f"{float(x):+.4f}" for x in (c["low"], c["high"]))  # -inf / inf below 2 seeds
    return f"  {key:{width}s} {c['kind']:8s} {c['verdict']:13s} {c['value']:+.4f} [{low}, {high}]{pre}"
