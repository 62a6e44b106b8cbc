"""The project's Korean glossary (``reproduce/glossary.toml``): one translation per term.

``term("Perplexity", "ko")`` -> ``"퍼플렉서티"``; English is the fallback for a term the glossary
does not have (``term("BLEU", "ko")`` -> ``"BLEU"``). Lookups ignore case; a term that starts with a
capital keeps it in English.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

LANGS = ("en", "ko")


@cache
def terms() -> dict[str, str]:
    """English term (lower case) -> Korean."""
    with (Path(__file__).with_name("glossary.toml")).open("rb") as f:
        table = tomllib.load(f)["terms"]
    if any(k != k.lower() for k in table):
        raise ValueError("glossary.toml: terms are written in lower case")
    return dict(table)


def term(text: str, lang: str) -> str:
    """``text`` in ``lang``: the glossary's Korean, or ``text`` itself (English, or no entry)."""
    if lang not in LANGS:
        raise ValueError(f"lang {lang!r} is not one of {LANGS}")
    if lang == "en":
        return text
    return terms().get(text.lower(), text)


def has(text: str) -> bool:
    return text.lower() in terms()
