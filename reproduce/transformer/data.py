"""Sentence pairs for the Transformer runs: tokenised splits and length-bucketed batches (§5.1).

§5.1: "Sentences were encoded using byte-pair encoding, which has a shared source-target vocabulary"
and "Sentence pairs were batched together by approximate sequence length." A joint BPE vocabulary
is trained on the training split only (:func:`reproduce.data.de_en.train_tokenizer`); a training
split of millions of pairs is kept as flat int32 arrays (:class:`Ragged`).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from reproduce.data import de_en

class Ragged(Sequence):
    """Rows of token ids of different lengths in one flat int32 array and its offsets: the training
    split of WMT14 (4.5M pairs) in ~0.6 GB instead of ~300M Python ints. ``rows[i]`` is a NumPy view."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self.flat, self.offsets = flat, offsets

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[int]]) -> Ragged:
        lengths, chunks = [0], []
        for r in rows:
            chunks.append(np.asarray(r, dtype=np.int32))
            lengths.append(len(r))
        flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
        return cls(flat, np.cumsum(np.asarray(lengths, dtype=np.int64)))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


class _Kept(Sequence):
    """The pairs at ``keep`` of a lazy sequence (the training split's pairs are not materialised)."""

    def __init__(self, pairs: Sequence, keep: np.ndarray):
        self.pairs, self.keep = pairs, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i):
        return self.pairs[int(self.keep[i])]


@dataclass
class EncodedPairs:
    """Token ids of sentence pairs: source = English + </s>, target = <s> + German + </s>."""

    pairs: Sequence[de_en.Pair]
    src: Sequence[Sequence[int]]  # lists (dev, test) or a Ragged array (a training split read with compact=True)
    tgt: Sequence[Sequence[int]]

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass
class TranslationData:
    tokenizer: object  # tokenizers.Tokenizer
    train: EncodedPairs
    dev: EncodedPairs
    test: EncodedPairs
    corpus: de_en.Corpus
    heldout: EncodedPairs | None = None  # training-split pairs left out of ``train`` (subset_data's ``heldout``)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


BOS_ID, EOS_ID, PAD_ID = 1, 2, 0  # reproduce.data.de_en.SPECIALS order


def encode_pairs(tokenizer, pairs: Sequence[de_en.Pair], max_tokens: int, compact: bool = False,
                 chunk: int = 100_000) -> EncodedPairs:
    """Encode pairs; pairs longer than ``max_tokens`` on either side are left out (training only).

    ``compact``: encode ``chunk`` pairs at a time into :class:`Ragged` arrays (the same ids), for a
    training split of millions of pairs; ``pairs`` then stays lazy.
    """
    if compact:
        src_rows, tgt_rows, keep = [], [], []
        for start in range(0, len(pairs), chunk):
            part = [pairs[i] for i in range(start, min(start + chunk, len(pairs)))]
            src = tokenizer.encode_batch([p.en for p in part], add_special_tokens=False)
            tgt = tokenizer.encode_batch([p.de for p in part], add_special_tokens=False)
            for j, (a, b) in enumerate(zip(src, tgt)):
                if len(a.ids) < max_tokens and len(b.ids) < max_tokens - 1:
                    keep.append(start + j)
                    src_rows.append([*a.ids, EOS_ID])
                    tgt_rows.append([BOS_ID, *b.ids, EOS_ID])
        return EncodedPairs(_Kept(pairs, np.asarray(keep, dtype=np.int64)), Ragged.from_rows(src_rows),
                            Ragged.from_rows(tgt_rows))
    src_ids = [e.ids for e in tokenizer.encode_batch([p.en for p in pairs], add_special_tokens=False)]
    tgt_ids = [e.ids for e in tokenizer.encode_batch([p.de for p in pairs], add_special_tokens=False)]
    keep = [i for i in range(len(pairs)) if len(src_ids[i]) < max_tokens and len(tgt_ids[i]) < max_tokens - 1]
    return EncodedPairs(
        [pairs[i] for i in keep], [src_ids[i] + [EOS_ID] for i in keep], [[BOS_ID, *tgt_ids[i], EOS_ID] for i in keep]
    )


def prepare_data(
    vocab_size: int, dev_size: int, test_size: int, with_bible: bool = False, max_tokens: int = 100,
    corpus: str = "beolingus", max_train: int = 0, wmt: dict | None = None,
    dev_books: Sequence[int] = de_en.BIBLE_DEV_BOOKS, test_books: Sequence[int] = de_en.BIBLE_TEST_BOOKS,
) -> TranslationData:
    """Sentence-pair splits and a joint BPE vocabulary trained on the training split (§5.1).

    ``corpus="beolingus"``: the packaged dictionary sentences (dev/test by hash, sizes as given);
    ``"bible"``: Bible verses, dev and test whole held-out books (``dev_books``, ``test_books``; at
    most ``dev_size`` / ``test_size`` of their verses); ``"wmt14"``: WMT14 EN-DE from the hub
    (newstest2013 dev, newstest2014 test, as the paper).
    """
    if corpus == "beolingus":
        corpus = de_en.load_corpus(dev_size=dev_size, test_size=test_size, with_bible=with_bible, max_train=max_train)
    elif corpus == "bible":
        corpus = de_en.bible_book_corpus(dev_books, test_books, dev_size, test_size, max_train)
    elif corpus == "wmt14":
        corpus = de_en.wmt14_corpus(**(wmt or {}), max_train=max_train or None)
    else:
        raise ValueError(f"corpus must be 'beolingus', 'bible' or 'wmt14', got {corpus!r}")
    tok = de_en.train_tokenizer(de_en.corpus_texts(corpus.train), vocab_size)
    big = 10**6  # dev/test keep every pair
    return TranslationData(
        tok,
        encode_pairs(tok, corpus.train, max_tokens, compact=not isinstance(corpus.train, list)),
        encode_pairs(tok, corpus.dev, big),
        encode_pairs(tok, corpus.test, big),
        corpus,
    )


def hash_order(pairs: Sequence[de_en.Pair]) -> list[de_en.Pair]:
    """``pairs`` sorted by the hash of their English side: a fixed, uniform order (the dictionary's own
    order is alphabetical by headword, so its prefixes are not samples of it)."""
    return sorted(pairs, key=lambda p: (de_en.split_key(p), p.de))


def subset_data(corpus: de_en.Corpus, train_pairs: int, vocab_size: int, dev_size: int,
                max_tokens: int = 100, max_words: int = 0, heldout: int = 0) -> TranslationData:
    """A small training set with its own BPE vocabulary, for runs that must converge (Table 3).

    The first ``train_pairs`` training pairs and ``dev_size`` dev pairs in hash order
    (:func:`hash_order`), among the pairs whose English side has at most ``max_words`` words when
    ``max_words`` > 0 (train and dev alike); the joint vocabulary is trained on that subset alone, so
    its size fits the subset. Test pairs are encoded too, with the subset's tokenizer. ``heldout`` > 0:
    the next ``heldout`` training pairs in the same order whose English is neither in the subset nor
    already held out (the Bible repeats formulas such as "Yahweh spoke to Moses, saying,"; a repeat would
    be a trained-on sentence or an item counted twice), never trained on, as ``TranslationData.heldout``.
    """
    short = (lambda p: len(p.en.split()) <= max_words) if max_words else (lambda p: True)
    train_pool, dev_pool = [p for p in corpus.train if short(p)], [p for p in corpus.dev if short(p)]
    if not 1 <= train_pairs <= len(train_pool) - heldout:
        raise ValueError(f"train_pairs + heldout must be at most {len(train_pool)} (the training split"
                         f"{f', at most {max_words} words' if max_words else ''}), got {train_pairs} + {heldout}")
    if not 1 <= dev_size <= len(dev_pool):
        raise ValueError(f"dev_size must be in 1..{len(dev_pool)} (the dev split"
                         f"{f', at most {max_words} words' if max_words else ''}), got {dev_size}")
    ordered, dev_split = hash_order(train_pool), hash_order(dev_pool)[:dev_size]
    train_split, seen, held_split = ordered[:train_pairs], {de_en.split_key(p) for p in ordered[:train_pairs]}, []
    for p in ordered[train_pairs:]:
        if len(held_split) == heldout:
            break
        if (key := de_en.split_key(p)) not in seen:
            seen.add(key)
            held_split.append(p)
    if len(held_split) < heldout:
        raise ValueError(f"heldout: only {len(held_split)} distinct training pairs are left after the {train_pairs} of "
                         f"the subset, asked for {heldout}")
    tok = de_en.train_tokenizer(de_en.corpus_texts(train_split), vocab_size)
    sub = de_en.Corpus(train_split, dev_split, corpus.test, {"subset of": dict(corpus.sources), "pairs": train_pairs,
                                                              "max_words": max_words})
    big = 10**6
    return TranslationData(tok, encode_pairs(tok, train_split, max_tokens), encode_pairs(tok, dev_split, big),
                           encode_pairs(tok, corpus.test, big), sub,
                           encode_pairs(tok, held_split, big) if heldout else None)


def _pad(rows: Sequence[Sequence[int]]) -> Tensor:
    out = torch.full((len(rows), max(map(len, rows))), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(r)
    return out  # (B, T)


def _epoch_batches(data: EncodedPairs, batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """One epoch's batches (pair indices) in length order: pairs sorted by (jittered) length, cut into
    batches whose padded size fits ``batch_tokens``."""
    order = sorted(range(len(data)), key=lambda i: (len(data.src[i]) + rng.random() * 2, len(data.tgt[i])))
    batches, current, longest = [], [], 0
    for i in order:
        longest_next = max(longest, len(data.src[i]), len(data.tgt[i]))
        if current and longest_next * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest_next = [], max(len(data.src[i]), len(data.tgt[i]))
        current.append(i)
        longest = longest_next
    batches.append(current)
    return batches


def token_batches(data: EncodedPairs, batch_tokens: int, seed: int) -> Iterator[dict[str, Tensor]]:
    """Endless batches of pairs with similar lengths, each ~``batch_tokens`` source and target tokens.

    §5.1: "Sentence pairs were batched together by approximate sequence length." Every epoch the
    pairs are sorted by (jittered) length, cut into batches whose padded size fits the budget, and
    the batches are shuffled; the order depends only on ``seed``.
    """
    rng = random.Random(seed)
    while True:
        batches = _epoch_batches(data, batch_tokens, rng)
        rng.shuffle(batches)
        for b in batches:
            yield {"src": _pad([data.src[i] for i in b]), "tgt": _pad([data.tgt[i] for i in b])}


def batches_per_epoch(data: EncodedPairs, batch_tokens: int, seed: int = 0) -> int:
    """How many batches :func:`token_batches` cuts the first epoch into (later epochs differ by a few
    batches at most, from the length jitter)."""
    return len(_epoch_batches(data, batch_tokens, random.Random(seed)))


def fixed_batches(data: EncodedPairs, batch_size: int) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """Evaluation batches in length order, with the indices they hold."""
    order = sorted(range(len(data)), key=lambda i: len(data.src[i]))
    for k in range(0, len(order), batch_size):
        idx = order[k : k + batch_size]
        yield idx, {"src": _pad([data.src[i] for i in idx]), "tgt": _pad([data.tgt[i] for i in idx])}
