"""Text utilities shared by the language-model notebooks: cached BPE training, cached encoding, hub text.

- ``train_bpe_tokenizer(texts, vocab_size, cache_key)``: a byte-level BPE tokenizer (the GPT-2
  scheme: bytes mapped to printable characters, merges learnt on pre-tokenised words) trained with
  the ``tokenizers`` library and cached by a fingerprint of the texts and the settings.
- ``encode_cached(tokenizer, text, cache_key)``: token ids of a long text, cached on disk by the
  tokenizer's and the text's fingerprints (a stale cache cannot be read back by mistake).
- ``hub_dataset(dataset_id, ...)``: texts of a Hugging Face dataset for the gpu profile, where the
  hub answers; offline it fails at once and names the packaged alternative.

Both caches live under ``reproduce.paths.cache_dir()`` and are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from reproduce import paths

END_OF_TEXT = "<|endoftext|>"  # the one special token: separates documents when they are concatenated


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))  # length-prefixed: ("ab", "c") != ("a", "bc")
        h.update(data)
    return h.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    """sha256 over the texts in order."""
    return _digest(*texts)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a tokenizer's full definition (vocabulary, merges, normalisation, special tokens).

    Accepts a ``tokenizers.Tokenizer`` or a Hugging Face ``transformers`` tokenizer (fast or slow).
    """
    if isinstance(tokenizer, Tokenizer):
        return _digest(tokenizer.to_str())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return _digest(type(tokenizer).__name__, backend.to_str())
    if hasattr(tokenizer, "get_vocab"):
        return _digest(type(tokenizer).__name__, json.dumps(sorted(tokenizer.get_vocab().items())))
    raise TypeError(f"cannot fingerprint a {type(tokenizer).__name__}; pass a tokenizers.Tokenizer or a "
                    "transformers tokenizer")


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (no BOS/EOS), for either tokenizer family."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer.encode(text, add_special_tokens=False).ids
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):  # skips the "longer than model_max_length" warning of a book-long text
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer.encode(text, add_special_tokens=False)


def _cache_subdir(name: str) -> Path:
    path = paths.cache_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe_key(cache_key: str) -> str:
    if not cache_key or any(c in cache_key for c in "/\\\0") or cache_key.startswith("."):
        raise ValueError(f"cache_key must be a plain file-name prefix, got {cache_key!r}")
    return cache_key


def train_bpe_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    cache_key: str,
    *,
    min_frequency: int = 2,
) -> Tokenizer:
    """Byte-level BPE tokenizer trained on ``texts`` (cached); ids 0.. are ``END_OF_TEXT``, the 256 bytes, merges.

    The cache file is ``<cache>/tokenizers/<cache_key>-<fingerprint>.json``, where the fingerprint
    covers the texts, ``vocab_size``, ``min_frequency`` and the tokenizers version.
    """
    import tokenizers

    if not isinstance(vocab_size, int) or vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must be an int > 257 (256 bytes + {END_OF_TEXT} + merges), got {vocab_size!r}")
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    key = _digest(texts_fingerprint(texts), str(vocab_size), str(min_frequency), tokenizers.__version__)[:16]
    path = _cache_subdir("tokenizers") / f"{_safe_key(cache_key)}-{key}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has an id: no unknown tokens
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    _atomic_write_text(path, tokenizer.to_str())
    return tokenizer


def encode_cached(tokenizer: Any, text: str, cache_key: str) -> np.ndarray:
    """Token ids of ``text`` (int64, 1-D), cached in ``<cache>/tokens/<cache_key>-<fingerprint>.npy``."""
    key = _digest(tokenizer_fingerprint(tokenizer), text)[:16]
    path = _cache_subdir("tokens") / f"{_safe_key(cache_key)}-{key}.npy"
    if path.exists():
        return np.load(path).astype(np.int64)
    ids = np.asarray(encode(tokenizer, text), dtype=np.int64)
    stored = ids.astype(np.uint16 if ids.size == 0 or ids.max() < 2**16 else np.int32)  # 4x smaller on disk
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    with os.fdopen(fd, "wb") as f:
        np.save(f, stored)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like any build output
    os.replace(tmp, path)
    return ids


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def hub_dataset(
    dataset_id: str,
    config: str | None = None,
    split: str = "train",
    *,
    text_field: str = "text",
    streaming: bool = True,
    param: str = "",
) -> Iterator[str]:
    """Texts of a Hugging Face dataset (e.g. ``"emozilla/pg19"``) or a local parquet folder, streamed.

    Fails in one line (:class:`reproduce.hub.HubError`: offline, gated, script-based, no such split,
    config or column), offline at once, naming the packaged alternative. ``param``: the notebook
    parameter holding ``dataset_id``. ``datasets`` comes with the extras ``gpu`` and ``test``.
    """
    from reproduce import hub

    data = hub.load_dataset(dataset_id, config, split, streaming=streaming, param=param,
                            alternative="use profile=cpu, which reads the packaged novels (reproduce.data.novels)")
    return _texts(data, text_field, dataset_id)


def _texts(rows: Iterable[dict], text_field: str, dataset_id: str) -> Iterator[str]:
    from reproduce import hub

    for i, row in enumerate(rows):
        if i == 0:
            hub.require_columns(row, [text_field], dataset_id)
        yield row[text_field]
