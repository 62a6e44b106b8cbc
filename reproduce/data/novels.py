"""The long English text corpus shared by the RetNet and TOVA notebooks: seven public-domain novels.

RetNet (arXiv:2307.08621) trains its language models on books among other corpora, and TOVA
(arXiv:2401.06104, §4.1, Figure 3) measures perplexity on PG-19's long Gutenberg books. Offline we
use real Gutenberg novels that Debian packages: Jane Austen's six novels (``r-cran-janeaustenr``,
~725k words) and Herman Melville's Moby Dick (``r-cran-tokenizers``, ~212k words once the Gutenberg
header, licence and footer are cut).

The texts sit in R lazy-load databases, ``usr/lib/R/site-library/<pkg>/data/Rdata.{rdx,rdb}``:
the ``.rdx`` index (an RDS file) maps each object to (offset, length) in the ``.rdb``, and each
slice is a 4-byte big-endian uncompressed length followed by a zlib stream holding one serialised
R object, which the ``rdata`` package parses.

Cleaning: hard-wrapped lines are joined into paragraphs (one per line of the result), ``_italic_``
marks are removed, runs of spaces collapse to one, and a blank line goes before each chapter (or
volume) heading. The parsed books are cached as ``.txt`` files, so a second load reads only text.

Splits are document-level: a book belongs to exactly one of train/valid/test.

API: ``load_books()`` -> 7 ``Book``; ``splits(valid_books, test_books)`` -> ``Splits``;
``chunks(tokenizer, length, n, split, seed)`` -> ``Passages`` (TOVA: consecutive fixed-length chunks,
spread over the books); ``token_stream(tokenizer, split)`` -> one id array (RetNet: LM training data).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reproduce import paths
from reproduce.data import fetch

PARSER_VERSION = 1  # bump when the cleaning changes: the text cache is keyed by it

# R object name -> (title, author, Debian source); in publication order for Austen.
BOOKS: dict[str, tuple[str, str, str]] = {
    "sensesensibility": ("Sense and Sensibility", "Jane Austen", "r-cran-janeaustenr"),
    "prideprejudice": ("Pride and Prejudice", "Jane Austen", "r-cran-janeaustenr"),
    "mansfieldpark": ("Mansfield Park", "Jane Austen", "r-cran-janeaustenr"),
    "emma": ("Emma", "Jane Austen", "r-cran-janeaustenr"),
    "northangerabbey": ("Northanger Abbey", "Jane Austen", "r-cran-janeaustenr"),
    "persuasion": ("Persuasion", "Jane Austen", "r-cran-janeaustenr"),
    "mobydick": ("Moby Dick; or The Whale", "Herman Melville", "r-cran-tokenizers"),
}
R_PACKAGE = {"r-cran-janeaustenr": "janeaustenr", "r-cran-tokenizers": "tokenizers"}

# Default document-level split: the two shortest Austen novels are held out; Moby Dick trains.
DEFAULT_VALID = ("northangerabbey",)
DEFAULT_TEST = ("persuasion",)

SplitName = Literal["train", "valid", "test", "all"]


@dataclass(frozen=True)
class Book:
    key: str  # the R object name, e.g. "prideprejudice"
    title: str
    author: str
    text: str  # paragraphs separated by "\n", a blank line before each chapter heading

    @property
    def words(self) -> int:
        return len(self.text.split())

    def __repr__(self) -> str:
        return f"Book({self.title!r}, {self.author!r}, {self.words:,} words)"


@dataclass(frozen=True)
class Splits:
    train: list[Book]
    valid: list[Book]
    test: list[Book]

    def __getitem__(self, split: str) -> list[Book]:
        if split == "all":
            return self.train + self.valid + self.test
        if split not in ("train", "valid", "test"):
            raise ValueError(f"split must be 'train', 'valid', 'test' or 'all', got {split!r}")
        return getattr(self, split)


@dataclass(frozen=True)
class Passages:
    """``n`` token passages of exactly ``length`` tokens; row ``i`` comes from ``books[i]`` at token ``starts[i]``."""

    ids: Any  # torch.LongTensor [n, length]
    books: list[str]  # book keys
    starts: list[int]


# ---------------------------------------------------------------------------------------------
# Reading R lazy-load databases
# ---------------------------------------------------------------------------------------------

def read_r_lazyload(data_dir: Path) -> dict[str, Any]:
    """Every object of an R package's ``data/Rdata.{rdx,rdb}`` lazy-load database, converted to Python."""
    import warnings

    import rdata

    objects = {}
    with warnings.catch_warnings():
        # Lazy-load entries are bare serialisations without the RDS magic header; rdata warns and copes.
        warnings.filterwarnings("ignore", message="Unknown file type: assumed RDS")
        index = rdata.read_rds(data_dir / "Rdata.rdx")
        blob = (data_dir / "Rdata.rdb").read_bytes()
        for name, (offset, length) in index["variables"].items():
            offset, length = int(offset), int(length)
            (raw_length,) = struct.unpack(">I", blob[offset:offset + 4])  # big-endian uncompressed size
            raw = zlib.decompress(blob[offset + 4:offset + length])
            if len(raw) != raw_length:
                raise ValueError(f"{data_dir}: object {name!r} is {len(raw)} bytes, its header says {raw_length}")
            objects[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return objects


# ---------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------

_HEADING = re.compile(r"^(CHAPTER|Chapter|VOLUME|Volume)\b")
_ITALIC = re.compile(r"_([^_]+)_")
_SPACES = re.compile(r"[ \t]+")
GUTENBERG_START = "*** START OF THIS PROJECT GUTENBERG EBOOK"
GUTENBERG_END = "End of Project Gutenberg's"  # the footer line just before "*** END OF ..." and the licence


def paragraphs_from_lines(lines: Sequence[str]) -> str:
    """Join hard-wrapped lines into paragraphs (one per output line); blank line before headings."""
    paragraphs: list[str] = []
    current: list[str] = []
    for line in list(lines) + [""]:
        line = line.strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(_SPACES.sub(" ", " ".join(current)))
            current = []
    out = []
    for paragraph in paragraphs:
        paragraph = _ITALIC.sub(r"\1", paragraph)  # _word_ -> word (italics in the Gutenberg text)
        if _HEADING.match(paragraph) and out:
            out.append("")
        out.append(paragraph)
    return "\n".join(out)


def cut_gutenberg(text: str) -> str:
    """The book between the Gutenberg header and footer (licence, notes and markers removed)."""
    start = text.find(GUTENBERG_START)
    end = text.find(GUTENBERG_END)
    if start < 0 or end < 0 or end < start:
        raise ValueError("Gutenberg start/end markers not found; the packaged text changed")
    body = text[text.index("\n", start) + 1:end]
    body = re.sub(r"^\s*Produced by [^\n]*\n", "", body)  # the transcribers' credit line
    # The e-text's own notes (sources, proofreading), between the title page and the book's first section.
    body = re.sub(r"Original Transcriber's Notes:.*?(?=^ETYMOLOGY\.)", "", body, flags=re.S | re.M)
    return body


def _parse_books() -> dict[str, str]:
    texts: dict[str, str] = {}
    for package in ("r-cran-janeaustenr", "r-cran-tokenizers"):
        root = fetch.ensure(package)
        objects = read_r_lazyload(root / "usr/lib/R/site-library" / R_PACKAGE[package] / "data")
        for key, (_, _, source) in BOOKS.items():
            if source != package:
                continue
            value = objects[key]
            if key == "mobydick":
                lines = cut_gutenberg(str(value[0]).lstrip("\ufeff").replace("\r\n", "\n")).split("\n")
            else:
                lines = [str(line) for line in value]
            texts[key] = paragraphs_from_lines(lines)
    return texts


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def _text_cache_dir() -> Path:
    shas = "-".join(fetch.SOURCES[p].sha256[:8] for p in ("r-cran-janeaustenr", "r-cran-tokenizers"))
    return paths.cache_dir() / "novels" / f"v{PARSER_VERSION}-{shas}"


def load_books() -> list[Book]:
    """The seven novels (six Austen in publication order, then Moby Dick), parsed once and cached."""
    cache = _text_cache_dir()
    if not (cache / "index.json").exists():
        texts = _parse_books()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tmp-"))
        for key, text in texts.items():
            (tmp / f"{key}.txt").write_text(text, encoding="utf-8")
        (tmp / "index.json").write_text(json.dumps(list(texts)))  # written last: marks a complete cache
        try:
            os.rename(tmp, cache)
        except OSError:  # another process renamed its copy first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return [Book(key, *BOOKS[key][:2], (cache / f"{key}.txt").read_text(encoding="utf-8")) for key in BOOKS]


def splits(valid_books: Sequence[str] = DEFAULT_VALID, test_books: Sequence[str] = DEFAULT_TEST) -> Splits:
    """Document-level split: the named books are valid/test, every other book trains."""
    for name, keys in (("valid_books", valid_books), ("test_books", test_books)):
        if isinstance(keys, str):
            raise TypeError(f"{name} must be a sequence of book keys, got the string {keys!r}")
        unknown = [k for k in keys if k not in BOOKS]
        if unknown:
            raise ValueError(f"{name}: unknown book(s) {unknown}; known: {', '.join(BOOKS)}")
    shared = set(valid_books) & set(test_books)
    if shared:
        raise ValueError(f"book(s) {sorted(shared)} in both valid_books and test_books; a book belongs to one split")
    books = load_books()
    train = [b for b in books if b.key not in set(valid_books) | set(test_books)]
    if not train:
        raise ValueError("no book left to train on; hold out fewer books")
    return Splits(train=train,
                  valid=[b for b in books if b.key in set(valid_books)],
                  test=[b for b in books if b.key in set(test_books)])


def chunks(
    tokenizer: Any,
    length: int,
    n: int,
    split: SplitName = "all",
    seed: int = 0,
    *,
    data_splits: Splits | None = None,
) -> Passages:
    """``n`` non-overlapping chunks of exactly ``length`` tokens, several per book where ``n`` asks for it.

    As the paper scores PG-19 (every book cut into consecutive chunks of ``L`` tokens), each book of
    ``split`` is cut into chunks at offsets ``0, L, 2L, ...``; the chunks are then taken book after
    book in a random order, one random chunk of each book per round, so that the ``n`` chunks spread
    over as many books as possible (``numpy.random.default_rng(seed)``: the same seed gives the same
    chunks). Raises if the books hold fewer than ``n`` chunks.
    """
    import torch

    from reproduce.data.text import encode_cached

    if not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    books = (data_splits or splits())[split]
    rng = np.random.default_rng(seed)
    order = [books[i] for i in rng.permutation(len(books))]
    encoded = {b.key: encode_cached(tokenizer, b.text, cache_key=f"novels-{b.key}") for b in order}
    queues = {key: list(rng.permutation(len(ids) // length)) for key, ids in encoded.items()}  # chunk indices
    available = sum(len(q) for q in queues.values())
    if available < n:
        raise ValueError(f"split {split!r} holds {available} chunks of {length:,} tokens, fewer than n={n}: "
                         f"choose a smaller n or length")
    rows, keys, starts = [], [], []
    while len(rows) < n:
        for book in order:
            if queues[book.key] and len(rows) < n:
                start = int(queues[book.key].pop(0)) * length
                rows.append(torch.from_numpy(encoded[book.key][start : start + length].copy()))
                keys.append(book.key)
                starts.append(start)
    return Passages(ids=torch.stack(rows), books=keys, starts=starts)  # [n, length]


def token_stream(
    tokenizer: Any,
    split: SplitName = "train",
    *,
    separator_id: int | None = None,
    data_splits: Splits | None = None,
) -> np.ndarray:
    """The books of ``split`` tokenised and concatenated (int64, 1-D), for language-model training.

    ``separator_id`` (e.g. the id of ``reproduce.data.text.END_OF_TEXT``) goes between books, so a
    model can tell where one document ends. Per-book ids come from the on-disk token cache.
    """
    from reproduce.data.text import encode_cached

    books = (data_splits or splits())[split]
    if not books:
        raise ValueError(f"split {split!r} has no books")
    parts: list[np.ndarray] = []
    for i, book in enumerate(books):
        if i and separator_id is not None:
            parts.append(np.array([separator_id], dtype=np.int64))
        parts.append(encode_cached(tokenizer, book.text, cache_key=f"novels-{book.key}"))
    return np.concatenate(parts)
