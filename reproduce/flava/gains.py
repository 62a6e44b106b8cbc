"""FLAVA's Table 3 arithmetic on recorded values: per-seed values, paired differences over seeds (t 95 %),
each row's gains over the untrained row and over chance or a baseline, and their markdown tables.
Functions of recorded values only (``experiments.per_seed`` records), shared by ``sections``' claims."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from reproduce import claims
from reproduce.flava import evaluation as V
from reproduce.flava import experiments as E

UNTRAINED = E.UNTRAINED


def gain_table(seeds: Sequence[Mapping[str, Any]], chance: Mapping[str, Mapping[str, float]]) -> dict[str, dict]:
    """Per trained row and domain it reports: the gain over the untrained row (paired by seed, t 95 %)
    and over chance (mean over seeds minus the chance average), in points."""
    rows = [r for r in dict.fromkeys(x["row"] for x in seeds) if r != UNTRAINED]
    if UNTRAINED not in {x["row"] for x in seeds}:
        return {}
    out: dict[str, dict] = {}
    for row in rows:
        domains = [d for d in E.DOMAINS if any(x["row"] == row and x[d] for x in seeds)]
        out[row] = {d: {"over_untrained": paired_difference(seeds, row, UNTRAINED, d).to_dict(),
                        "over_chance": _mean(per_seed_values(seeds, row, d)) - chance[d]["average"]} for d in domains}
    return out


def _mean(values: Mapping[int, float]) -> float:
    return math.fsum(values.values()) / len(values)


def gains_markdown(gains: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: each row's gain per domain over the untrained row [95 % CI] and over chance."""
    return _gains_markdown(gains, list(E.DOMAINS), {d: "chance" for d in E.DOMAINS}, "over_chance")


def _gains_markdown(gains: Mapping[str, Mapping[str, Any]], columns: list[str], baseline: Mapping[str, str],
                    key: str) -> str:
    """Markdown: per row and column, the gain over the untrained row [95 % CI] / over ``baseline`` (``key``)."""
    if not gains:
        return ""
    lines = ["| Row | " + " | ".join(f"{c}: over untrained [95 % CI] / over {baseline[c]}" for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row, g in gains.items():
        cells = []
        for c in columns:
            if c not in g:
                cells.append("–")
                continue
            u = claims.Estimate.from_dict(g[c]["over_untrained"])
            cells.append(f"{u.value:+.2f} [{u.low:+.2f}, {u.high:+.2f}] / {g[c][key]:+.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TASK_BASELINE = {V.SCENE_QA: "question-only prior (each test question's most frequent train answer)",
                 V.CLOZE: "majority class"}


def slug(name: str) -> str:
    return name.lower().replace("+", "_").replace(" ", "_")


def task_gain_table(seeds: Sequence[Mapping[str, Any]], baselines: Mapping[str, float]) -> dict[str, dict]:
    """Per trained row and new task (scene QA, cloze): the gain over the untrained row (paired by seed,
    t 95 %) and over the task's unimodal or majority baseline (mean over seeds minus it), in points."""
    if UNTRAINED not in {x["row"] for x in seeds}:
        return {}
    out: dict[str, dict] = {}
    for row in dict.fromkeys(x["row"] for x in seeds):
        if row == UNTRAINED:
            continue
        for task in baselines:
            if all(task in x for x in seeds if x["row"] == row):
                out.setdefault(row, {})[task] = {
                    "over_untrained": paired_difference(seeds, row, UNTRAINED, task).to_dict(),
                    "over_baseline": _mean(per_seed_values(seeds, row, task)) - baselines[task]}
    return out


def task_gains_markdown(gains: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: each row's gain on scene QA and cloze over the untrained row [95 % CI] and over the baseline."""
    return _gains_markdown(gains, list(dict.fromkeys(t for g in gains.values() for t in g)), TASK_BASELINE, "over_baseline")


def per_seed_values(seeds: Sequence[Mapping[str, Any]], row: str, metric: str) -> dict[int, float]:
    """``{seed: value}`` of one row's ``metric`` (a domain average or ``macro``) from ``per_seed`` records."""
    return {int(r["seed"]): float(r[metric]) for r in seeds if r["row"] == row}


def paired_difference(seeds: Sequence[Mapping[str, Any]], a: str, b: str, metric: str) -> claims.Estimate:
    """``a - b`` on ``metric``, seed by seed (the rows share seeds), with its t 95 % interval."""
    va, vb = per_seed_values(seeds, a, metric), per_seed_values(seeds, b, metric)
    if set(va) != set(vb) or not va:
        raise ValueError(f"rows {a!r} and {b!r} must share their seeds to be paired: {sorted(va)} vs {sorted(vb)}")
    order = sorted(va)
    return claims.paired_t([va[s] for s in order], [vb[s] for s in order])


def per_seed_note(seeds, a: str, b: str, metric: str) -> str:
    """A claim's note: both rows' per-seed values of ``metric`` and their means."""
    va, vb = per_seed_values(seeds, a, metric), per_seed_values(seeds, b, metric)

    def values(v: dict[int, float]) -> str:
        return " / ".join(f"{v[s]:.2f}" for s in sorted(v)) + f" (mean {math.fsum(v.values()) / len(v):.2f})"

    return f"{metric} per seed {sorted(va)}: {a} {values(va)}, {b} {values(vb)}"
