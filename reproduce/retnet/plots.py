"""Figures of the RetNet notebook, drawn only from recorded values (``run.measured``).

Each function takes ``(measured, lang)`` and returns a Figure; text goes through ``KO``.
Keys read: ``lm.sweep`` and ``lm.chosen_lr`` (the lr sweep), ``fig6.decode`` (rows of :func:`costs.decode_cost`),
``table4.training`` (rows of :func:`costs.training_cost`), ``lm.table`` and ``lm.runs`` (:func:`lm_sections.lm_table`,
with the paper's perplexity as ``paper_ppl``, and :func:`language_models.train_language_models`),
``lm.ablation_claims`` (Table 6's ratios, intervals and verdicts) and ``lm.position_nll`` (NLL by position).
Records written before a key existed draw what they have (older rows keep their recorded labels).
"""

from __future__ import annotations

import math
import statistics
import textwrap

from reproduce import figures
from reproduce.claims import from_json

KO = {
    "Sequence length (tokens)": "시퀀스 길이 (토큰)",
    "Latency per token (ms)": "토큰당 지연 시간 (ms)",
    "State / KV cache (MiB)": "상태 / KV 캐시 (MiB)",
    "RetNet (recurrent)": "RetNet (순환)",
    "Transformer (StaticCache)": "트랜스포머 (StaticCache)",
    "Transformer (DynamicCache)": "트랜스포머 (DynamicCache)",
    "Softmax attention, unfused (math)": "소프트맥스 어텐션, 비융합 (math)",
    "no mixer (embeddings + FFN)": "믹서 없음 (임베딩 + FFN)",
    "Peak learning rate": "최대 학습률",
    "Perplexity on the selection windows": "선택용 구간의 퍼플렉서티",
    "Learning-rate sweep (first seed)": "학습률 탐색 (첫 번째 시드)",
    "Learning-rate sweep (sweep seed)": "학습률 탐색 (탐색용 시드)",
    "dashed: no-mixer control": "점선: 믹서 없는 대조군",
    "Decoding cost vs length (Figure 6 shape)": "길이에 따른 디코딩 비용 (그림 6 형태)",
    "Training throughput (tokens/s)": "학습 처리량 (토큰/초)",
    "Peak memory of one step (MiB)": "한 스텝의 최대 메모리 (MiB)",
    "Retention, parallel": "리텐션, 병렬",
    "Retention, chunkwise": "리텐션, 청크 순환",
    "Softmax attention (SDPA)": "소프트맥스 어텐션 (SDPA)",
    "Training cost vs length (Table 4 shape)": "길이에 따른 학습 비용 (표 4 형태)",
    "Validation perplexity": "검증 퍼플렉서티",
    "Small language models (Table 5 shape)": "소형 언어 모델 (표 5 형태)",
    "Perplexity change vs full RetNet (%)": "전체 RetNet 대비 퍼플렉서티 변화 (%)",
    "Ablations (Table 6 shape)": "구성 요소 제거 실험 (표 6 형태)",
    "ours": "우리 결과",
    "paper (200M)": "논문 (200M)",
    "Training step": "학습 스텝",
    "Training loss": "학습 손실",
    "Training curves (mean over seeds)": "학습 곡선 (시드 평균)",
    "bars: mean over seeds; whiskers: min-max": "막대: 시드 평균, 수염: 최소-최대",
    "Transformer": "트랜스포머",
    "RetNet": "RetNet",
    "Linear attention": "선형 어텐션",
    "Linear Transformer": "선형 트랜스포머",
    "Tokens of context": "문맥 토큰 수",
    "Mean NLL at this position (nats)": "이 위치의 평균 NLL (nats)",
    "Context use: NLL by position in the validation windows": "문맥 활용: 검증 윈도우 안 위치별 NLL",
    "not recorded in this record": "이 기록에는 없음",
    "PPL / full RetNet (95 % interval over seeds)": "PPL / 전체 RetNet (시드에 대한 95 % 구간)",
    "holds": "성립",
    "contradicted": "반증",
    "inconclusive": "판정 불가",
    "not testable": "검증 불가",
    "− swish gate": "− swish 게이트",
    "− GroupNorm": "− GroupNorm",
    "− γ decay": "− γ 감쇠",
    "− multi-scale decay": "− 다중 스케일 감쇠",
    "reduce head dimension": "헤드 차원 축소",
}

_DECODE = {"retnet": "RetNet (recurrent)", "transformer_static": "Transformer (StaticCache)",
           "transformer_dynamic": "Transformer (DynamicCache)"}
_TRAIN = {"parallel": "Retention, parallel", "chunkwise": "Retention, chunkwise", "attention": "Softmax attention (SDPA)",
          "attention_unfused": "Softmax attention, unfused (math)"}


_OLD_LABELS = {"linear_attention": "Linear attention"}  # rows of earlier records, no longer trained


def _label(variant: str) -> str:
    from .baselines import LABELS

    return LABELS.get(variant) or _OLD_LABELS.get(variant, variant)


def _series(rows, key, value):
    out = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return {k: ([r["length"] for r in v], [r[value] for r in v]) for k, v in out.items()}


def plot_decode_cost(measured, lang="en"):
    """Figure 6 shape: per-token latency and memory of decoding vs context length."""
    _ = figures.translator(KO, lang)
    rows = measured["fig6.decode"]
    fig, (ax_lat, ax_mem) = figures.subplots(1, 2)
    for name, label in _DECODE.items():
        if name not in _series(rows, "model", "latency_ms"):
            continue
        x, y = _series(rows, "model", "latency_ms")[name]
        ax_lat.plot(x, y, marker="o", label=_(label))
        x, y = _series(rows, "model", "memory_bytes")[name]
        ax_mem.plot(x, [b / 2**20 for b in y], marker="o", label=_(label))
    for ax, ylabel in ((ax_lat, "Latency per token (ms)"), (ax_mem, "State / KV cache (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(_("Sequence length (tokens)"))
        ax.set_ylabel(_(ylabel))
    ax_lat.set_ylim(bottom=0)
    ax_mem.set_ylim(bottom=0)
    ax_lat.legend()
    fig.suptitle(_("Decoding cost vs length (Figure 6 shape)"))
    return fig


def plot_training_cost(measured, lang="en"):
    """Table 4 shape: training throughput and peak memory of one step vs sequence length."""
    _ = figures.translator(KO, lang)
    rows = measured["table4.training"]
    fig, (ax_tp, ax_mem) = figures.subplots(1, 2)
    for kind, label in _TRAIN.items():
        series = _series(rows, "kind", "tokens_per_s")
        if kind not in series:
            continue
        ax_tp.plot(*series[kind], marker="o", label=_(label))
        ax_mem.plot(*_series(rows, "kind", "peak_mib")[kind], marker="o", label=_(label))
    for ax, ylabel in ((ax_tp, "Training throughput (tokens/s)"), (ax_mem, "Peak memory of one step (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(_("Sequence length (tokens)"))
        ax.set_ylabel(_(ylabel))
        ax.set_ylim(bottom=0)
    ax_mem.legend(loc="upper left", fontsize=8)
    fig.suptitle(_("Training cost vs length (Table 4 shape)"))
    return fig


def plot_lm_perplexity(measured, lang="en"):
    """Table 5 shape: validation perplexity of the Transformer, RetNet and linear attention, and the
    no-mixer control (grey)."""
    _ = figures.translator(KO, lang)
    from .baselines import CONTROL, TABLE5

    rows = [r for r in measured["lm.table"] if r["variant"] in TABLE5 + (CONTROL,)]
    fig, ax = figures.subplots()
    x = range(len(rows))
    means = [r["ppl_mean"] for r in rows]
    err = [[r["ppl_mean"] - r["ppl_min"] for r in rows], [r["ppl_max"] - r["ppl_mean"] for r in rows]]
    colors = ["0.6" if r["variant"] == CONTROL else figures.PALETTE[i] for i, r in enumerate(rows)]
    ax.bar(x, means, yerr=err, capsize=6, color=colors)
    # long names on two lines, so the labels stay level and apart at blog width
    ax.set_xticks(list(x), [textwrap.fill(_(r["label"]), 16) for r in rows])
    ax.set_ylabel(_("Validation perplexity"))
    ax.set_title(_("Small language models (Table 5 shape)"))
    ax.set_ylim(0, max(r["ppl_max"] for r in rows) * 1.2)  # headroom: the note never touches a bar or whisker
    ax.text(0.99, 0.98, _("bars: mean over seeds; whiskers: min-max"), transform=ax.transAxes, ha="right", va="top",
            fontsize=9)
    return fig


def plot_ablations(measured, lang="en"):
    """Table 6 shape: each ablation's PPL / full RetNet's with its 95 % interval over seeds and its verdict,
    beside the paper's ratio (records without ``lm.ablation_claims``: the ratio of the means)."""
    _ = figures.translator(KO, lang)
    from .baselines import ABLATIONS

    table = {r["variant"]: r for r in measured["lm.table"]}
    claimed = measured.get("lm.ablation_claims")
    if claimed is None:  # an earlier record: no intervals recorded
        full = table["retnet"]
        claimed = [{"variant": v, "value": r["ppl_mean"] / full["ppl_mean"], "low": None, "high": None,
                    "verdict": None, "paper_ratio": r["paper_ppl"] / full["paper_ppl"]}
                   for v, r in table.items() if v in ABLATIONS]
    fig, ax = figures.subplots()
    y = list(range(len(claimed)))
    ours = [c["value"] for c in claimed]
    bounds = [(from_json(c["low"]), from_json(c["high"])) for c in claimed]  # "inf": no interval (one seed)
    finite = [(lo, hi) if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi) else (v, v)
              for v, (lo, hi) in zip(ours, bounds)]
    err = [[v - lo for v, (lo, _hi) in zip(ours, finite)], [hi - v for v, (_lo, hi) in zip(ours, finite)]]
    ax.errorbar(ours, [i - 0.15 for i in y], xerr=err, fmt="o", capsize=5, color=figures.PALETTE[0], label=_("ours"))
    ax.plot([c["paper_ratio"] for c in claimed], [i + 0.15 for i in y], "D", color=figures.PALETTE[1],
            label=_("paper (200M)"))
    ax.axvline(1.0, color="black", linewidth=0.8)
    for i, (c, (_lo, hi)) in enumerate(zip(claimed, finite)):
        if c["verdict"]:
            ax.annotate(_(c["verdict"]), (hi, i - 0.15), xytext=(6, 0), textcoords="offset points", va="center",
                        fontsize=8)
    ax.set_yticks(y, [_(_label(c["variant"])) for c in claimed])
    ax.set_ylim(len(claimed) - 0.5, -0.5)
    right = max(hi for _lo, hi in finite)
    ax.set_xlim(right=right + 0.25 * (right - min(lo for lo, _hi in finite) + 0.05))
    ax.set_xlabel(_("PPL / full RetNet (95 % interval over seeds)"))
    ax.set_title(_("Ablations (Table 6 shape)"))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2, frameon=False)
    return fig


def plot_position_nll(measured, lang="en"):
    """Context use shown directly: the mean NLL at each position of the validation windows, per row (mean
    over seeds). A row that uses its context falls with position; the no-mixer control stays flat."""
    _ = figures.translator(KO, lang)
    from .baselines import ABLATIONS, CONTROL

    curves = measured.get("lm.position_nll") or {}
    fig, ax = figures.subplots()
    if not curves:
        ax.text(0.5, 0.5, _("not recorded in this record"), transform=ax.transAxes, ha="center", va="center")
    for variant, nll in curves.items():
        style = "--" if variant == CONTROL else ":" if variant in ABLATIONS else "-"
        color = "0.5" if variant == CONTROL else None
        ax.plot(range(1, len(nll) + 1), nll, style, color=color, linewidth=1.2, label=_(_label(variant)))
    ax.set_xscale("log", base=2)
    ax.set_xlabel(_("Tokens of context"))
    ax.set_ylabel(_("Mean NLL at this position (nats)"))
    ax.set_title(_("Context use: NLL by position in the validation windows"))
    if curves:
        ax.legend(ncols=2, fontsize=7)
    return fig


def plot_lm_curves(measured, lang="en"):
    """Training loss of every model (mean over seeds at each logged step)."""
    _ = figures.translator(KO, lang)
    from .baselines import CONTROL, TABLE5

    runs = measured["lm.runs"]
    fig, ax = figures.subplots()
    for variant in dict.fromkeys(r["variant"] for r in runs):
        curves = [r["curve"] for r in runs if r["variant"] == variant]
        steps = [p["step"] for p in curves[0]]
        loss = [statistics.fmean(c[i]["loss"] for c in curves) for i in range(len(steps))]
        style = "-" if variant in TABLE5 else "--" if variant == CONTROL else ":"
        ax.plot(steps, loss, style, label=_(_label(variant)))
    ax.set_xlabel(_("Training step"))
    ax.set_ylabel(_("Training loss"))
    ax.set_title(_("Training curves (mean over seeds)"))
    ax.legend(ncols=2, fontsize=8)
    return fig


def plot_lr_sweep(measured, lang="en"):
    """The learning-rate sweep: selection-window perplexity vs peak lr per row (sweep seed), its choice starred."""
    _ = figures.translator(KO, lang)
    from .baselines import ABLATIONS, CONTROL

    sweep = measured["lm.sweep"]
    fig, ax = figures.subplots()
    for variant in dict.fromkeys(r["variant"] for r in sweep):
        rows = sorted((r for r in sweep if r["variant"] == variant), key=lambda r: r["lr"])
        ppl = {r["lr"]: float("nan") if r["select_ppl"] is None else r["select_ppl"] for r in rows}  # None: diverged
        style = "--" if variant == CONTROL else ":" if variant in ABLATIONS else "-"
        ax.plot(list(ppl), list(ppl.values()), style, marker="o", label=_(_label(variant)))
        chosen = measured["lm.chosen_lr"].get(variant)
        if chosen in ppl:
            ax.plot([chosen], [ppl[chosen]], marker="*", markersize=14, color=ax.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlabel(_("Peak learning rate"))
    ax.set_ylabel(_("Perplexity on the selection windows"))
    ax.set_title(_("Learning-rate sweep (first seed)" if "lm.sweep_seed" not in measured else
                   "Learning-rate sweep (sweep seed)"))
    ax.legend(ncols=2, fontsize=7)
    return fig


FIGURES = {
    "retnet_fig6_decode_cost": plot_decode_cost,
    "retnet_table4_training_cost": plot_training_cost,
    "retnet_table5_perplexity": plot_lm_perplexity,
    "retnet_table6_ablations": plot_ablations,
    "retnet_lm_curves": plot_lm_curves,
    "retnet_lm_lr_sweep": plot_lr_sweep,
    "retnet_lm_position_nll": plot_position_nll,
}
