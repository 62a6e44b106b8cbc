"""The figure style: PNG + SVG, blog width, Korean text with a real font (reproduce/figures.py)."""

import warnings

import matplotlib
import numpy as np
import pytest
from PIL import Image

from reproduce import figures


def _draw(title, xlabel):
    fig, ax = figures.subplots()
    ax.plot([1, 2, 3], [3, 1, 2], label=xlabel)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.legend()
    return fig


def test_korean_title_renders_with_no_missing_glyph(output_dir, caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)" for tofu
        with figures.style("ko"):
            fig = _draw("어텐션 가중치와 퍼플렉서티", "시퀀스 길이 (토큰)")
            fig.axes[0].set_yscale("log")  # math-text ticks with a minus sign: 10^-1
            fig.axes[0].set_ylim(0.05, 5)
            paths = figures.save(fig, "demo", "korean", profile="cpu", lang="ko")
            assert figures.KOREAN_FONT in matplotlib.rcParams["font.family"]
    # math text reports a missing glyph through logging, not warnings
    assert not [r for r in caplog.records if "does not have a glyph" in r.getMessage()]
    assert paths["png"] == output_dir / "figures" / "demo" / "ko" / "korean.png"
    assert paths["svg"].read_text().startswith("<?xml")
    image = np.asarray(Image.open(paths["png"]).convert("L"))
    assert image.shape[1] >= 1000  # 7 in at 200 dpi, cropped tight
    assert (image < 128).mean() > 0.005  # not blank


def test_english_mode_would_show_tofu_for_hangul():
    """The check above can fail: without the Korean style, DejaVu Sans lacks Hangul and matplotlib warns."""
    with figures.style("en"):
        fig = _draw("어텐션", "x")
        with pytest.warns(UserWarning, match="missing from font"):
            fig.canvas.draw()


def test_translator_refuses_untranslated_text_in_korean():
    _ = figures.translator({"Perplexity": "퍼플렉서티"}, "ko")
    assert _("Perplexity") == "퍼플렉서티"
    with pytest.raises(KeyError, match="no Korean translation"):
        _("Words nobody translated")
    assert figures.translator({}, "en")("Latency") == "Latency"
    with pytest.raises(ValueError):
        figures.translator({}, "fr")


def test_smoke_figures_never_land_in_figures_folder(output_dir):
    with figures.style():
        paths = figures.save(_draw("t", "x"), "demo", "name", profile="smoke")
    assert paths["png"] == output_dir / "runs" / "figures" / "demo" / "name.png"


def test_render_all_in_worker_processes_draws_the_same_figures(output_dir):
    """``figures --lang ko`` draws in forked workers: the PNGs equal the ones drawn in-process."""
    import shutil

    from reproduce.paths import REPO_ROOT

    (output_dir / "results" / "transformer").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "results" / "transformer" / "cpu.json", output_dir / "results" / "transformer" / "cpu.json")
    one = figures.render_all(lang="ko", papers=["transformer"], workers=1)
    first = {p: p.read_bytes() for p in [*one, *(q.with_suffix(".svg") for q in one)]}
    two = figures.render_all(lang="ko", papers=["transformer"], workers=2)
    assert two == one and len(one) == len(figures.plot_functions("transformer"))
    assert all(p.parent == output_dir / "figures" / "transformer" / "ko" for p in one)
    assert {p: p.read_bytes() for p in first} == first  # PNG and SVG alike: no date, fixed SVG ids


@pytest.mark.slow
@pytest.mark.parametrize("lang", ["en", "ko"])
def test_no_figure_has_overlapping_text(lang):
    """Every figure, drawn from the committed records at blog width: no two texts (tick labels, labels,
    titles, annotations, legends) overlap, none leaves the canvas, no legend covers a bar. Caught before:
    RetNet Table 5's 'Linear attention' ran into 'no mixer (embeddings + FFN)', Transformer Table 2's
    bar labels collided, FLAVA's Table 3 legend covered a bar."""
    import matplotlib.pyplot as plt

    from reproduce import config, results

    found = {}
    for paper in config.available_papers():
        record = results.load_first(paper, ("gpu", "cpu"))
        for name in figures.plot_functions(paper):
            fig = figures.render(paper, name, record["measured"], lang=lang)
            try:
                if problems := figures.text_collisions(fig):
                    found[name] = problems
            finally:
                plt.close(fig)
    assert not found, found


def test_the_collision_check_sees_overlaps_and_texts_off_the_canvas():
    import matplotlib.pyplot as plt

    fig, ax = figures.subplots()
    ax.bar(range(6), [3] * 6, label="bars")
    ax.set_xticks(range(6), [f"a rather long category name {i}" for i in range(6)])
    ax.legend(loc="upper left")  # over the first bar
    fig.text(1.05, 0.5, "outside")
    try:
        found = figures.text_collisions(fig)
    finally:
        plt.close(fig)
    assert any("overlaps tick label" in f for f in found)
    assert any("'outside' leaves the canvas" in f for f in found)
    assert any(f.startswith("legend covers a bar") for f in found)
