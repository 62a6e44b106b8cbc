"""English-German sentence pairs, offline: the BEOLINGUS dictionary (+ optional Bible verses).

Primary source: the Debian package ``trans-de-en`` (BEOLINGUS, TU Chemnitz, GPL-2+), file
``usr/share/trans/de-en``, lines ``de | de … :: en | en …``: the ``|``-separated items of both sides
are aligned. We keep the items where both sides are full sentences — capitalised, ending in
``.``, ``?`` or ``!``, 3-40 words — after removing annotations in ``{}``, ``[]`` and ``()`` and
taking the first ``;`` alternative; items whose sides hold two variants (``": "`` in the English,
``" / "`` on either side) are dropped. That gives ~19k natural modern pairs (median 7 words), e.g.
"The exception proves the rule." ↔ "Die Ausnahme bestätigt die Regel."

Optional extra training data: World English Bible ↔ Elberfelder 1932 verses through
:mod:`reproduce.data.bible` (never in dev/test, which stay BEOLINGUS).

Splits are fixed by a hash of the normalised English side (so repeated English sentences never
straddle splits): the ``test_size`` smallest hashes are the test split, the next ``dev_size`` dev.
The joint source-target subword vocabulary (§5.1: "shared source-target vocabulary") is a BPE
model trained on the train split with the ``tokenizers`` library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from . import fetch

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3
DICT_FILE = "usr/share/trans/de-en"

_ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\]|\([^)]*\))")
_SENTENCE_END = re.compile(r"[.?!]$")


class Pair(NamedTuple):
    en: str
    de: str


@dataclass(frozen=True)
class Corpus:
    train: list[Pair]
    dev: list[Pair]
    test: list[Pair]
    sources: dict[str, int]  # source name -> number of training pairs it gave

    def __repr__(self) -> str:
        return f"Corpus(train={len(self.train)}, dev={len(self.dev)}, test={len(self.test)}, sources={self.sources})"


def _clean(item: str) -> str:
    item = item.split(";")[0]
    item = _ANNOTATION.sub("", item)
    return re.sub(r"\s+", " ", item).strip()


def _is_sentence(text: str, min_words: int = 3, max_words: int = 40) -> bool:
    n = len(text.split())
    return min_words <= n <= max_words and text[:1].isupper() and _SENTENCE_END.search(text) is not None


def parse_beolingus(lines: Iterable[str]) -> list[Pair]:
    """Sentence pairs from BEOLINGUS lines (``de | de … :: en | en …``), in file order, deduplicated."""
    seen, pairs = set(), []
    for line in lines:
        if line.startswith("#") or "::" not in line:
            continue
        de_side, en_side = line.rstrip("\n").split("::", 1)
        de_items, en_items = de_side.split("|"), en_side.split("|")
        if len(de_items) != len(en_items):
            continue  # misaligned entry
        for de, en in zip(de_items, en_items):
            de, en = _clean(de), _clean(en)
            if ": " in en or " / " in en or " / " in de:
                continue  # two variants in one item
            if _is_sentence(en) and _is_sentence(de) and (en, de) not in seen:
                seen.add((en, de))
                pairs.append(Pair(en, de))
    return pairs


PARSER_VERSION = 1  # bump when parse_beolingus changes: the cached pairs are then rebuilt


@lru_cache(maxsize=1)
def beolingus_pairs() -> tuple[Pair, ...]:
    """All BEOLINGUS sentence pairs (fetches ``trans-de-en`` into the cache once).

    The parsed pairs are cached as JSON next to the source, keyed by the archive's checksum and
    the parser version (parsing 206k lines takes seconds; reading the cache, milliseconds).
    """
    source = fetch.get_source("trans-de-en")
    root = fetch.debian_package("trans-de-en")
    cached = root.parent / f"trans-de-en.pairs.v{PARSER_VERSION}.{source.sha256[:12]}.json"
    if cached.is_file():
        return tuple(Pair(*p) for p in json.loads(cached.read_text(encoding="utf-8")))
    with open(root / DICT_FILE, encoding="utf-8") as f:
        pairs = tuple(parse_beolingus(f))
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(pairs, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, cached)  # atomic: concurrent runs write the same content
    return pairs


def bible_pairs() -> list[Pair]:
    """World English Bible ↔ Elberfelder 1932, verse-aligned (via :mod:`reproduce.data.bible`)."""
    from . import bible  # imported lazily: the Bible database is a 218 MB download

    return [Pair(en, de) for en, de in bible.parallel_verses("en", "de")]


def split_key(pair: Pair) -> str:
    return hashlib.sha1(" ".join(pair.en.lower().split()).encode()).hexdigest()


def split_pairs(pairs: Sequence[Pair], dev_size: int, test_size: int) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, dev, test) by hash of the English side; all pairs sharing an English side stay together."""
    if dev_size < 1 or test_size < 1:
        raise ValueError(f"dev_size and test_size must be >= 1, got {dev_size}, {test_size}")
    keys = sorted({split_key(p) for p in pairs})
    if dev_size + test_size >= len(keys):
        raise ValueError(f"dev_size + test_size = {dev_size + test_size} leaves no training data ({len(keys)} sentences)")
    test_keys, dev_keys = set(keys[:test_size]), set(keys[test_size : test_size + dev_size])
    train, dev, test = [], [], []
    for p in pairs:
        k = split_key(p)
        (test if k in test_keys else dev if k in dev_keys else train).append(p)
    return train, dev, test


def load_corpus(dev_size: int = 1000, test_size: int = 1000, with_bible: bool = False, max_train: int = 0) -> Corpus:
    """BEOLINGUS splits, plus Bible verses in the training split when ``with_bible``.

    ``max_train`` > 0 keeps only the first ``max_train`` BEOLINGUS training pairs (smoke runs).
    """
    if max_train < 0:
        raise ValueError(f"max_train must be >= 0 (0 = all), got {max_train}")
    train, dev, test = split_pairs(beolingus_pairs(), dev_size, test_size)
    if max_train:
        train = train[:max_train]
    sources = {"beolingus": len(train)}
    if with_bible:
        extra = bible_pairs()
        held_out = {split_key(p) for p in dev + test}
        extra = [p for p in extra if split_key(p) not in held_out]
        train = train + extra
        sources["bible"] = len(extra)
    return Corpus(train, dev, test, sources)


BIBLE_DEV_BOOKS = (6, 45)  # Joshua, Romans: an Old Testament narrative and a Pauline letter
BIBLE_TEST_BOOKS = (9, 46)  # 1 Samuel, 1 Corinthians: the same two genres


def bible_book_corpus(dev_books: Sequence[int] = BIBLE_DEV_BOOKS, test_books: Sequence[int] = BIBLE_TEST_BOOKS,
                      dev_size: int = 0, test_size: int = 0, max_train: int = 0) -> Corpus:
    """World English Bible -> Elberfelder 1932 verse pairs, split by whole books (books 1-66).

    Dev and test are whole held-out books, so no verse of a test book, nor its chapter's neighbours,
    is seen in training (a split by verse would put every test verse's context in training). The
    other books are the training split. ``dev_size`` / ``test_size`` > 0 keep only that many held-out
    verses (the first in :func:`split_key` order: both books of a split, uniformly); ``max_train`` > 0
    the first ``max_train`` training verses in that order (smoke runs).
    """
    from . import bible  # imported lazily: the Bible database is a 218 MB download

    dev_books, test_books = set(dev_books), set(test_books)
    books = dev_books | test_books
    if dev_books & test_books or not dev_books or not test_books or not books <= set(range(1, 67)):
        raise ValueError(f"dev and test books must be disjoint, non-empty sets of book numbers 1-66, got "
                         f"{sorted(dev_books)} and {sorted(test_books)}")
    for name, n in (("dev_size", dev_size), ("test_size", test_size), ("max_train", max_train)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0 (0 = all), got {n}")
    train, dev, test = [], [], []
    for p in bible.aligned_pairs("4", "e"):  # (book, chapter, verse) aligned; WEB -> Elberfelder
        (dev if p.book in dev_books else test if p.book in test_books else train).append(Pair(p.src, p.tgt))

    def first(pairs: list[Pair], n: int) -> list[Pair]:
        return sorted(pairs, key=lambda q: (split_key(q), q.de))[:n] if n else pairs

    train, dev, test = first(train, max_train), first(dev, dev_size), first(test, test_size)
    return Corpus(train, dev, test, {"bible": len(train), "dev_books": len(dev_books), "test_books": len(test_books)})


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A joint BPE vocabulary (``tokenizers``) with ids 0-3 = <pad>, <s>, </s>, <unk>.

    NFKC normalisation; the sentencepiece-style ``Metaspace`` pre-tokeniser and decoder make
    ``decode(encode(x)) == x`` for text without unknown characters (BLEU is computed on that).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if vocab_size < 64:
        raise ValueError(f"vocab_size must be >= 64, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def corpus_texts(pairs: Iterable[Pair]) -> Iterable[str]:
    for p in pairs:
        yield p.en
        yield p.de


WMT14_ID = "wmt/wmt14"  # config "de-en": train 4.5M pairs, validation = newstest2013, test = newstest2014


class ArrowPairs(Sequence):
    """The pairs of a ``datasets`` split with a ``translation`` column ({"de": ..., "en": ...}), read
    from its memory-mapped Arrow table on demand: 4.5M WMT14 pairs cost no Python objects until used."""

    def __init__(self, rows, column: str = "translation", source: str = "en", target: str = "de"):
        self.rows, self.column, self.source, self.target = rows, column, source, target

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        t = self.rows[int(i)][self.column]
        return Pair(t[self.source], t[self.target])

    def __iter__(self):
        for batch in self.rows.iter(batch_size=10_000):
            for t in batch[self.column]:
                yield Pair(t[self.source], t[self.target])


def wmt14_corpus(dataset: str = WMT14_ID, config: str | None = "de-en", train_split: str = "train",
                 dev_split: str = "validation", test_split: str = "test", max_train: int | None = None) -> Corpus:
    """WMT14 EN-DE (gpu profile): train / newstest2013 / newstest2014, from the hub or a local folder
    in its layout (a ``translation`` column of {"de", "en"} dicts).

    Read through :func:`reproduce.hub.load_dataset` (one-line errors; offline at once, naming the
    packaged alternative). The training split stays in its memory-mapped Arrow table (:class:`ArrowPairs`).
    """
    from reproduce import hub

    def split(name: str):
        rows = hub.load_dataset(dataset, config or None, name, streaming=False, param="wmt_dataset",
                                alternative="use corpus='beolingus' (profile=cpu), which reads the packaged BEOLINGUS pairs")
        if len(rows):
            hub.require_columns(rows[0], ["translation"], dataset, "wmt_dataset")
        return rows

    train = split(train_split)
    if max_train:
        train = train.select(range(min(max_train, len(train))))
    return Corpus(ArrowPairs(train), list(ArrowPairs(split(dev_split))), list(ArrowPairs(split(test_split))),
                  {dataset: len(train)})
