"""Sections 4 and 5 of the RetNet notebook: language modelling (Table 5; Figure 5) and the ablations
(Table 6) — measure, record into the run, claim (the other sections: :mod:`reproduce.retnet.sections`).

``language_modelling`` sweeps every row's learning rate on the sweep seed and trains every row at
its own choice through :mod:`reproduce.retnet.language_models`, records the runs, the table (with
each row's ratio to the no-mixer control), the per-position NLL of the validation windows, then
calls ``claim_language_modelling``; ``ablations`` claims Table 6 from those runs and records each
ratio with its interval and verdict. The ``claim_*`` functions read plain measurements only: the
tests feed them synthetic numbers.

Every claim is fixed here before the run (and registered in ``claims.toml``): relation, threshold
and the threshold's source. Rows share seeds (same data order and initialisation seed), so their
comparisons are paired by seed; each claim is judged where the rows it compares beat the no-mixer
control (per claim, never a global gate). The paper's numbers live in ``sections.PAPER``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from reproduce import claims, distributed
from reproduce.configs.retnet import SPEC

from . import language_models as lms
from .baselines import ABLATIONS, CONTROL, FAMILY, LABELS, MIXERS, LMShape
from .data import HubText, load_corpus
from .sections import PAPER

if TYPE_CHECKING:
    import pandas as pd


def lm_workers(params) -> int:
    """Worker processes for the LMs: the parameter on the CPU; one (this process) on a GPU or under
    several processes, where each process trains its share of every batch."""
    on_gpu = params.device != "cpu" and torch.cuda.is_available()
    return 1 if on_gpu or distributed.world_size() > 1 else params.lm_workers


def _ppl(key: str) -> str:
    value = PAPER["ppl_200m"][key]
    return "not reported" if value is None else f"{value:g}"


# --------------------------------------------------------------------------------------------------
# 4. Language modelling (Table 5) and 5. Ablations (Table 6)
# --------------------------------------------------------------------------------------------------
def _scale(params) -> str:
    return f"{params.lm_hidden}-wide, {params.lm_layers}-layer models trained {params.lm_steps} steps"


def lm_table(runs: Sequence[dict]) -> list[dict]:
    """``language_models.lm_table`` with the paper's perplexity beside each row (figures read ``paper_ppl``)
    and each mixer row's PPL / the no-mixer control's, paired by seed, with its 95 % interval
    (``vs_control``, ``vs_control_low``, ``vs_control_high``; None for the control itself)."""
    ratios = control_ratios(runs)
    out = []
    for row in lms.lm_table(list(runs)):
        r = ratios.get(row["variant"])
        out.append({**row, "paper_ppl": PAPER["ppl_200m"].get(row["variant"]),
                    "vs_control": r.value if r else None, "vs_control_low": claims.from_json(r.low) if r else None,
                    "vs_control_high": claims.from_json(r.high) if r else None})
    return out


def position_nll(runs: Sequence[dict]) -> dict[str, list[float]]:
    """Per row: the mean NLL at each position of the validation windows, averaged over seeds (entry i:
    the token at position i + 1, predicted from i + 1 tokens of context)."""
    out = {}
    for v in dict.fromkeys(r["variant"] for r in runs):
        curves = [r["position_nll"] for r in runs if r["variant"] == v and r.get("position_nll")]
        if curves:
            out[v] = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
    return out


@dataclass
class Table5:
    """Section 4: one row per trained variant (``table``), every run (section 5 claims on them), each
    row's chosen lr."""

    table: pd.DataFrame
    runs: list[dict]
    chosen_lr: dict[str, float]


def language_modelling(params, run) -> Table5:
    """Sweep the lr of every row on the sweep seed, train every Table 5/6 row and the control at its
    own rate (same budget, same seeds); claim the control and Table 5."""
    import pandas as pd

    corpus = load_corpus(params.lm_vocab, params.data, params.corpus_fraction, HubText.from_params(params))
    run.record("lm.corpus", corpus.describe())
    shape = LMShape(vocab_size=corpus.tokenizer.get_vocab_size(), hidden_size=params.lm_hidden, num_layers=params.lm_layers,
                    num_heads=params.lm_heads, gamma_schedule=params.gamma_schedule, head_norm=params.head_norm)
    budget = lms.LMBudget(steps=params.lm_steps, batch=params.lm_batch, length=params.lm_seq, warmup=params.lm_warmup,
                          eval_windows=params.lm_eval_windows, select_windows=params.lm_select_windows)
    lrs = {grid: params[f"lm_lrs_{grid}"] for grid in dict.fromkeys(FAMILY.values())}
    options = lms.LMRunOptions.from_params(params, log_dir=run.state.root / "logs")
    out = lms.train_language_models(corpus, shape, params.variants, params.seeds, lrs, budget, workers=lm_workers(params),
                                    device=params.device, options=options, rows=run.state,
                                    sweep_seed=params.lm_sweep_seed)
    run.record("lm.sweep_seed", params.lm_sweep_seed)
    run.record("lm.sweep", [{k: v for k, v in r.items() if k not in ("window_nll", "position_nll")} for r in out["sweep"]])
    chosen = run.record("lm.chosen_lr", out["chosen_lr"])
    runs = run.record("lm.runs", out["runs"])
    table = run.record("lm.table", lm_table(runs))
    run.record("lm.position_nll", position_nll(runs))
    claim_language_modelling(run, runs, _scale(params))
    return Table5(pd.DataFrame(table).set_index("variant"), runs, chosen)


def per_seed(runs: Sequence[dict], variant: str) -> dict[int, float]:
    """Validation perplexity of ``variant`` per seed."""
    return {r["seed"]: r["valid_ppl"] for r in runs if r["variant"] == variant}


def ppl_ratio(runs: Sequence[dict], a: str, b: str) -> claims.Estimate:
    """PPL(a) / PPL(b), paired by seed (same data order and init seed), with a t interval on the log
    ratio (1 seed: no interval)."""
    pa, pb = per_seed(runs, a), per_seed(runs, b)
    seeds = [s for s in pa if s in pb]
    return claims.paired_t([pa[s] for s in seeds], [pb[s] for s in seeds], stat="ratio")


def _lm_note(runs: Sequence[dict], a: str, b: str, scale: str) -> str:
    seeds = sorted(set(per_seed(runs, a)) & set(per_seed(runs, b)))
    return (f"paired by seed ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: {seeds}); {scale}, far below the "
            "paper's 200M models on 5B tokens: only the direction is tested")


CONTROL_SOURCE = ("ours: a model that mixes tokens must beat one that cannot (embeddings + FFN only); until it "
                  "does, its perplexity says how little the mixer disturbs a bigram-like model, not how well it "
                  "uses its context (issue #16)")


def control_ratios(runs: Sequence[dict]) -> dict[str, claims.Estimate]:
    """PPL(row) / PPL(no-mixer control), paired by seed, for every mixer row trained beside the control."""
    trained = {r["variant"] for r in runs}
    if CONTROL not in trained:
        return {}
    return {v: ppl_ratio(runs, v, CONTROL) for v in MIXERS if v in trained}


def _bound(x: float | None, default: float) -> float:
    return default if x is None else x


def rows_beat_control(runs: Sequence[dict], *rows: str) -> claims.Precondition:
    """The precondition of a claim comparing ``rows``: each of them beats the no-mixer control, i.e.
    the larger upper 95 % bound of PPL(row) / PPL(control) lies below 1 (None: no control ran).

    Per claim (design.md): a row that has not learnt to use its context cannot settle an ordering,
    but it does not block the claims between rows that have."""
    ratios = control_ratios(runs)
    bounds = [_bound(ratios[v].high, math.inf) for v in rows if v in ratios]
    worst = max(bounds) if len(bounds) == len(rows) else None
    return claims.Precondition("larger upper 95 % bound of the compared rows' PPL / the no-mixer control's", worst, "<",
                               1.0, CONTROL_SOURCE)


def _claim_control(run, runs: Sequence[dict], scale: str) -> None:
    """Every mixer row against the no-mixer control, one control claim per row (the precondition of
    the Table 5/6 claims that compare it)."""
    for v, ratio in control_ratios(runs).items():
        run.claim(f"control_{v}_beats_no_mixer", artifact="Tables 5/6 (control)", section=SPEC.section("Table 5"),
                  text=f"validation PPL of {LABELS[v]} / the no-mixer control's (paired by seed)",
                  ours=ratio, relation="<", threshold=1.0, source=CONTROL_SOURCE,
                  paper="not reported (no such control in the paper)", note=_lm_note(runs, v, CONTROL, scale))


def _lr_note(runs: Sequence[dict], *rows: str) -> str:
    """Each compared row's learning rate, chosen by its own sweep (a seed disjoint from the reported ones)."""
    lr = {r["variant"]: r["lr"] for r in runs}
    return "each at its own swept lr (" + ", ".join(f"{LABELS[v]} {lr[v]:g}" for v in rows) + ")"


def size_precondition(runs: Sequence[dict], *rows: str) -> claims.Precondition:
    """Figure 5's crossover is a statement about models of ~2B parameters: testable only at that size."""
    size = max(next(r["params"] for r in runs if r["variant"] == v) for v in rows) / 1e9
    return claims.Precondition("parameters of the larger compared model (billions)", size, ">=",
                               PAPER["figure5_crossover_b"], "paper: Figure 5 / §3.2 (the crossover at ~2B parameters)")


def claim_language_modelling(run, runs: Sequence[dict], scale: str) -> None:
    """The control claims, then Table 5's orderings, each judged where its own rows beat the control."""
    _claim_control(run, runs, scale)
    variants = {r["variant"] for r in runs}
    if {"retnet", "linear_transformer"} <= variants:
        run.claim("table5_retnet_beats_linear_transformer", artifact="Table 5", section=SPEC.section("Table 5"),
                  text="validation PPL of RetNet / the Linear Transformer (elu + 1 feature maps; paired by seed)",
                  ours=ppl_ratio(runs, "retnet", "linear_transformer"), relation="<", threshold=1.0,
                  source="paper: Table 5 (RetNet below Linear Transformer)",
                  paper=f"{_ppl('retnet')} vs {_ppl('linear_transformer')}",
                  note=_lm_note(runs, "retnet", "linear_transformer", scale) + "; " + _lr_note(runs, "retnet",
                                                                                             "linear_transformer"),
                  precondition=rows_beat_control(runs, "retnet", "linear_transformer"))
    if {"retnet", "transformer"} <= variants:
        run.claim("table5_transformer_below_2b", artifact="Figure 5 (§3.2)", section=SPEC.section("Table 5"),
                  text=f"below ~{PAPER['figure5_crossover_b']:g}B parameters RetNet does not beat the Transformer: "
                       "validation PPL of RetNet / Transformer (paired by seed)",
                  ours=ppl_ratio(runs, "retnet", "transformer"), relation=">=", threshold=1.0,
                  source=f"paper: Figure 5 / §3.2 (RetNet overtakes the Transformer only above "
                         f"~{PAPER['figure5_crossover_b']:g}B)",
                  paper=f"RetNet overtakes the Transformer only above ~{PAPER['figure5_crossover_b']:g}B",
                  note=_lm_note(runs, "retnet", "transformer", scale) + "; a RetNet that trains worse for any reason "
                       "would pass this ordering, so it is judged only at the size the paper's crossover is about",
                  precondition=size_precondition(runs, "retnet", "transformer"))


@dataclass
class Table6:
    """Section 5: each ablation that ran beside full RetNet, paper and ours (``table``; empty when none ran)."""

    table: pd.DataFrame


def ablations(params, run, lm: Table5) -> Table6:
    """Claim Table 6 from the runs of section 4 (``lm``); record each ablation's ratio to full RetNet with
    its interval and verdict (``lm.ablation_claims``, what the Table 6 figure draws)."""
    import pandas as pd

    claim_ablations(run, lm.runs, _scale(params))
    run.record("lm.ablation_claims", [
        {"variant": c.id.removeprefix("table6_"), **c.ours.to_dict(), "verdict": c.verdict,
         "paper_ratio": PAPER["ppl_200m"][c.id.removeprefix("table6_")] / PAPER["ppl_200m"]["retnet"]}
        for c in run.claims if c.id.startswith("table6_")])
    return Table6(pd.DataFrame(ablation_rows(lm.runs)))


def ablation_rows(runs: Sequence[dict]) -> list[dict]:
    """One row per ablation that ran beside full RetNet: paper and ours, ratio to full RetNet per seed."""
    trained = {r["variant"] for r in runs}
    if "retnet" not in trained:
        return []
    full = statistics.fmean(per_seed(runs, "retnet").values())
    rows = []
    for v in (v for v in ABLATIONS if v in trained):
        ratio = ppl_ratio(runs, v, "retnet")
        lr = next(r["lr"] for r in runs if r["variant"] == v)
        rows.append({"variant": LABELS[v], "paper PPL": PAPER["ppl_200m"][v], "paper full": PAPER["ppl_200m"]["retnet"],
                     "ours PPL": statistics.fmean(per_seed(runs, v).values()), "ours full": full, "lr": lr,
                     "ratio per seed": [round(u, 4) for u in ratio.units]})
    return rows


def claim_ablations(run, runs: Sequence[dict], scale: str) -> None:
    trained = {r["variant"] for r in runs}
    if "retnet" not in trained:
        return
    for v in (v for v in ABLATIONS if v in trained):
        run.claim(f"table6_{v}", artifact="Table 6", section=SPEC.section("Table 6"),
                  text=f"{LABELS[v]}: validation PPL / full RetNet's (paired by seed)",
                  ours=ppl_ratio(runs, v, "retnet"), relation=">", threshold=1.0,
                  source="paper: Table 6 (every ablation raises perplexity)",
                  paper=f"{_ppl(v)} vs {_ppl('retnet')}",
                  note=_lm_note(runs, v, "retnet", scale) + "; " + _lr_note(runs, v, "retnet"),
                  precondition=rows_beat_control(runs, v, "retnet"))


__all__ = ["Table5", "Table6", "ablation_rows", "ablations", "claim_ablations", "claim_language_modelling",
           "control_ratios", "language_modelling", "lm_table", "lm_workers", "per_seed", "position_nll", "ppl_ratio",
           "rows_beat_control", "size_precondition"]
