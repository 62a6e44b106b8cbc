"""FLAVA figures, drawn only from recorded values (``run.measured`` or results/flava/<profile>.json).

Keys read: ``objectives.illustration``, ``table3.ours``, ``table3.paper``, ``table3.gains``, ``itm.heldout``,
``table3.per_seed``, ``tasks.baselines``, ``table4.chance``,
``pretraining.losses``, ``retrieval.similarity``, ``retrieval.examples``.
"""

from __future__ import annotations

import math

import numpy as np

from reproduce import claims, figures

KO = {
    "Image": "이미지",
    "Block-masked": "블록 마스킹",
    "matched": "일치",
    "unmatched": "불일치",
    "ITM text": "ITM 텍스트",
    "Ours (small scale)": "우리 결과 (소규모)",
    "Paper (Table 3)": "논문 (표 3)",
    "Score (%)": "점수 (%)",
    "Vision": "비전",
    "Language": "언어",
    "Multimodal": "멀티모달",
    "Macro": "매크로 평균",
    "Update": "업데이트",
    "Training progress": "학습 진행",
    "Loss": "손실",
    "Before pretraining": "사전학습 전",
    "After pretraining": "사전학습 후",
    "Image i": "이미지 i",
    "Caption j": "캡션 j",
    "Cosine similarity": "코사인 유사도",
    "Query": "질의",
    "Top-3 retrieved held-out images": "검색된 상위 3개 보류 이미지",
    "mim": "MIM",
    "mlm": "MLM",
    "global_contrastive": "대조 (GC)",
    "itm": "ITM",
    "mmm_image": "MMM 이미지",
    "mmm_text": "MMM 텍스트",
    "total": "합계",
    "Gain over the untrained\nmodel (points)": "학습하지 않은 모델 대비\n향상 (포인트)",
    "Held-out ITM accuracy (%)": "보류 쌍 ITM 정확도 (%)",
    "chance": "우연 수준",
    "seed": "시드",
    "Scene QA (fine-tuned on h_CLS,M)": "장면 QA (h_CLS,M 위에서 미세조정)",
    "Cloze (frozen probe)": "빈칸 채우기 (고정 프로브)",
    "Accuracy (%)": "정확도 (%)",
    "question-only baseline": "질문만 보는 기준선",
    "majority class": "최빈 클래스",
}
LOSS_ORDER = ("mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text")
DOMAIN_LABELS = {"vision": "Vision", "language": "Language", "multimodal": "Multimodal", "macro": "Macro"}


def _image(value) -> np.ndarray:
    """A recorded image: base64 PNG text, or (older records) nested lists of uint8."""
    if isinstance(value, str):
        import base64
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(base64.b64decode(value))).convert("RGB"))
    return np.asarray(value, dtype=np.uint8)


def plot_objectives(measured: dict, lang: str = "en"):
    """A paired batch as FLAVA sees it: images, their BEiT block masks, the masked ITM texts."""
    _ = figures.translator(KO, lang)
    ill = measured["objectives.illustration"]
    images = np.stack([_image(x) for x in ill["images"]])  # (n, S, S, 3)
    n, s, g = len(images), images.shape[1], ill["grid"]
    fig, axes = figures.subplots(2, n, height=4.6)
    for i in range(n):
        mask = np.asarray(ill["masks"][i], dtype=bool).reshape(g, g)
        pixel_mask = np.kron(mask, np.ones((s // g, s // g), dtype=bool))  # (S, S)
        masked = images[i].copy()
        masked[pixel_mask] = 128
        axes[0, i].imshow(images[i], interpolation="nearest")
        axes[0, i].set_title("\n".join(_wrap(ill["captions"][i], 22)), fontsize=8)
        axes[1, i].imshow(masked, interpolation="nearest")
        label = _("matched") if ill["itm_labels"][i] else _("unmatched")
        axes[1, i].set_title(f"{_('ITM text')} ({label}):\n" + "\n".join(_wrap(ill["masked_text"][i], 22)), fontsize=8)
        for ax in axes[:, i]:
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
    axes[0, 0].set_ylabel(_("Image"))
    axes[1, 0].set_ylabel(_("Block-masked"))
    return fig


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def plot_table3(measured: dict, lang: str = "en"):
    """Table 3: domain and macro averages per row, ours (mean over seeds) beside the paper's."""
    _ = figures.translator(KO, lang)
    ours, paper = measured["table3.ours"], measured["table3.paper"]
    rows = list(ours)
    keys = ["vision", "language", "multimodal", "macro"]
    fig, axes = figures.subplots(1, 2, height=4.2, sharey=True)
    width = 0.8 / len(keys)
    for ax, table, title in ((axes[0], ours, _("Ours (small scale)")), (axes[1], paper, _("Paper (Table 3)"))):
        for k, key in enumerate(keys):
            values = [table.get(r, {}).get(key) or 0.0 for r in rows]
            bars = ax.bar(np.arange(len(rows)) + (k - 1.5) * width, values, width, label=_(DOMAIN_LABELS[key]),
                          color=figures.PALETTE[k])
            if key == "macro" and table is ours:
                std = [table[r].get("macro_std", 0.0) for r in rows]
                ax.errorbar(np.arange(len(rows)) + (k - 1.5) * width, values, yerr=std, fmt="none", ecolor="black", capsize=2)
            del bars
        ax.set_xticks(np.arange(len(rows)), rows, rotation=30, ha="right")
        ax.set_title(title)
    axes[0].set_ylabel(_("Score (%)"))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)  # below: no bar covered
    return fig


def plot_losses(measured: dict, lang: str = "en"):
    """Pretraining losses per objective (first seed), one panel per Table 3 row."""
    _ = figures.translator(KO, lang)
    losses = measured["pretraining.losses"]  # row -> objective -> windowed means
    rows = list(losses)
    ncols = len(rows) if len(rows) <= 4 else math.ceil(len(rows) / 2)  # six Table 3 rows: two rows of three panels
    nrows = math.ceil(len(rows) / ncols)
    fig, axes = figures.subplots(nrows, ncols, height=3.2 * nrows, sharey=False, squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    colours = {name: figures.PALETTE[i] for i, name in enumerate(LOSS_ORDER)}
    for k, (ax, row) in enumerate(zip(axes.flat, rows)):
        for name, values in losses[row].items():
            if name == "total":
                continue
            v = np.asarray([np.nan if x is None else x for x in values], dtype=float)
            x = np.linspace(0, 1, len(v))
            ok = np.isfinite(v)  # windows in which the row drew no batch carrying this loss
            ax.plot(x[ok], v[ok], marker=".", label=_(name), color=colours[name])
        ax.set_title(row, fontsize=10)
        if k + ncols >= len(rows):  # the lowest panel of its column
            ax.set_xlabel(_("Training progress"), fontsize=9)
        if k % ncols == 0:
            ax.set_ylabel(_("Loss"))
        ax.tick_params(labelsize=8)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    handles = {_(n): handles[_(n)] for n in LOSS_ORDER if _(n) in handles}
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=6, fontsize=8)
    return fig


def plot_similarity(measured: dict, lang: str = "en"):
    """Cosine similarity of held-out image and caption embeddings (GC space), before and after pretraining."""
    _ = figures.translator(KO, lang)
    sim = measured["retrieval.similarity"]
    fig, axes = figures.subplots(1, 2, height=3.8)
    for ax, key, title in ((axes[0], "before", _("Before pretraining")), (axes[1], "after", _("After pretraining"))):
        m = np.asarray(sim[key])
        im = ax.imshow(m, cmap="viridis", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.set_xlabel(_("Caption j"))
        ax.set_ylabel(_("Image i"))
        ax.grid(False)
        ax.set_xticks(range(len(m))), ax.set_yticks(range(len(m)))
    fig.colorbar(im, ax=axes, shrink=0.8, label=_("Cosine similarity"))
    return fig


def plot_retrieval(measured: dict, lang: str = "en"):
    """Zero-shot text->image retrieval on held-out attribute combinations: query, top-3 images."""
    _ = figures.translator(KO, lang)
    examples = measured["retrieval.examples"]
    top = len(examples[0]["images"])
    fig, axes = figures.subplots(len(examples), top + 1, height=1.5 * len(examples) + 0.6,
                                 gridspec_kw={"width_ratios": [2.2] + [1] * top})
    for r, ex in enumerate(examples):
        axes[r, 0].text(0.0, 0.5, "\n".join(_wrap(ex["caption"], 26)), va="center", fontsize=9)
        axes[r, 0].axis("off")
        for c, (img, hit) in enumerate(zip(ex["images"], ex["hits"])):
            ax = axes[r, c + 1]
            ax.imshow(_image(img), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([]), ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(figures.PALETTE[2] if hit else figures.PALETTE[1])
                spine.set_linewidth(3)
    axes[0, 0].set_title(_("Query"), fontsize=10)
    axes[0, 1 + top // 2].set_title(_("Top-3 retrieved held-out images"), fontsize=10)
    return fig


def plot_gains(measured: dict, lang: str = "en"):
    """Each row's gain per domain over the untrained model (mean over seeds, t 95 % interval), and the
    held-out ITM accuracy per row and seed with its Wilson interval."""
    _ = figures.translator(KO, lang)
    gains, itm = measured.get("table3.gains") or {}, measured.get("itm.heldout") or {}
    fig, axes = figures.subplots(1, 2, height=4.0, width_ratios=(3, 2))
    rows, domains = list(gains), ("vision", "language", "multimodal")
    width = 0.8 / len(domains)
    for k, d in enumerate(domains):
        x = [i for i, r in enumerate(rows) if d in gains[r]]
        est = [claims.Estimate.from_dict(gains[rows[i]][d]["over_untrained"]) for i in x]
        mean = np.array([e.value for e in est])
        low = np.array([e.low if e.low is not None and math.isfinite(e.low) else e.value for e in est])  # one seed: no bar
        high = np.array([e.high if e.high is not None and math.isfinite(e.high) else e.value for e in est])
        pos = np.array(x) + (k - 1) * width
        axes[0].bar(pos, mean, width, color=figures.PALETTE[k], label=_(DOMAIN_LABELS[d]))
        axes[0].errorbar(pos, mean, yerr=[mean - low, high - mean], fmt="none", ecolor="black", capsize=2)
    axes[0].axhline(0, color="black", linewidth=0.8)
    axes[0].set_xticks(np.arange(len(rows)), rows, rotation=30, ha="right")
    axes[0].set_ylabel(_("Gain over the untrained\nmodel (points)"))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)  # below: no bar covered
    for i, (row, per) in enumerate(itm.items()):
        for j, x in enumerate(per):
            axes[1].errorbar(i + (j - (len(per) - 1) / 2) * 0.15, x["accuracy"], yerr=[[x["accuracy"] - x["low"]], [x["high"] - x["accuracy"]]],
                             fmt="o", color=figures.PALETTE[j % len(figures.PALETTE)], capsize=2)
    axes[1].axhline(50, color="gray", linestyle="--", linewidth=1, label=_("chance"))
    axes[1].set_xticks(np.arange(len(itm)), list(itm), rotation=30, ha="right")
    axes[1].set_ylabel(_("Held-out ITM accuracy (%)"))
    axes[1].legend(fontsize=8)
    return fig


def plot_tasks(measured: dict, lang: str = "en"):
    """Scene QA (the fused task) and cloze per row: each seed a dot, the mean a bar, beside the untrained row,
    the question-only baseline and the majority class (issue #28's tasks)."""
    _ = figures.translator(KO, lang)
    seeds, baselines = measured.get("table3.per_seed") or [], measured.get("tasks.baselines") or {}
    chance = measured.get("table4.chance") or {}
    fig, axes = figures.subplots(1, 2, height=4.0)
    for ax, (domain, task, title) in zip(axes, (("multimodal", "scene QA", "Scene QA (fine-tuned on h_CLS,M)"),
                                                ("language", "cloze", "Cloze (frozen probe)"))):
        rows = [r for r in dict.fromkeys(x["row"] for x in seeds) if any(task in x for x in seeds if x["row"] == r)]
        for i, row in enumerate(rows):
            values = [x[task] for x in seeds if x["row"] == row and task in x]
            ax.bar(i, float(np.mean(values)), 0.6, color=figures.PALETTE[0 if row == "untrained" else 1], alpha=0.7)
            ax.scatter(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values, s=12, color="black", zorder=3)
        if task == "scene QA" and task in baselines:
            ax.axhline(baselines[task], color="gray", linestyle=":", linewidth=1.2, label=_("question-only baseline"))
        majority = chance.get(domain, {}).get(task)
        if majority is not None:
            ax.axhline(majority, color="gray", linestyle="--", linewidth=1, label=_("majority class"))
        ax.set_xticks(np.arange(len(rows)), rows, rotation=30, ha="right")
        ax.set_title(_(title), fontsize=10)
        ax.set_ylabel(_("Accuracy (%)"))
    handles = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=len(handles), fontsize=8)  # below: no bar covered
    return fig


FIGURES = {
    "flava_objectives_batch": plot_objectives,
    "flava_table3_ablation": plot_table3,
    "flava_gains_over_untrained": plot_gains,
    "flava_new_tasks": plot_tasks,
    "flava_pretraining_losses": plot_losses,
    "flava_similarity_before_after": plot_similarity,
    "flava_zero_shot_retrieval": plot_retrieval,
}
