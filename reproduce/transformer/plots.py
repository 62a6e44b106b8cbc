"""Figures of the Transformer notebook, drawn only from recorded values (``run.measured``).

Each function takes ``(measured, lang)`` and returns a matplotlib Figure; texts go through ``KO``.
"""

from __future__ import annotations

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


def plot_table2(measured, lang="en"):
    _ = figures.translator(KO, lang)
    losses = np.array(measured["t2.train_loss"])
    bleu = measured["t2.bleu"]
    curve = measured.get("t2.dev_curve") or {"steps": [], "dev_ppl": []}
    fig, axes = figures.subplots(1, 3, height=3.8)
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
    names = ("last_greedy", "last_beam", "averaged_greedy", "averaged_beam")
    labels = [_(n.replace("_", ", ")) for n in names]
    values = [bleu[n] for n in names]
    bars = axes[2].bar(range(4), values, color=figures.PALETTE[:4])
    axes[2].bar_label(bars, fmt="%.1f")
    axes[2].set_xticks(range(4), labels, rotation=20)
    axes[2].set_ylabel(_("Test BLEU"))
    fig.suptitle(_("Table 2 recipe at small scale"))
    return fig


def plot_table3_curves(measured, lang="en"):
    """Dev PPL after every epoch of every Table 3 run: base and no-dropout drawn out, the other rows faint."""
    _ = figures.translator(KO, lang)
    curves = measured["t3.curves"]
    fig, ax = figures.subplots(height=4.8)
    marked = {"base": ("base (P_drop = 0.1)", figures.PALETTE[0]), "D: P_drop=0.0": ("no dropout (P_drop = 0)", figures.PALETTE[1])}
    first_other = True
    for row, c in curves.items():
        if row in marked:
            continue
        for ppl in c["dev_ppl_per_seed"]:
            ax.plot(c["epochs"], ppl, color="0.75", lw=0.8, label=_("other rows") if first_other else None)
            first_other = False
    for row, (label, color) in marked.items():
        if row not in curves:
            continue
        c = curves[row]
        for k, ppl in enumerate(c["dev_ppl_per_seed"]):
            ax.plot(c["epochs"], ppl, color=color, lw=1.8, label=_(label) if k == 0 else None)
            best = int(np.argmin(ppl))
            ax.plot([c["epochs"][best]], [ppl[best]], "v", color=color, ms=8,
                    label=_("best epoch") if (k == 0 and row == "D: P_drop=0.0") else None)
    ax.set_yscale("log")
    ax.set_xlabel(_("Epoch"))
    ax.set_ylabel(_("Dev perplexity"))
    ax.set_title(_("Table 3 learning curves: dev perplexity after every epoch"))
    ax.legend(fontsize=8)
    return fig


def plot_table3(measured, lang="en"):
    """Table 3 variations: dev perplexity and BLEU per row, ours (bars, each seed a dot) beside the paper's."""
    _ = figures.translator(KO, lang)
    table = measured["t3.table"]
    rows = list(table)
    x = np.arange(len(rows))
    fig, axes = figures.subplots(2, 1, height=6.5, sharex=True)
    handles = []
    for ax, ours_key, paper_key, ours_label, paper_label in (
        (axes[0], "dev_ppl", "paper_ppl", "Dev perplexity (ours)", "Dev perplexity (paper)"),
        (axes[1], "dev_bleu", "paper_bleu", "Dev BLEU (ours)", "Dev BLEU (paper)"),
    ):
        ax.bar(x, [table[r][ours_key] for r in rows], color=figures.PALETTE[0], label=_(ours_label))
        seeds = [(i, v) for i, r in enumerate(rows) for v in table[r].get(f"{ours_key}_per_seed", [])]
        if any(len(table[r].get(f"{ours_key}_per_seed", [])) > 1 for r in rows):  # the spread over seeds
            ax.plot([i for i, _v in seeds], [v for _i, v in seeds], "o", ms=3, color="black", label=_("each seed"))
        ax.set_ylabel(_(ours_label))
        twin = ax.twinx()
        twin.plot(x, [table[r][paper_key] for r in rows], "D", color=figures.PALETTE[1], label=_(paper_label))
        twin.set_ylabel(_(paper_label))
        handles += ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    unique = {h.get_label(): h for h in handles}  # below the panels: no bar or axis label covered
    fig.legend(unique.values(), unique.keys(), loc="outside lower center", ncols=3, fontsize=8)
    axes[1].set_xticks(x, rows, rotation=30, ha="right")
    fig.suptitle(_("Table 3 variations"))
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
