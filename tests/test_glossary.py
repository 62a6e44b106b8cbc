"""One Korean glossary (reproduce/glossary.toml) for figures and posts: a term reads the same everywhere."""

from __future__ import annotations

import importlib
import re

import pytest

from reproduce import config, figures, glossary


def _ko_tables():
    for paper in config.available_papers():
        plots = config.get_spec(paper).plots
        if plots:
            yield paper, importlib.import_module(plots).KO


def test_every_korean_figure_text_uses_the_glossarys_terms():
    """'ours' was 우리 in one paper's figures and 우리 결과 in another's; Layer 레이어 here, 층 there."""
    wrong = []
    for paper, table in _ko_tables():
        for english, korean in table.items():
            for term, translation in glossary.terms().items():
                if re.search(rf"\b{re.escape(term)}\b", english, re.IGNORECASE) and translation not in korean:
                    wrong.append(f"{paper}: {english!r} -> {korean!r} lacks {translation!r} ({term})")
    assert not wrong, "\n".join(wrong)


def test_the_translator_takes_terms_from_the_glossary_and_phrases_from_the_table():
    _ = figures.translator({"A phrase": "한 구절"}, "ko")
    assert _("Perplexity") == "퍼플렉서티" == glossary.term("perplexity", "ko")
    assert _("A phrase") == "한 구절"
    with pytest.raises(KeyError, match="glossary"):
        _("Untranslated words")
    assert glossary.term("BLEU", "ko") == "BLEU"  # no entry: English
    assert glossary.term("Perplexity", "en") == "Perplexity"
    with pytest.raises(ValueError, match="lang"):
        glossary.term("loss", "fr")
