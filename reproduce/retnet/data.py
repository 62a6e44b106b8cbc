"""The language-modelling text of the RetNet notebook (Tables 5/6): token streams and their batches.

Two sources, one :class:`Corpus` (a BPE tokenizer trained on the training text only, the training
token stream, the validation token stream):

- ``novels`` (smoke, cpu): the packaged public-domain novels, split by book (:mod:`reproduce.data.novels`).
- ``wikitext-103`` (gpu): a hub text dataset in WikiText's layout, by default ``Salesforce/wikitext``,
  config ``wikitext-103-raw-v1`` (parquet, no loading script): every row of the training split is
  streamed and tokenized (the whole split, ~103M words), the validation split validates. Rows are
  WikiText lines (each ending in ``\\n``, headings `` = Title = ``, empty rows between paragraphs),
  concatenated as they come. Deviation: the tokenizer is trained on the first ``tokenizer_rows``
  non-empty rows only (a bounded sample: BPE training over the whole split would hold it all in
  memory); the token streams cover the whole splits.

The token stream of a hub split is cached (``<cache>/tokens/``) under the dataset, split and
tokenizer, so a resumed run does not stream and tokenize it again. Under several processes the main
process builds the corpus first and the others read its caches.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Corpus:
    """Token ids of the training text (one stream) and the validation text, with the tokenizer."""

    tokenizer: object
    train_ids: np.ndarray
    valid_ids: np.ndarray
    source: str

    def describe(self) -> dict:
        return {"source": self.source, "vocab_size": self.tokenizer.get_vocab_size(),
                "train_tokens": int(self.train_ids.size), "valid_tokens": int(self.valid_ids.size)}


@dataclass(frozen=True)
class HubText:
    """Where the gpu profile's text comes from (the notebook parameters ``wikitext_*``)."""

    dataset: str = "Salesforce/wikitext"
    config: str | None = "wikitext-103-raw-v1"
    train_split: str = "train"
    valid_split: str = "validation"
    text_column: str = "text"
    tokenizer_rows: int = 200_000  # non-empty training rows the BPE tokenizer is trained on

    @classmethod
    def from_params(cls, params) -> HubText:
        return cls(params.wikitext_dataset, params.wikitext_config or None, params.wikitext_train_split,
                   params.wikitext_valid_split, params.wikitext_text_column, params.tokenizer_rows)


HUB_SOURCES = ("wikitext-103",)
ENCODE_ROWS = 8192  # rows per encode_batch call (tokenizers encodes a batch on every core)


def _rows(hub: HubText, split: str) -> Iterator[str]:
    from reproduce.data import text

    return text.hub_dataset(hub.dataset, hub.config, split, text_field=hub.text_column, param="wikitext_dataset")


def _source_fingerprint(hub: HubText, split: str, tokenizer) -> str:
    """What a cached token stream depends on: dataset, config, split, column, tokenizer (and, for a
    local folder, its files' sizes and times)."""
    from reproduce import hub as hub_io
    from reproduce.data import text

    parts = [hub.dataset, str(hub.config), split, hub.text_column, text.tokenizer_fingerprint(tokenizer)]
    if hub_io.is_local(hub.dataset):
        root = Path(hub.dataset).expanduser()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        parts += [f"{p.relative_to(root) if root.is_dir() else p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                  for p in files]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def encode_split(hub: HubText, split: str, tokenizer, eot: int) -> np.ndarray:
    """The token ids of every row of ``split``, concatenated, then one end-of-text token (int32; cached)."""
    from reproduce import paths

    cache = paths.cache_dir() / "tokens"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"retnet-hub-{split.replace('/', '_')}-{_source_fingerprint(hub, split, tokenizer)}.npy"
    if path.exists():
        return np.load(path).astype(np.int32)
    parts: list[np.ndarray] = []
    rows = _rows(hub, split)
    while batch := list(itertools.islice(rows, ENCODE_ROWS)):
        for enc in tokenizer.encode_batch([r for r in batch if r], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=np.int32))
    parts.append(np.array([eot], dtype=np.int32))
    ids = np.concatenate(parts)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=".tmp-", suffix=".npy")
    with os.fdopen(fd, "wb") as f:
        np.save(f, ids.astype(np.uint16) if ids.max() < 2**16 else ids)  # 2x smaller on disk
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return ids


def _hub_corpus(vocab_size: int, hub: HubText, source: str) -> Corpus:
    from reproduce.data import text

    sample = [r for r in itertools.islice((r for r in _rows(hub, hub.train_split) if r.strip()), hub.tokenizer_rows)]
    if not sample:
        raise ValueError(f"the {hub.train_split!r} split of {hub.dataset} has no text in column {hub.text_column!r} "
                         "(set wikitext_dataset / wikitext_text_column)")
    tokenizer = text.train_bpe_tokenizer(sample, vocab_size, cache_key=f"retnet-{source}")
    del sample
    eot = tokenizer.token_to_id(text.END_OF_TEXT)
    train = encode_split(hub, hub.train_split, tokenizer, eot)
    valid = encode_split(hub, hub.valid_split, tokenizer, eot)
    return Corpus(tokenizer, train, valid, f"{source} ({hub.dataset}"
                  f"{'/' + hub.config if hub.config else ''}: {hub.train_split} / {hub.valid_split})")


def _novels_corpus(vocab_size: int, fraction: float) -> Corpus:
    from reproduce.data import novels, text

    split = novels.splits()
    train_texts = [b.text[: max(1, int(len(b.text) * fraction))] for b in split.train]
    valid_texts = [b.text for b in split.valid]
    keys = [f"novels-{b.key}-{fraction:g}" for b in split.train], [f"novels-{b.key}" for b in split.valid]
    tokenizer = text.train_bpe_tokenizer(train_texts, vocab_size, cache_key=f"retnet-novels-{fraction:g}")
    eot = tokenizer.token_to_id(text.END_OF_TEXT)

    def stream(texts, cache_keys):
        parts = []
        for t, key in zip(texts, cache_keys):
            parts += [text.encode_cached(tokenizer, t, cache_key=key), np.array([eot])]
        return np.concatenate(parts)

    return Corpus(tokenizer, stream(train_texts, keys[0]), stream(valid_texts, keys[1]), "novels")


def load_corpus(vocab_size: int, source: str = "novels", fraction: float = 1.0, hub: HubText | None = None) -> Corpus:
    """The packaged novels (document-level split: reproduce.data.novels) or a hub text dataset
    (``hub``: its id, config, splits), with a BPE tokenizer trained on training text only.

    ``fraction`` < 1 keeps the first part of each training book (the smoke profile's short cut; novels only).
    """
    from reproduce import distributed

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if source == "novels":
        return _novels_corpus(vocab_size, fraction)
    if source not in HUB_SOURCES:
        raise ValueError(f"unknown text source {source!r}; expected 'novels' or one of {list(HUB_SOURCES)}")
    hub = hub or HubText()
    # the main process streams and tokenizes (can take longer than a collective's timeout); the others
    # then read its caches
    return distributed.main_first(lambda: _hub_corpus(vocab_size, hub, source))


def batches(ids: np.ndarray, batch: int, length: int, seed: int, micro_batch: int = 0) -> Iterator[dict]:
    """Endless global batches of random windows of ``length`` tokens (same seed, same batches).

    ``micro_batch`` > 0 yields each global batch as ``batch / micro_batch`` consecutive micro-batches
    (the same windows: gradient accumulation over them trains on the same data as one big batch).
    """
    micro = micro_batch or batch
    if batch % micro:
        raise ValueError(f"lm_micro_batch={micro} must divide lm_batch={batch}")
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, ids.size - length, size=batch)
        window = np.stack([ids[s:s + length] for s in starts])  # (B, T)
        for i in range(0, batch, micro):
            yield {"input_ids": torch.from_numpy(window[i:i + micro]).long()}  # (b, T)
