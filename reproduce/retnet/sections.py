"""One function per section of the RetNet notebook: measure, record into the run, claim.

Each section function (``forms_agree``, ``inference_cost``, ``training_cost``; sections 4 and 5,
``language_modelling`` and ``ablations``, are in :mod:`reproduce.retnet.lm_sections`) measures
through :mod:`reproduce.retnet.costs`, records every value it claims on with ``run.record`` (the
figures read only ``run.measured``), then calls the section's ``claim_<section>`` function, which
reads plain measurements only: the tests feed it synthetic numbers without training anything. It
returns a dataclass of what the notebook shows (``table``) and what later sections need. Claims
name their notebook section as the spec's ``artifacts`` do (``SPEC.section("Table 5")``).

Every claim is fixed here before the run: relation, threshold and the threshold's source
(``paper: <where>`` or ``ours: <reason>``). Language-model rows share seeds (same data order and
initialisation seed), so their comparisons are paired by seed; decode timings are interleaved
round by round, so their ratios are paired by round. The paper's numbers live in ``PAPER`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from reproduce import claims, runtime
from reproduce.configs.retnet import SPEC

from . import costs
from .baselines import LMShape

if TYPE_CHECKING:
    import pandas as pd

# --------------------------------------------------------------------------------------------------
# The paper's numbers (Sun et al., 2023, arXiv:2307.08621): the one place they are typed
# --------------------------------------------------------------------------------------------------
PAPER = {
    # Tables 5 and 6: in-domain perplexity of the 200M models trained on 5B tokens. The Transformer
    # is not a row of Table 5 and the no-mixer control is ours (None).
    "ppl_200m": {"transformer": None, "no_mixer": None, "retnet": 26.05, "linear_transformer": 40.24, "no_gate": 27.84,
                 "no_groupnorm": 27.54, "no_decay": 27.86, "single_decay": 27.02, "small_heads": 27.68},
    # Table 4: training cost of the 1.3B models at 8192 tokens on A100s.
    "table4": {"transformer": {"memory_gb": 74.8, "wps": 10_832},
                       "transformer_flashattention": {"memory_gb": 38.8, "wps": 63_965},
                       "retnet": {"memory_gb": 34.5, "wps": 73_344}},
    # Figure 1 / Introduction: RetNet vs a Transformer with KV cache at 8k tokens (the 6.7B model of Figure 6).
    "figure1": {"decode_throughput_x": 8.4, "memory_saved": 0.70, "latency_x": 15.6},
    # Figure 5 / §3.2: RetNet overtakes the Transformer only above this model size (billions).
    "figure5_crossover_b": 2.0,
}

FORMS_TOL = 1e-10  # float64: the forms agree to ~1e-14 (tests/test_retnet.py: EXACT)
LATENCY_FLAT_MAX = 1.2  # RetNet latency at the longest length / at the shortest
# Figure 6's two timing bars, derived before the run (issue #26) from a model of the bytes a decode step
# moves (costs.decode_bytes_per_step), at the cpu profile's shape: width 512, 2 layers, 4 heads, vocabulary
# 1024, batch 8, float32, 256 -> 4096 tokens, 2 + 10 decode steps of StaticCache room
# (tests/test_retnet.py recomputes them from that function):
# - every step reads the weights (2 x 12 d^2 + 1024 d floats: 27.3 MB); RetNet adds its state, read and
#   written once (2 x 8.4 MB: 44.1 MB at every length); the StaticCache step adds every key/value slot
#   read once (17.6 MB at 256 tokens, 269.2 MB at 4096: 44.8 MB and 296.5 MB in all);
# - at one effective bandwidth for both, StaticCache / RetNet at 4096 tokens would be 296.5 / 44.1 = 6.72x,
#   and the StaticCache step would grow 296.5 / 44.8 = 6.61x from 256 to 4096 tokens;
# - efficiency discount 1/2 (BYTES_MODEL_DISCOUNT) for what the model leaves out: RetNet's step as written
#   passes over its state 5 times, not 2 (decay in place, add k^T v, read out q S: 69.4 MB, which alone
#   gives 4.27x), and every step of both pays fixed per-op costs (~100 small ops on one thread) that
#   shrink every ratio of bytes towards 1;
# - bars: 6.72 / 2 = 3.36 and 6.61 / 2 = 3.31, rounded down to one decimal. The paper's 8.4x (throughput)
#   and 15.6x (latency) at 8k tokens are a 6.7B model with large batches on an A100: not this setting.
BYTES_MODEL_DISCOUNT = 0.5
SPEEDUP_MIN = 3.3  # Transformer (the faster cache) / RetNet per-token latency at the longest length
STATIC_GROWTH_MIN = 3.3  # StaticCache per-token latency at the longest length / at the shortest
KV_LINEAR_TOL = 0.01  # relative: KV bytes ratio vs length ratio
CHUNKWISE_SLOPE_MAX = 1.5  # log-log memory slope: linear 1, quadratic 2


# --------------------------------------------------------------------------------------------------
# 1. The three forms agree (§2.1, eqs. 5-7)
# --------------------------------------------------------------------------------------------------
@dataclass
class FormsAgree:
    """Section 1: max |difference| of the logits per compared pair of forms (``table``)."""

    table: pd.DataFrame
    worst: float  # the largest difference, what ``forms_equal`` claims on


def forms_agree(params, run) -> FormsAgree:
    """Logits of a 2-layer LM in float64: parallel vs recurrent vs chunkwise."""
    import pandas as pd

    rows = run.record("forms.max_abs_diff", costs.forms_agree(params.forms_length, params.forms_chunks, seed=params.seed))
    claim_forms_agree(run, rows)
    return FormsAgree(pd.DataFrame(rows), max(r["max_abs_diff"] for r in rows))


def claim_forms_agree(run, rows: Sequence[dict]) -> None:
    worst = max(r["max_abs_diff"] for r in rows)
    chunks = [r["chunk"] for r in rows if r["chunk"] is not None]
    run.claim("forms_equal", artifact="§2.1 eqs. (5)-(7)", section=SPEC.section("§2.1 eqs. (5)-(7)"),
              text=f"parallel == recurrent == chunkwise: max |difference| of LM logits (float64, chunks {chunks})",
              ours=claims.exact(worst), relation="<=", threshold=FORMS_TOL,
              source="ours: float64 rounding of a 2-layer LM's logits is ~1e-14; a wrong term would be >= 1e-3",
              paper="equal in exact arithmetic")


# --------------------------------------------------------------------------------------------------
# 2. Inference cost (Figure 6)
# --------------------------------------------------------------------------------------------------
@dataclass
class Figure6:
    """Section 2: per-token latency and state/KV bytes by length and decoder (``table``), and ratios."""

    table: pd.DataFrame
    summary: dict  # costs.decode_summary


def inference_cost(params, run, rt) -> Figure6:
    """Per-token decode latency and state/KV bytes vs context length."""
    shape = LMShape(vocab_size=1024, hidden_size=params.cost_hidden, num_layers=params.cost_layers,
                    num_heads=params.cost_heads, gamma_schedule=params.gamma_schedule, head_norm=params.head_norm)
    dtype = runtime.autocast_dtype(params.precision, torch.device(rt.device)) or torch.float32  # bf16 on a GPU (auto)
    measured = run.state.row("fig6.decode", lambda: dict(zip(("rows", "load"), runtime.timed(lambda: costs.decode_cost(
        shape, params.decode_lengths, params.decode_batch, params.decode_steps, device=rt.device, dtype=dtype)))),
        timed=True)
    rows = run.record("fig6.decode", measured["rows"])
    run.record("fig6.load", measured["load"])
    summary = run.record("fig6.summary", costs.decode_summary(rows))
    element = torch.finfo(dtype).bits // 8
    moved = run.record("fig6.bytes_per_step", [  # the bytes model the timing bars come from (at this run's shape)
        {"model": r["model"], "length": r["length"], "bytes": costs.decode_bytes_per_step(
            shape, params.decode_batch, r["length"], r["model"], room=2 + params.decode_steps, element_bytes=element)}
        for r in rows])  # room: decode_cost's warmup (2) and timed steps
    claim_inference_cost(run, rows, measured["load"], moved)
    import pandas as pd

    return Figure6(pd.DataFrame(rows).pivot(index="length", columns="model", values=["latency_ms", "memory_bytes"]),
                   summary)


def _median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> claims.Estimate:
    """median(numerator) / median(denominator), bootstrapped over decode rounds (paired: one round
    times one step of every point)."""
    import numpy as np

    return claims.paired_bootstrap(
        [numerator, denominator], lambda a, b, axis=-1: np.median(a, axis=axis) / np.median(b, axis=axis),
        "decode rounds")


def claim_inference_cost(run, rows: Sequence[dict], load: dict | None,
                         bytes_per_step: Sequence[dict] | None = None) -> None:
    """Figure 6 claims, as the paper draws it: the Transformer's per-token latency grows with the length
    and RetNet's stays flat, and RetNet is faster at the longest length. The speed-up is judged against
    the strongest Transformer baseline: whichever of transformers' caches (StaticCache, DynamicCache)
    decodes faster at the longest length (a rule fixed here, applied to the measured medians); the other
    is recorded beside it. Both timing bars come from the bytes model above (``SPEEDUP_MIN``): the bytes
    the StaticCache moves, the smaller of the two caches', so the speed-up bar holds for either.
    ``bytes_per_step`` (rows of model, length, bytes: :func:`costs.decode_bytes_per_step` at the run's
    shape) goes into the notes. The timing claims are judged only when nothing else was busy on the
    machine (``load``: :func:`runtime.timed`), over every interleaved decode round."""
    idle = runtime.idle_precondition(load)
    moved = {(r["model"], r["length"]): r["bytes"] for r in bytes_per_step or ()}

    def model_note(numerator: tuple, denominator: tuple) -> str:
        if numerator not in moved or denominator not in moved:
            return ""
        return (f"; bytes model at this run's shape: {moved[numerator] / 1e6:.1f} / {moved[denominator] / 1e6:.1f} MB "
                f"per step = {moved[numerator] / moved[denominator]:.2f}x, times the discount {BYTES_MODEL_DISCOUNT:g} for the bar")

    by = {(r["model"], r["length"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    short, long = lengths[0], lengths[-1]
    fig1 = PAPER["figure1"]
    rounds = len(by["retnet", long]["step_ms"])
    run.claim("fig6_retnet_latency_flat", artifact="Figure 6", section=SPEC.section("Figure 6"),
              text=f"RetNet per-token latency at {long} tokens / at {short} tokens (median of {rounds} steps)",
              ours=_median_ratio(by["retnet", long]["step_ms"], by["retnet", short]["step_ms"]),
              relation="<=", threshold=LATENCY_FLAT_MAX,
              source="ours: 'flat' read as at most 20 % growth over the measured range (the paper draws curves only)",
              paper="flat in length", precondition=idle,
              note="timings of one machine, paired by decode round; the state has the same size at every length; "
                   + runtime.load_note(load))
    baselines = [b for b in costs.BASELINES if (b, long) in by]
    if baselines:
        best = costs.strongest_baseline(list(rows))
        other = [b for b in baselines if b != best]
        beside = "".join(f"; against {costs.DECODERS[b][1]}: "
                         f"{by[b, long]['latency_ms'] / by['retnet', long]['latency_ms']:.2f}x" for b in other)
        run.claim("fig6_speedup_at_longest", artifact="Figure 6 / Figure 1", section=SPEC.section("Figure 6"),
                  text=f"Transformer ({costs.DECODERS[best][1]}, the faster of transformers' caches here) / RetNet "
                       f"per-token latency at {long} tokens (median of {rounds} interleaved steps)",
                  ours=_median_ratio(by[best, long]["step_ms"], by["retnet", long]["step_ms"]),
                  relation=">=", threshold=SPEEDUP_MIN,
                  source="ours: bytes moved per step, StaticCache / RetNet at 4096 tokens in the cpu profile's shape "
                         "(296.5 / 44.1 MB = 6.72x), halved for RetNet's extra passes over its state and fixed "
                         "per-op costs (the halving is our discount, chosen when earlier records' speed-ups, "
                         "2.49x-5.24x, had been seen); registered before the run (sections.SPEEDUP_MIN)",
                  paper=f"{fig1['decode_throughput_x']:g}x throughput, {fig1['latency_x']:g}x lower latency at 8k (6.7B)",
                  note=f"baseline: the faster Transformer cache at {long} tokens (SDPA attention){beside}"
                       + model_note(("transformer_static", long), ("retnet", long)) + "; " + runtime.load_note(load),
                  precondition=idle)
    if ("transformer_static", long) in by:
        run.claim("fig6_transformer_latency_grows", artifact="Figure 6", section=SPEC.section("Figure 6"),
                  text=f"the Transformer's (StaticCache) per-token latency at {long} tokens / at {short} tokens "
                       f"(median of {rounds} interleaved steps)",
                  ours=_median_ratio(by["transformer_static", long]["step_ms"], by["transformer_static", short]["step_ms"]),
                  relation=">=", threshold=STATIC_GROWTH_MIN,
                  source="ours: bytes moved per StaticCache step at 4096 / at 256 tokens in the cpu profile's shape "
                         "(296.5 / 44.8 MB = 6.61x), halved for fixed per-op costs (our discount, chosen when "
                         "earlier records' growth, 3.94x-5.22x, had been seen); registered before the run "
                         "(sections.STATIC_GROWTH_MIN)",
                  paper="grows with the length (Figure 6), while RetNet's stays flat (fig6_retnet_latency_flat)",
                  note="StaticCache: written in place, no per-step copy of the cache; paired by decode round"
                       + model_note(("transformer_static", long), ("transformer_static", short)) + "; "
                       + runtime.load_note(load), precondition=idle)
    run.claim("fig6_state_flat", artifact="Figure 6", section=SPEC.section("Figure 6"),
              text=f"RetNet's decoding state bytes at {long} tokens / at {short} tokens",
              ours=claims.exact(by["retnet", long]["memory_bytes"] / by["retnet", short]["memory_bytes"]),
              relation="~=", threshold=1.0, tol=0.0, source="paper: Figure 6 (RetNet's memory constant in length)",
              paper="constant")
    if ("transformer_dynamic", long) in by:  # the KV of exactly n tokens (a StaticCache holds its preallocated room too)
        kv = {n: by["transformer_dynamic", n]["memory_bytes"] for n in (short, long)}
        run.claim("fig6_kv_linear", artifact="Figure 6", section=SPEC.section("Figure 6"),
                  text=f"the Transformer's KV-cache bytes (DynamicCache) at {long} / at {short} tokens, against the "
                       "length ratio",
                  ours=claims.exact(kv[long] / kv[short]),
                  relation="~=", threshold=long / short, tol=KV_LINEAR_TOL, rel=True,
                  source="paper: Figure 6 (the Transformer's memory grows linearly with length)",
                  paper="grows linearly")


# --------------------------------------------------------------------------------------------------
# 3. Training cost (Table 4)
# --------------------------------------------------------------------------------------------------
@dataclass
class Table4:
    """Section 3: throughput and peak memory by length and kind (``table``), and ratios and slopes."""

    table: pd.DataFrame
    summary: dict  # costs.training_summary


def training_cost(params, run, rt) -> Table4:
    """Throughput and peak memory of one training step of one block vs length."""
    import pandas as pd

    autocast = runtime.autocast_dtype(params.precision, torch.device(rt.device))
    measured = run.state.row("table4.training", lambda: dict(zip(("rows", "load"), runtime.timed(lambda: costs.training_cost(
        params.train_lengths, params.train_hidden, params.train_heads, params.train_batch, params.train_chunk,
        params.train_reps, threads=rt.threads, seed=params.seed, device=rt.device, autocast=autocast)))), timed=True)
    rows = run.record("table4.training", measured["rows"])
    run.record("table4.load", measured["load"])
    summary = run.record("table4.summary", costs.training_summary(rows))
    claim_training_cost(run, rows, measured["load"])
    return Table4(pd.DataFrame(rows).pivot(index="length", columns="kind", values=["tokens_per_s", "peak_mib"]),
                  summary)


def claim_training_cost(run, rows: Sequence[dict], load: dict | None) -> None:
    """Table 4 claims: memory (exact byte counts), throughput (timed steps, judged only when nothing
    else was busy on the machine: ``load`` from :func:`runtime.timed`)."""
    s = costs.training_summary(list(rows))
    mem, tput, long, slope = s["memory_at_longest"], s["throughput_at_longest"], s["longest"], s["memory_slope"]
    lengths = sorted({r["length"] for r in rows})
    t4 = PAPER["table4"]
    single = "a single measurement per point (one step in a fresh process), no interval"
    if "attention" in mem:  # registered first (issue #24: restored after its replacement was found after the fact)
        run.claim("table4_memory_vs_attention", artifact="Table 4", section=SPEC.section("Table 4"),
                  text=f"peak memory of chunkwise retention / fused softmax attention (SDPA) at {long} tokens",
                  ours=claims.exact(mem["chunkwise"] / max(mem["attention"], 1e-9)), relation="<", threshold=1.0,
                  source="paper: Table 4 (RetNet below both Transformers at 8k, 1.3B)",
                  paper=f"{t4['retnet']['memory_gb']:g} GB vs {t4['transformer_flashattention']['memory_gb']:g} GB "
                        f"(FlashAttention), 1.3B at 8k",
                  note=single + "; the paper's gap is between fused GPU kernels; ours is unfused PyTorch chunkwise "
                                "retention against CPU SDPA's fused kernel")
    if "attention_unfused" in mem:
        run.claim("table4_memory_vs_unfused_attention", artifact="Table 4", section=SPEC.section("Table 4"),
                  text=f"peak memory of chunkwise retention / unfused (math) softmax attention at {long} tokens",
                  ours=claims.exact(mem["chunkwise"] / max(mem["attention_unfused"], 1e-9)), relation="<", threshold=1.0,
                  source="paper: Table 4 (RetNet below the Transformer without FlashAttention at 8k, 1.3B)",
                  paper=f"{t4['retnet']['memory_gb']:g} GB vs {t4['transformer']['memory_gb']:g} GB (vanilla), "
                        f"{t4['transformer_flashattention']['memory_gb']:g} GB (FlashAttention), 1.3B at 8k",
                  note=single)
    if len(lengths) > 1:
        run.claim("table4_chunkwise_memory_linear", artifact="Table 4 / §2.1", section=SPEC.section("Table 4"),
                  text=f"log-log slope of chunkwise retention's peak memory between {lengths[-2]} and {long} tokens",
                  ours=claims.exact(slope["chunkwise"]), relation="<=", threshold=CHUNKWISE_SLOPE_MAX,
                  source="ours: the midpoint between linear (1; less with a fixed overhead) and quadratic (2) growth",
                  paper="chunkwise recurrent: linear memory in the sequence length",
                  note=single + "; slopes of the other forms on the same pair: " +
                       ", ".join(f"{k} {v:.2f}" for k, v in slope.items() if k != "chunkwise" and v is not None))
    by = {(r["kind"], r["length"]): r for r in rows}
    chunk_s, attn_s = by["chunkwise", long].get("step_s"), by["attention", long].get("step_s")
    interleaved = by["chunkwise", long].get("timing") == "interleaved" and len(chunk_s or ()) == len(attn_s or ())
    if chunk_s and attn_s and interleaved:  # round r timed one step of each kernel: paired by round
        import numpy as np

        ratio = claims.paired_bootstrap([attn_s, chunk_s], lambda a, b, axis=-1: np.mean(a, axis=axis) /
                                        np.mean(b, axis=axis), "interleaved rounds")
    elif chunk_s and attn_s:
        ratio = claims.bootstrap_groups([attn_s, chunk_s], lambda g: float(g[0].mean() / g[1].mean()), "timed steps")
    else:
        ratio = claims.exact(tput["chunkwise"] / tput["attention"])
    run.claim("table4_throughput_vs_attention", artifact="Table 4", section=SPEC.section("Table 4"),
              text=f"training throughput of chunkwise retention / fused softmax attention (SDPA) at {long} tokens",
              ours=ratio, relation=">=", threshold=1.0,
              source="paper: Table 4 (RetNet faster than both Transformers at 8k, 1.3B)",
              paper=f"{t4['retnet']['wps']:,} vs {t4['transformer_flashattention']['wps']:,} wps (FlashAttention), "
                    f"{t4['transformer']['wps']:,} (vanilla)",
              note=(f"the interval resamples {len(chunk_s)} interleaved rounds (one step of every kernel each), "
                    "paired" if interleaved and ratio.noisy else
                    "the interval resamples the timed steps of each kernel (each in its own process)" if ratio.noisy else
                    "a single timing per point, no interval") + "; unfused chunkwise retention (a Python loop over "
                   "chunks) against the fused SDPA kernel (the unfused form's throughput is in the table); "
                   + runtime.load_note(load), precondition=runtime.idle_precondition(load))
    run.claim("table4_chunkwise_vs_parallel_memory", artifact="§2.1 / Table 4", section=SPEC.section("Table 4"),
              text=f"peak memory of chunkwise / parallel retention at {long} tokens",
              ours=claims.exact(mem["chunkwise"] / max(mem["parallel"], 1e-9)), relation="<", threshold=1.0,
              source="paper: §2.1 (the chunkwise form trains long sequences in linear memory)",
              paper="chunkwise: linear memory for long sequences", note=single)


# --------------------------------------------------------------------------------------------------
# The compared notebook cell: values that do not depend on the machine
# --------------------------------------------------------------------------------------------------
def stable_values(run) -> dict:
    """The paper's table, the float64 check, byte counts, parameter counts and the claims' relations."""
    m = run.measured
    out: dict = {"paper": PAPER}
    if "forms.max_abs_diff" in m:
        rows = m["forms.max_abs_diff"]
        out["forms_compared"] = [f"{r['compared']}" + (f" (chunk {r['chunk']})" if r["chunk"] is not None else "")
                                 for r in rows]
        out["forms_equal_below_1e-10"] = max(r["max_abs_diff"] for r in rows) < FORMS_TOL
    if "fig6.decode" in m:
        rows = m["fig6.decode"]
        lengths = sorted({r["length"] for r in rows})
        mem = {(r["model"], r["length"]): r["memory_bytes"] for r in rows}
        out["fig6"] = {"lengths": lengths, "decoders": list(dict.fromkeys(r["model"] for r in rows)),
                       "state_bytes": [mem["retnet", n] for n in lengths],
                       "state_bytes_ratio": mem["retnet", lengths[-1]] / mem["retnet", lengths[0]]}
        for b in (b for b in costs.BASELINES if (b, lengths[0]) in mem):
            out["fig6"][f"{b}_bytes"] = [mem[b, n] for n in lengths]
    if "table4.training" in m:
        rows = m["table4.training"]
        out["table4_points"] = [f"{r['kind']}@{r['length']}" for r in rows]
    if "lm.runs" in m:
        runs = m["lm.runs"]
        out["lm_params"] = {v: next(r["params"] for r in runs if r["variant"] == v)
                            for v in dict.fromkeys(r["variant"] for r in runs)}
        out["lm_trainable_params"] = {v: next(r["trainable_params"] for r in runs if r["variant"] == v)
                                      for v in dict.fromkeys(r["variant"] for r in runs)}
        out["lm_seeds"] = sorted({r["seed"] for r in runs})
        out["lm_swept_lrs"] = sorted({r["lr"] for r in m.get("lm.sweep", [])})
    out["claims"] = {c.id: claims.relation_text(c.to_dict()) for c in run.claims}
    return out


__all__ = ["PAPER", "Figure6", "FormsAgree", "Table4", "claim_forms_agree", "claim_inference_cost",
           "claim_training_cost", "forms_agree", "inference_cost", "stable_values", "training_cost"]
