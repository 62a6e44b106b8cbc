"""One figure style for every notebook and the blog: PNG + SVG, readable at ~700 px, Korean-ready.

A paper module defines ``FIGURES = {"<stable_name>": plot_fn}``; each ``plot_fn(measured, lang)``
reads only recorded values (``run.measured`` or a saved results file) and returns a Figure. Its
text goes through a translation table kept next to it::

    KO = {"Sequence length": "시퀀스 길이"}
    def plot_latency(measured, lang="en"):
        _ = figures.translator(KO, lang)
        fig, ax = figures.subplots()
        ax.set_xlabel(_("Sequence length"))
        return fig

``make(params, run, name)`` renders one figure in the house style and saves it;
``render_all(lang)`` re-renders every figure from the saved results (no re-training).
Korean text uses NanumGothic, shipped by the PyPI package ``koreanize-matplotlib``; the font file is
registered with matplotlib's font manager (the package itself is not imported, so the global
font is not changed behind the user's back).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import matplotlib

if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "inline"):
    matplotlib.use("Agg")  # headless by default; Jupyter keeps its inline backend
import matplotlib.pyplot as plt
from matplotlib import font_manager

from . import glossary
from .paths import figures_dir, results_dir

LANGS = ("en", "ko")
DPI = 200  # 7 in wide -> 1400 px PNG: sharp on retina screens at 700 px display width
WIDTH_IN = 7.0
# Okabe-Ito: distinguishable with colour-blindness, and in greyscale print.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
KOREAN_FONT = "NanumGothic"

_BASE_RC: dict[str, Any] = {
    "figure.figsize": (WIDTH_IN, 4.2),
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "legend.fontsize": 10,
    "xtick.labelsize": 10.5,
    "ytick.labelsize": 10.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "lines.linewidth": 2.0,
    "lines.markersize": 6,
    "svg.fonttype": "path",  # SVGs render the same without the font installed
    "axes.unicode_minus": False,  # NanumGothic has no U+2212
}


def korean_font_path() -> Path:
    """The NanumGothic font file shipped by ``koreanize-matplotlib`` (a project dependency)."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is None or spec.origin is None:
        raise RuntimeError("Korean figures need the font from 'koreanize-matplotlib': pip install koreanize-matplotlib")
    path = Path(spec.origin).parent / "fonts" / "NanumGothic.ttf"
    if not path.exists():
        raise RuntimeError(f"{path} is missing; reinstall koreanize-matplotlib")
    return path


def _register_korean_font() -> None:
    names = {f.name for f in font_manager.fontManager.ttflist}
    if KOREAN_FONT not in names:
        font_manager.fontManager.addfont(str(korean_font_path()))


@contextlib.contextmanager
def style(lang: str = "en") -> Iterator[None]:
    """The house style; ``lang="ko"`` adds NanumGothic for Hangul (DejaVu Sans stays first for Latin and math)."""
    if lang not in LANGS:
        raise ValueError(f"lang {lang!r} is not one of {LANGS}")
    rc = dict(_BASE_RC)
    if lang == "ko":
        _register_korean_font()
        # DejaVu Sans first, NanumGothic as the per-glyph fallback for Hangul: math text (log-axis
        # ticks such as 10^-1) is set in the first family, and NanumGothic has no U+2212 minus.
        rc["font.family"] = ["DejaVu Sans", KOREAN_FONT]
    with plt.rc_context(rc):
        yield


def subplots(nrows: int = 1, ncols: int = 1, height: float | None = None, **kwargs):
    """``plt.subplots`` at blog width (7 in); ``height`` in inches (default 4.2 per row)."""
    height = height if height is not None else 4.2 * nrows if nrows > 1 else 4.2
    kwargs.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=(WIDTH_IN, height), **kwargs)


def translator(table: Mapping[str, str], lang: str) -> Callable[[str], str]:
    """``_ = translator(KO, lang)``; ``_("Perplexity")`` -> Korean text when lang is ``ko``: a term from
    the project's glossary (:mod:`reproduce.glossary`), a phrase from the module's ``KO`` table.

    A missing translation in Korean mode is an error, so that no English label slips into a
    Korean figure unnoticed (the figure test renders every figure in both languages).
    """
    if lang == "en":
        return lambda text: text
    if lang != "ko":
        raise ValueError(f"lang {lang!r} is not one of {LANGS}")

    def _(text: str) -> str:
        if glossary.has(text):  # a term: the one translation of the project's glossary
            return glossary.term(text, lang)
        try:
            return table[text]
        except KeyError:
            raise KeyError(f"no Korean translation for figure text {text!r}; add it to the glossary "
                           "(reproduce/glossary.toml, a term) or the module's KO table (a phrase)") from None

    return _


def save(fig, paper: str, name: str, profile: str | None = None, lang: str = "en",
         root: str | Path | None = None) -> dict[str, Path]:
    """Save ``fig`` as ``figures/<paper>/[ko/]<name>.png`` (``DPI`` dpi) and ``.svg`` (under ``root``, if given)."""
    from . import distributed

    folder = figures_dir(profile, root) / paper
    if lang != "en":
        folder = folder / lang
    paths = {ext: folder / f"{name}.{ext}" for ext in ("png", "svg")}
    if not distributed.is_main():  # one writer under many processes
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        path = paths[ext]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # SVG: no date and fixed element ids, so that re-rendering the same results changes no byte
        with plt.rc_context({"svg.hashsalt": f"{paper}/{name}"}):
            fig.savefig(tmp, format=ext, dpi=DPI, metadata={"Date": None} if ext == "svg" else None)
        tmp.replace(path)  # atomic: a half-written figure never replaces a good one
        paths[ext] = path
    return paths


def plot_functions(paper: str) -> dict[str, Callable]:
    """The ``FIGURES`` of the paper's plots module, as its spec names it (``PaperSpec.plots``)."""
    from . import config

    spec = config.get_spec(paper)
    return dict(importlib.import_module(spec.plots).FIGURES) if spec.plots else {}


def render(paper: str, name: str, measured: Mapping[str, Any], lang: str = "en"):
    """Draw one figure of ``paper`` from recorded values, in the house style (x tick labels that would
    run into each other are turned upright: :func:`slant_crowded_ticks`)."""
    fn = plot_functions(paper)[name]
    with style(lang):
        fig = fn(measured, lang=lang)
    slant_crowded_ticks(fig)  # measured as it is saved: outside the style (fonts are looked up when drawn)
    return fig


def _crowded(labels, renderer, slack: float = 1.0) -> bool:
    boxes = [t.get_window_extent(renderer) for t in labels if t.get_visible() and t.get_text().strip()]
    return any(min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def slant_crowded_ticks(fig) -> None:
    """Turn upright (90°) the x tick labels of every axes where two of them would overlap at blog width:
    long category names (Table 3's rows, the recipe's variants) stay readable, none over another."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = ax.get_xticklabels()
        if ax.axison and _crowded(labels, renderer):
            for label in labels:
                label.set_rotation(90)
                label.set_horizontalalignment("center")


def make(params, run, name: str, lang: str = "en"):
    """Render figure ``name`` from ``run.measured``, save PNG + SVG, and return it for display."""
    fig = render(params.paper, name, run.measured, lang=lang)
    save(fig, params.paper, name, profile=params.profile, lang=lang, root=params.get("output_dir"))
    return fig


_RECORDS: dict[str, dict] = {}  # paper -> the record render_all draws from (inherited by forked workers)
_ROOT: list[Path | None] = [None]  # the output folder render_all writes under (inherited by forked workers)


def _render_saved(job: tuple[str, str, str]) -> Path:
    paper, name, lang = job
    record = _RECORDS[paper]
    fig = render(paper, name, record["measured"], lang=lang)
    try:
        return save(fig, paper, name, profile=record["profile"], lang=lang, root=_ROOT[0])["png"]
    finally:
        plt.close(fig)


def render_all(lang: str = "en", profiles: tuple[str, ...] = ("gpu", "cpu"), papers: list[str] | None = None,
               workers: int = 0, root: str | Path | None = None) -> list[Path]:
    """Re-render every paper's figures from its saved results (no re-training).

    For each paper the first profile in ``profiles`` that has a results file is used. Figures are
    drawn by ``workers`` forked processes (0 = one per core; 1 = in this process). Returns the PNG
    paths written, in paper and figure order.
    """
    from . import results
    from .config import available_papers

    jobs = []
    _RECORDS.clear()
    _ROOT[0] = root
    for paper in papers or available_papers():
        record = results.load_first(paper, profiles, results_dir(root))
        if record is not None:
            _RECORDS[paper] = record
            jobs += [(paper, name, lang) for name in plot_functions(paper)]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return [_render_saved(job) for job in jobs]
    # fork: the workers inherit the imported plotting modules and the loaded records for free
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_render_saved, jobs))


def _text_boxes(fig, renderer) -> list[tuple[str, Any]]:
    """``(label, window bbox)`` of every visible, non-empty text a reader sees: titles, axis labels,
    tick labels inside the view, annotations, legends (one box each) and figure texts."""
    boxes = []

    def add(kind: str, text) -> None:
        if text is not None and text.get_visible() and text.get_text().strip():
            boxes.append((f"{kind} {text.get_text()!r}", text.get_window_extent(renderer)))

    for text in fig.texts:  # the suptitle is one of them
        add("figure text", text)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for title in (ax.title, ax._left_title, ax._right_title):
            add("title", title)
        for axis in (ax.xaxis, ax.yaxis):
            if not (ax.axison and axis.get_visible()):
                continue
            add("axis label", axis.label)
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low):
                    for label in (tick.label1, tick.label2):
                        if label.get_visible() and label.get_text().strip():
                            boxes.append((f"tick label {label.get_text()!r}", label.get_window_extent(renderer)))
        for text in ax.texts:
            add("annotation", text)
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            boxes.append(("legend", legend.get_window_extent(renderer)))
    for legend in fig.legends:
        boxes.append(("figure legend", legend.get_window_extent(renderer)))
    return boxes


def text_collisions(fig, slack: float = 1.0) -> list[str]:
    """What a reader cannot read in ``fig``: two texts whose boxes overlap by more than ``slack`` pixels
    each way, a text that leaves the canvas, and a legend that covers a bar. Empty: nothing collides."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = _text_boxes(fig, renderer)
    found = []
    canvas = fig.bbox
    for label, box in boxes:
        if box.x0 < canvas.x0 - slack or box.y0 < canvas.y0 - slack or box.x1 > canvas.x1 + slack or box.y1 > canvas.y1 + slack:
            found.append(f"{label} leaves the canvas")
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if width > slack and height > slack:
                found.append(f"{a} overlaps {b}")
    from matplotlib.patches import Rectangle

    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not legend.get_visible():
            continue
        box = legend.get_window_extent(renderer)
        for patch in ax.patches:
            if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_height() and patch.get_width():
                bar = patch.get_window_extent(renderer)
                width, height = min(box.x1, bar.x1) - max(box.x0, bar.x0), min(box.y1, bar.y1) - max(box.y0, bar.y0)
                if width > slack and height > slack:
                    found.append(f"legend covers a bar of {ax.get_title() or 'an axes'!r}")
                    break
    return found
