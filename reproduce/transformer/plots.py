"""Figures of the Transformer notebook, drawn only from recorded values (``run.measured``).

Each function takes ``(measured, lang)`` and returns a matplotlib Figure; texts go through ``KO``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from reproduce import figures

KO = {
    "Position": "위치",
    "Dimension": "차원",
    "Sinusoidal positional encoding (§3.5)": "사인파 위치 인코딩 (§3.5)",
    "Training step": "학습 스텝",
    "Learning rate": "학습률",
    "Eq. (3) learning-rate schedule": "식 (3) 학습률 스케줄",
    "paper": "논문",
    "ours": "우리 결과",
    "warmup": "워밍업",
    "Head": "헤드",
    "Encoder self-attention, last layer": "인코더 셀프 어텐션, 마지막 층",
    "Sequence length n": "시퀀스 길이 n",
    "FLOPs per sequence": "시퀀스당 FLOPs",
    "Forward time (s)": "순전파 시간 (초)",
    "Cost per layer (Table 1)": "층당 비용 (표 1)",
    "Wall time per layer": "층당 실행 시간",
    "self-attention": "셀프 어텐션",
    "recurrent (LSTM)": "순환 (LSTM)",
    "convolution (k=3)": "합성곱 (k=3)",
    "dilated convolution (k=3)": "팽창 합성곱 (k=3)",
    "Maximum path length (layers or steps)": "최대 경로 길이 (층 또는 스텝)",
    "Maximum path length from the Jacobian (Table 1)": "야코비안으로 잰 최대 경로 길이 (표 1)",
    "Training loss (label-smoothed)": "학습 손실 (레이블 스무딩)",
    "Test BLEU": "테스트 BLEU",
    "Table 2 recipe at small scale": "작은 규모의 표 2 학습 방법",
    "last, greedy": "마지막, 탐욕",
    "last, beam": "마지막, 빔",
    "averaged, greedy": "평균, 탐욕",
    "averaged, beam": "평균, 빔",
    "Dev perplexity (ours)": "개발셋 퍼플렉서티 (우리 결과)",
    "Dev perplexity (paper)": "개발셋 퍼플렉서티 (논문)",
    "Dev BLEU (ours)": "개발셋 BLEU (우리 결과)",
    "each seed": "시드별 값",
    "Dev BLEU (paper)": "개발셋 BLEU (논문)",
    "Table 3 variations": "표 3 변형",
    "Decoder-encoder attention, last layer": "디코더-인코더 어텐션, 마지막 층",
    "Dev perplexity": "개발셋 퍼플렉서티",
    "Epoch": "에포크",
    "Table 3 learning curves: dev perplexity after every epoch": "표 3 학습 곡선: 에포크마다 잰 개발셋 퍼플렉서티",
    "other rows": "다른 행",
    "best epoch": "최적 에포크",
    "no dropout (P_drop = 0)": "드롭아웃 없음 (P_drop = 0)",
    "base (P_drop = 0.1)": "기본 (P_drop = 0.1)",
    "copy the source": "원문 복사",
    "nearest training sentence": "가장 가까운 학습 문장",
    "source-blind model": "원문을 못 보는 모델",
    "Test BLEU (95 % interval over sentences)": "테스트 BLEU (문장 단위 95 % 구간)",
    "Dev perplexity vs base (%)": "기본 대비 개발셋 퍼플렉서티 (%)",
    "Dev BLEU vs base (%)": "기본 대비 개발셋 BLEU (%)",
    "ours (mean over seeds)": "우리 결과 (시드 평균)",
    "source-blind control": "원문을 못 보는 대조군",
}


def plot_positional_encoding(measured, lang="en"):
    _ = figures.translator(KO, lang)
    pe = np.array(measured["pe.matrix"])  # (positions, D)
    fig, ax = figures.subplots()
    im = ax.imshow(pe.T, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
    ax.grid(False)
    ax.set_xlabel(_("Position"))
    ax.set_ylabel(_("Dimension"))
    ax.set_title(_("Sinusoidal positional encoding (§3.5)"))
    fig.colorbar(im, ax=ax)
    return fig


def plot_lr_schedule(measured, lang="en"):
    _ = figures.translator(KO, lang)
    fig, axes = figures.subplots(1, 2)
    for ax, key, label in ((axes[0], "lr.paper", _("paper")), (axes[1], "lr.ours", _("ours"))):
        rec = measured[key]
        ax.plot(rec["steps"], rec["lr"], label=f"{label}: d_model={rec['d_model']}")
        ax.axvline(rec["warmup"], color="0.5", ls="--", lw=1, label=f"{_('warmup')} = {rec['warmup']}")
        ax.set_xlabel(_("Training step"))
        ax.set_ylabel(_("Learning rate"))
        ax.legend()
    fig.suptitle(_("Eq. (3) learning-rate schedule"))
    return fig


def _head_grid(measured, key: str, rows_key: str, title: str, lang: str):
    _ = figures.translator(KO, lang)
    att = np.array(measured[key])  # (H, rows, S)
    src, rows = measured["attention.src_tokens"], measured[rows_key]
    h = att.shape[0]
    ncols = min(4, h)
    nrows = int(np.ceil(h / ncols))
    fig, axes = figures.subplots(nrows, ncols, height=2.0 * nrows + 0.8, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= h:
            ax.axis("off")
            continue
        ax.imshow(att[i], cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.grid(False)
        ax.set_title(f"{_('Head')} {i + 1}", fontsize=9)
        ax.set_xticks(range(len(src)), src, rotation=90, fontsize=5)
        ax.set_yticks(range(len(rows)), rows, fontsize=5)
    fig.suptitle(_(title))
    return fig


def plot_attention_heads(measured, lang="en"):
    return _head_grid(measured, "attention.encoder_last", "attention.src_tokens", "Encoder self-attention, last layer", lang)


def plot_cross_attention(measured, lang="en"):
    return _head_grid(measured, "attention.cross_last", "attention.tgt_tokens", "Decoder-encoder attention, last layer", lang)


_LAYERS = (("attention", "self-attention"), ("recurrent", "recurrent (LSTM)"), ("convolution", "convolution (k=3)"))


def plot_table1_cost(measured, lang="en"):
    _ = figures.translator(KO, lang)
    n, d = measured["t1.lengths"], measured["t1.width"]
    costs = measured["t1.costs"]
    fig, axes = figures.subplots(1, 2)
    for key, label in _LAYERS:
        axes[0].loglog(n, costs[key]["flops"], marker="o", label=_(label))
        axes[1].loglog(n, costs[key]["seconds"], marker="o", label=_(label))
    for ax, title, ylabel in ((axes[0], "Cost per layer (Table 1)", "FLOPs per sequence"), (axes[1], "Wall time per layer", "Forward time (s)")):
        ax.axvline(d, color="0.5", ls="--", lw=1, label="n = d")
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(v) for v in n], rotation=45)
        ax.minorticks_off()
        ax.set_xlabel(_("Sequence length n"))
        ax.set_ylabel(_(ylabel))
        ax.set_title(_(title))
        ax.legend(fontsize=8)
    return fig


def plot_table1_path(measured, lang="en"):
    _ = figures.translator(KO, lang)
    p = measured["t1.paths"]
    fig, ax = figures.subplots()
    for key, label in (*_LAYERS, ("dilated_convolution", "dilated convolution (k=3)")):
        ax.plot(p["lengths"], p[key], marker="o", label=_(label))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(p["lengths"], [str(v) for v in p["lengths"]])
    ax.minorticks_off()
    ax.set_xlabel(_("Sequence length n"))
    ax.set_ylabel(_("Maximum path length (layers or steps)"))
    ax.set_title(_("Maximum path length from the Jacobian (Table 1)"))
    ax.legend()
    return fig


T2_SYSTEMS = (  # test BLEU bars, bottom to top: controls first, then the 2x2 of §6.1
    ("copy", "copy the source"), ("retrieval", "nearest training sentence"), ("source_blind", "source-blind model"),
    ("last_greedy", "last, greedy"), ("last_beam", "last, beam"), ("averaged_greedy", "averaged, greedy"),
    ("averaged_beam", "averaged, beam"),
)


def plot_table2(measured, lang="en"):
    """Training loss, the dev learning curve, and test BLEU of the 2x2 and of the controls, with intervals."""
    _ = figures.translator(KO, lang)
    losses = np.array(measured["t2.train_loss"])
    bleu = dict(measured["t2.bleu"])
    intervals = dict(measured.get("t2.bleu_intervals") or {})
    if "t2.source_blind" in measured:
        bleu["source_blind"] = measured["t2.source_blind"]["bleu"]
        if "t2.source_blind_interval" in measured:
            intervals["source_blind"] = measured["t2.source_blind_interval"]
    curve = measured.get("t2.dev_curve") or {"steps": [], "dev_ppl": []}
    fig = plt.figure(figsize=(figures.WIDTH_IN, 7.0), layout="constrained")  # the BLEU bars get a full-width row
    panels = fig.subplot_mosaic([["loss", "curve"], ["bleu", "bleu"]], height_ratios=[1, 1.2])
    axes = [panels["loss"], panels["curve"], panels["bleu"]]
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    axes[0].plot(np.arange(1, len(losses) + 1), losses, alpha=0.3)
    axes[0].plot(np.arange(window, len(losses) + 1), smooth)
    axes[0].set_xlabel(_("Training step"))
    axes[0].set_ylabel(_("Training loss (label-smoothed)"))
    axes[1].plot(curve["steps"], curve["dev_ppl"], "o-", ms=3)
    axes[1].set_yscale("log")
    axes[1].set_xlabel(_("Training step"))
    axes[1].set_ylabel(_("Dev perplexity"))
    shown = [(k, label) for k, label in T2_SYSTEMS if k in bleu]
    y = np.arange(len(shown))
    values = np.array([bleu[k] for k, _l in shown])
    low = np.array([intervals.get(k, {}).get("low", bleu[k]) for k, _l in shown])
    high = np.array([intervals.get(k, {}).get("high", bleu[k]) for k, _l in shown])
    colors = ["0.7" if k in ("copy", "retrieval", "source_blind") else figures.PALETTE[0] for k, _l in shown]
    bars = axes[2].barh(y, values, color=colors, xerr=[values - low, high - values], capsize=3)
    axes[2].bar_label(bars, fmt="%.1f", padding=4)
    axes[2].set_yticks(y, [_(label) for _k, label in shown])
    axes[2].set_xlabel(_("Test BLEU (95 % interval over sentences)"))
    axes[2].set_xlim(0, max(high.max(), values.max()) * 1.25 + 0.5)
    fig.suptitle(_("Table 2 recipe at small scale"))
    return fig


def plot_table3_curves(measured, lang="en"):
    """Dev PPL after every epoch of every Table 3 run: base, no-dropout and the source-blind control drawn
    out (each seed a line, its best epoch a triangle), the other rows faint."""
    _ = figures.translator(KO, lang)
    curves = measured["t3.curves"]
    fig, ax = figures.subplots(height=4.8)
    marked = {"base": ("base (P_drop = 0.1)", figures.PALETTE[0], "-"),
              "D: P_drop=0.0": ("no dropout (P_drop = 0)", figures.PALETTE[1], "-"),
              "source-blind": ("source-blind control", "0.35", "--")}
    first_other = True
    for row, c in curves.items():
        if row in marked:
            continue
        for ppl in c["dev_ppl_per_seed"]:
            ax.plot(c["epochs"], ppl, color="0.75", lw=0.8, label=_("other rows") if first_other else None)
            first_other = False
    best_labelled = False
    for row, (label, color, style) in marked.items():
        if row not in curves:
            continue
        c = curves[row]
        for k, ppl in enumerate(c["dev_ppl_per_seed"]):
            ax.plot(c["epochs"], ppl, style, color=color, lw=1.8, label=_(label) if k == 0 else None)
            best = int(np.argmin(ppl))
            ax.plot([c["epochs"][best]], [ppl[best]], "v", color=color, ms=8,
                    label=_("best epoch") if not best_labelled else None)
            best_labelled = True
    ax.set_yscale("log")
    ax.set_xlabel(_("Epoch"))
    ax.set_ylabel(_("Dev perplexity"))
    ax.set_title(_("Table 3 learning curves: dev perplexity after every epoch"))
    ax.legend(fontsize=8)
    return fig


def plot_table3(measured, lang="en"):
    """Table 3 variations on one comparable scale: each row's change from its own base, in %, for dev
    perplexity and dev BLEU (ours: the mean as a bar, each seed a dot; the paper's as a diamond). The
    source-blind control is left out of the bars (it has no paper row) and named in the title."""
    _ = figures.translator(KO, lang)
    table = measured["t3.table"]
    rows = [r for r in table if r not in ("base", "source-blind")]
    base = table["base"]
    paper_base = {"ppl": base.get("paper_ppl"), "bleu": base.get("paper_bleu")}
    x = np.arange(len(rows))
    fig, axes = figures.subplots(2, 1, height=6.5, sharex=True)
    for ax, key, paper_key, label in ((axes[0], "dev_ppl", "ppl", "Dev perplexity vs base (%)"),
                                      (axes[1], "dev_bleu", "bleu", "Dev BLEU vs base (%)")):
        # each row against base on the seeds both ran (a bigger row may run fewer), paired by seed
        by_seed = dict(zip(base["seeds"], base[f"{key}_per_seed"]))
        pairs = [[(v, by_seed[k]) for k, v in zip(table[r]["seeds"], table[r][f"{key}_per_seed"]) if by_seed.get(k)]
                 for r in rows]
        ours = [100 * (sum(v for v, _b in p) / sum(b for _v, b in p) - 1) if p else np.nan for p in pairs]
        ax.bar(x, ours, color=figures.PALETTE[0], label=_("ours (mean over seeds)"))
        dots = [(i, 100 * (v / b - 1)) for i, p in enumerate(pairs) for v, b in p]
        if dots:
            ax.plot([i for i, _v in dots], [v for _i, v in dots], "o", ms=3, color="black", label=_("each seed"))
        paper = [100 * (table[r][f"paper_{paper_key}"] / paper_base[paper_key] - 1)
                 if table[r].get(f"paper_{paper_key}") and paper_base[paper_key] else np.nan for r in rows]
        ax.plot(x, paper, "D", color=figures.PALETTE[1], label=_("paper"))
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_ylabel(_(label))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    axes[1].set_xticks(x, rows, rotation=30, ha="right")
    title = _("Table 3 variations")
    if "source-blind" in table and base["dev_ppl"]:
        title += f" ({_('source-blind control')}: PPL {100 * (table['source-blind']['dev_ppl'] / base['dev_ppl'] - 1):+.0f} %)"
    fig.suptitle(title)
    return fig


FIGURES = {
    "transformer_positional_encoding": plot_positional_encoding,
    "transformer_lr_schedule": plot_lr_schedule,
    "transformer_attention_heads": plot_attention_heads,
    "transformer_cross_attention": plot_cross_attention,
    "transformer_table1_cost": plot_table1_cost,
    "transformer_table1_path": plot_table1_path,
    "transformer_table2_bleu": plot_table2,
    "transformer_table3_variations": plot_table3,
    "transformer_table3_curves": plot_table3_curves,
}
