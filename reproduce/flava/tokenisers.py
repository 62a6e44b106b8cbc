"""FLAVA's tokenisers (Singh et al., CVPR 2022, arXiv 2112.04482, §3.1): discrete image tokens for the
MIM and MMM targets, and WordPiece for the text. Both are fitted once on the training data and frozen.

Shape notation: B batch, S image side, p patch side, P patches, K codebook size, L text tokens.

Deviations from the paper:
* Image tokens come from a k-means VQ over patch pixels fitted once on the training images (K=256 by
  default) instead of the DALL-E dVAE (8192 codes), which is not downloadable offline. At 32-48 px a
  patch is a few flat colours; k-means codes keep exactly that (colour/edge content per patch).
* The text vocabulary (the paper: BERT's 30,522 WordPieces) is learnt on our text: BPE pieces, each
  entered word-initial and as a "##" continuation, encoded by WordPiece (``build_wordpiece`` says why).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def patchify(pixel_values: Tensor, patch: int) -> Tensor:
    """``(B, 3, S, S)`` -> ``(B, P, 3 * patch * patch)``, row-major over the grid like the ViT's conv."""
    b, c, s, _ = pixel_values.shape
    g = s // patch
    x = pixel_values.reshape(b, c, g, patch, g, patch)  # (B, 3, G, p, G, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * patch * patch)  # (B, P, 3 p p)


@dataclass
class PatchVQ:
    """A frozen discrete image tokenizer: k-means codebook over patch pixels (stands in for the dVAE)."""

    patch: int
    codebook: Tensor  # (K, 3 p p)

    @classmethod
    def fit(cls, pixel_values: Tensor, patch: int, size: int, seed: int, max_patches: int = 20_000) -> "PatchVQ":
        from sklearn.cluster import MiniBatchKMeans
        from threadpoolctl import threadpool_limits

        x = patchify(pixel_values, patch).reshape(-1, 3 * patch * patch)  # (B P, 3 p p)
        rng = np.random.default_rng(seed)
        if len(x) > max_patches:
            x = x[torch.from_numpy(rng.choice(len(x), max_patches, replace=False))]
        with threadpool_limits(1):  # OpenMP spinning on shared cores is 10x slower than one thread
            km = MiniBatchKMeans(n_clusters=size, random_state=seed, n_init=1, batch_size=4096).fit(x.numpy())
        return cls(patch, torch.from_numpy(km.cluster_centers_).float())

    @property
    def size(self) -> int:
        return len(self.codebook)

    @torch.no_grad()
    def encode(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, S, S)`` -> ``(B, P)`` code indices (nearest centroid)."""
        x = patchify(pixel_values, self.patch)  # (B, P, 3 p p)
        d = (self.codebook**2).sum(-1) - 2 * x @ self.codebook.T  # (B, P, K): squared distance minus |x|^2
        return d.argmin(-1)


def build_wordpiece(texts: list[str], vocab_size: int, max_len: int):
    """A BERT-style uncased WordPiece tokenizer trained on ``texts`` (``tokenizers``), as a fast HF tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # WordPieceTrainer breaks ties between equally frequent merges differently in every process (it
    # numbers the "##" continuation pieces in hash-map order): measured, 1-3 of 300 tokens changed
    # between runs. BpeTrainer without a continuation prefix is deterministic, so the pieces are learnt
    # by BPE merges over words and each piece enters the WordPiece vocabulary twice, word-initial and
    # as a "##" continuation; WordPiece then encodes by longest match over that set, numbered in a
    # fixed order (the specials first, then sorted).
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.normalizer = normalizers.BertNormalizer(lowercase=True)
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    n_pieces = (vocab_size - len(SPECIAL_TOKENS)) // 2
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=len(SPECIAL_TOKENS) + n_pieces,
                                                       special_tokens=list(SPECIAL_TOKENS), show_progress=False))
    pieces = sorted(t for t in bpe.get_vocab() if t not in SPECIAL_TOKENS)
    vocab = [*SPECIAL_TOKENS, *sorted([*pieces, *(f"##{t}" for t in pieces)])]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_len)


def tokenize(tokenizer, texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """``(input_ids (B, L), attention_mask (B, L))`` padded/truncated to ``max_len``."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]
