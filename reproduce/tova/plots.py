"""Figures of the TOVA notebook, drawn from recorded values only (``run.measured``)."""

from __future__ import annotations

import numpy as np

from reproduce import figures

from .policies import LABELS

KO = {
    "Multi-state size C (tokens)": "다중 상태 크기 C (토큰)",
    "Perplexity": "퍼플렉서티",
    "Full cache": "전체 캐시",
    "Window": "윈도우",
    "Window+{sinks}": "윈도우+{sinks}",
    "H2O": "H2O",
    "TOVA": "TOVA",
    "Perplexity vs multi-state size": "다중 상태 크기에 따른 퍼플렉서티",
    "KV cache per sequence (MB)": "시퀀스당 KV 캐시 (MB)",
    "Decode throughput (tokens/s)": "디코딩 처리량 (토큰/초)",
    "batch {batch}": "배치 {batch}",
    "Survival (fraction of later steps kept)": "생존율 (이후 단계에서 유지된 비율)",
    "first token": "첫 토큰",
    "newline": "줄바꿈",
    "punctuation": "구두점",
    "other": "기타",
    "Layer": "층",
    "First token": "첫 토큰",
    "All tokens (mean)": "전체 토큰 (평균)",
    "What TOVA keeps (C = {budget})": "TOVA가 유지하는 토큰 (C = {budget})",
    "Layer {layer}": "{layer}번째 층",
    "Token position": "토큰 위치",
    "Decoding step": "디코딩 단계",
    "Position in the chunk (tokens)": "청크 내 위치 (토큰)",
    "PPL / PPL(full cache), per block": "PPL / PPL(전체 캐시), 블록별",
    "{policy}, C = {C}": "{policy}, C = {C}",
    "Window vs full cache by position": "위치별 윈도우 대 전체 캐시",
}

POLICY_ORDER = ("window", "window_sink", "h2o", "tova")
MARKERS = {"window": "v", "window_sink": "s", "h2o": "^", "tova": "o"}


def plot_ppl_vs_budget(measured: dict, lang: str = "en"):
    """Figure 3: perplexity vs C (log scale), one line per policy, the full cache dashed."""
    _ = figures.translator(KO, lang)
    ppl, sinks = measured["fig3.ppl"], measured["fig3.sinks"]
    fig, ax = figures.subplots()
    for i, policy in enumerate(p for p in POLICY_ORDER if p in ppl):
        budgets = sorted(int(c) for c in ppl[policy])
        ax.plot(budgets, [ppl[policy][str(c)] if str(c) in ppl[policy] else ppl[policy][c] for c in budgets],
                marker=MARKERS[policy], color=figures.PALETTE[i], label=_(LABELS[policy]).format(sinks=sinks))
    ax.axhline(measured["fig3.full_ppl"], color="black", linestyle="--", linewidth=1.2, label=_("Full cache"))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(_("Multi-state size C (tokens)"))
    ax.set_ylabel(_("Perplexity"))
    ax.set_title(_("Perplexity vs multi-state size"))
    ax.legend()
    return fig


def by_position(blocks: list[float], full: list[float], per_passage: int) -> np.ndarray:
    """PPL ratio to the full cache at each block position: exp of the mean NLL difference over passages."""
    diff = (np.asarray(blocks) - np.asarray(full)).reshape(-1, per_passage)  # passages, blocks
    return np.exp(diff.mean(axis=0))


def plot_window_by_position(measured: dict, lang: str = "en"):
    """The Window (solid) and Window+i (dashed) at each plain-Window C: PPL / full by position in the chunk."""
    _ = figures.translator(KO, lang)
    blocks, per, size, sinks = (measured["fig3.block_nll"], measured["fig3.blocks_per_passage"], measured["fig3.block"],
                                measured["fig3.sinks"])
    full = blocks["full"]
    x = (np.arange(per) + 0.5) * size  # block centres
    fig, ax = figures.subplots()
    for i, C in enumerate(sorted(int(c) for c in blocks.get("window", {}))):
        color = figures.PALETTE[i % len(figures.PALETTE)]
        ax.plot(x, by_position(blocks["window"][str(C)], full, per), marker=MARKERS["window"], color=color,
                label=_("{policy}, C = {C}").format(policy=_("Window"), C=C))
        if str(C) in blocks.get("window_sink", {}):
            ax.plot(x, by_position(blocks["window_sink"][str(C)], full, per), linestyle="--", color=color,
                    label=_("{policy}, C = {C}").format(policy=_("Window+{sinks}").format(sinks=sinks), C=C))
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel(_("Position in the chunk (tokens)"))
    ax.set_ylabel(_("PPL / PPL(full cache), per block"))
    ax.set_title(_("Window vs full cache by position"))
    ax.legend(fontsize="small")
    return fig


def plot_resources(measured: dict, lang: str = "en"):
    """Table 1: KV bytes per sequence and decode throughput vs C."""
    _ = figures.translator(KO, lang)
    res = measured["table1"]
    budgets = [int(c) for c in res["budgets"]]
    fig, (left, right) = figures.subplots(1, 2)
    left.plot(budgets, [res["kv_mb_per_seq"][str(c)] for c in budgets], marker="o")
    left.set_xscale("log", base=2)
    left.set_xlabel(_("Multi-state size C (tokens)"))
    left.set_ylabel(_("KV cache per sequence (MB)"))
    right.plot(budgets, [res["tokens_per_s"][str(c)] for c in budgets], marker="o", color=figures.PALETTE[1],
               label=_("batch {batch}").format(batch=res["batch"]))
    right.set_xscale("log", base=2)
    right.set_xlabel(_("Multi-state size C (tokens)"))
    right.set_ylabel(_("Decode throughput (tokens/s)"))
    right.legend()
    return fig


def plot_kept_tokens(measured: dict, lang: str = "en"):
    """§6: survival by token class (left) and per layer (right)."""
    _ = figures.translator(KO, lang)
    kept = measured["analysis"]
    classes = [c for c, v in kept["class_survival"].items() if v is not None]
    fig, (left, right) = figures.subplots(1, 2)
    left.bar([_(c) for c in classes], [kept["class_survival"][c] for c in classes], color=figures.PALETTE[: len(classes)])
    left.set_ylabel(_("Survival (fraction of later steps kept)"))
    left.set_ylim(0, 1)
    left.tick_params(axis="x", rotation=20)
    layers = np.arange(len(kept["first_token_by_layer"]))
    right.plot(layers, kept["first_token_by_layer"], marker="o", label=_("First token"))
    right.plot(layers, kept["mean_by_layer"], marker=".", label=_("All tokens (mean)"))
    right.set_xlabel(_("Layer"))
    right.set_ylim(0, 1.05)
    right.legend()
    fig.suptitle(_("What TOVA keeps (C = {budget})").format(budget=kept["budget"]))
    return fig


def plot_occupancy(measured: dict, lang: str = "en"):
    """Figures 8/12-like: for a few layers, which positions (x) are kept at each step (y)."""
    _ = figures.translator(KO, lang)
    kept = measured["analysis"]
    pictures = kept["occupancy"]
    fig, axes = figures.subplots(1, len(pictures), height=3.2)
    axes = np.atleast_1d(axes)
    L = kept["length"]
    for ax, (layer, picture) in zip(axes, pictures.items()):
        ax.imshow(np.asarray(picture), cmap="magma", origin="upper", extent=(0, L, L, 0), vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(_("Layer {layer}").format(layer=layer))
        ax.set_xlabel(_("Token position"))
        ax.grid(False)
    axes[0].set_ylabel(_("Decoding step"))
    return fig


FIGURES = {
    "tova_fig3_ppl_vs_budget": plot_ppl_vs_budget,
    "tova_window_by_position": plot_window_by_position,
    "tova_table1_resources": plot_resources,
    "tova_fig8_kept_tokens": plot_kept_tokens,
    "tova_fig12_occupancy": plot_occupancy,
}
