"""The Transformer encoder-decoder of "Attention Is All You Need" (§3), written from the paper.

Shape notation (used in every shape comment below):
    B batch, S source length, T target length, L cached target length (incremental decoding),
    H heads, D d_model, K d_k (query/key width per head), E d_v (value width per head),
    F d_ff, V vocabulary size.

Order: primitives (eq. 1 attention, positional encodings) -> blocks (multi-head attention,
position-wise FFN eq. 2, post-LN encoder/decoder layers) -> config -> model -> training pieces
(label-smoothed loss, eq. 3 schedule, parameter count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ------------------------------------------------------------------------------------------------
# Primitives
# ------------------------------------------------------------------------------------------------


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout_p: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V — eq. (1), §3.2.1, the explicit form.

    ``q``: (B, H, T, K), ``k``: (B, H, S, K), ``v``: (B, H, S, E); ``mask``: boolean, broadcastable
    to (B, H, T, S), True where attention is *allowed* (illegal connections are set to -inf before
    the softmax, §3.2.3). Returns the output (B, H, T, E) and the weights (B, H, T, S).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, H, T, S)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights  # (B, H, T, E), (B, H, T, S)


def sinusoidal_encoding(max_len: int, d_model: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...) — §3.5.

    Wavelengths form a geometric progression from 2π to 10000·2π. Returns (max_len, D).
    """
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (D/2,)
    angle = pos / 10000.0 ** (two_i / d_model)  # (max_len, D/2)
    pe = torch.zeros(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.float()


def causal_mask(t: int, device: torch.device | None = None) -> Tensor:
    """(T, T) boolean, True on and below the diagonal: position i may attend to j <= i (§3.2.3)."""
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()


# ------------------------------------------------------------------------------------------------
# Blocks
# ------------------------------------------------------------------------------------------------


@dataclass
class LayerCache:
    """Keys and values one decoder layer has already computed (incremental decoding).

    ``self_k``/``self_v``: (B, H, L, K)/(B, H, L, E), grown by one position per step.
    ``cross_k``/``cross_v``: (B, H, S, K)/(B, H, S, E), the encoder memory projected once.
    """

    self_k: Tensor | None = None
    self_v: Tensor | None = None
    cross_k: Tensor | None = None
    cross_v: Tensor | None = None

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` of the batch (beam search picks which hypotheses survive)."""
        for name in ("self_k", "self_v", "cross_k", "cross_v"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index))


@dataclass
class DecoderCache:
    """One :class:`LayerCache` per decoder layer plus the number of target tokens seen."""

    layers: list[LayerCache] = field(default_factory=list)
    seen: int = 0

    def reorder(self, index: Tensor) -> None:
        for layer in self.layers:
            layer.reorder(index)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    §3.2.2. W^Q, W^K: D -> H·K; W^V: D -> H·E; W^O: H·E -> D, each head's slice is one W_i.
    One module, two paths: ``need_weights=False`` uses PyTorch's fused
    ``scaled_dot_product_attention`` (fast path); ``need_weights=True`` uses the explicit eq. (1)
    and also returns the per-head weights (for figures). Both compute the same function (tested).

    Deviation: the projections carry biases, as in ``torch.nn.MultiheadAttention`` and
    tensor2tensor's dense layers; the paper writes bare matrices (+(2K+E)·H + D parameters).
    """

    def __init__(self, d_model: int, n_heads: int, d_k: int, d_v: int, dropout: float = 0.0):
        super().__init__()
        self.n_heads, self.d_k, self.d_v, self.dropout = n_heads, d_k, d_v, dropout
        self.w_q = nn.Linear(d_model, n_heads * d_k)
        self.w_k = nn.Linear(d_model, n_heads * d_k)
        self.w_v = nn.Linear(d_model, n_heads * d_v)
        self.w_o = nn.Linear(n_heads * d_v, d_model)

    def split_heads(self, x: Tensor, width: int) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, width).transpose(1, 2)  # (B, T, H·W) -> (B, H, T, W)

    def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Keys (B, H, S, K) and values (B, H, S, E) of ``source`` (B, S, D)."""
        return self.split_heads(self.w_k(source), self.d_k), self.split_heads(self.w_v(source), self.d_v)

    def forward(
        self,
        query: Tensor,
        source: Tensor | None = None,
        mask: Tensor | None = None,
        need_weights: bool = False,
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``query`` (B, T, D) attends to ``source`` (B, S, D) — or to precomputed ``kv``.

        ``mask`` is boolean, broadcastable to (B, H, T, S), True where allowed.
        Returns (B, T, D) and the weights (B, H, T, S) when ``need_weights``, else None.
        """
        q = self.split_heads(self.w_q(query), self.d_k)  # (B, H, T, K)
        k, v = kv if kv is not None else self.project_kv(query if source is None else source)
        p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask, p)  # eq. (1), explicit
        else:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p), None
        b, _, t, _ = out.shape
        out = out.transpose(1, 2).reshape(b, t, self.n_heads * self.d_v)  # (B, H, T, E) -> (B, T, H·E)
        return self.w_o(out), weights


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2 — eq. (2), §3.3; D -> F -> D at every position."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)  # on the hidden activation, as tensor2tensor's relu_dropout

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class EncoderLayer(nn.Module):
    """Self-attention then FFN, each as LayerNorm(x + Dropout(Sublayer(x))) — §3.1 and §5.4 (post-LN)."""

    def __init__(self, cfg: "TransformerConfig"):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.d_k, cfg.d_v, cfg.attention_dropout)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.ffn_dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.p_drop)  # residual dropout, §5.4

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        a, w = self.self_attn(x, mask=mask, need_weights=need_weights)
        x = self.norm1(x + self.dropout(a))
        x = self.norm2(x + self.dropout(self.ffn(x)))
        return x, w


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention, FFN; post-LN residuals — §3.1."""

    def __init__(self, cfg: "TransformerConfig"):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.d_k, cfg.d_v, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.d_k, cfg.d_v, cfg.attention_dropout)
        self.ffn = PositionwiseFeedForward(cfg.d_model, cfg.d_ff, cfg.ffn_dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.p_drop)

    def forward(
        self,
        y: Tensor,
        memory: Tensor,
        self_mask: Tensor | None,
        memory_mask: Tensor | None,
        cache: LayerCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``y`` (B, T, D) — with a ``cache``, only the new positions; ``memory`` (B, S, D)."""
        if cache is not None:  # incremental decoding: append this step's keys/values
            k, v = self.self_attn.project_kv(y)  # (B, H, T, K), (B, H, T, E)
            if cache.self_k is not None:
                k = torch.cat([cache.self_k, k], dim=2)  # (B, H, L+T, K)
                v = torch.cat([cache.self_v, v], dim=2)  # (B, H, L+T, E)
            cache.self_k, cache.self_v = k, v
            if cache.cross_k is None:
                cache.cross_k, cache.cross_v = self.cross_attn.project_kv(memory)
            a, w_self = self.self_attn(y, mask=self_mask, need_weights=need_weights, kv=(k, v))
        else:
            a, w_self = self.self_attn(y, mask=self_mask, need_weights=need_weights)
        y = self.norm1(y + self.dropout(a))
        kv = (cache.cross_k, cache.cross_v) if cache is not None else None
        c, w_cross = self.cross_attn(y, memory, mask=memory_mask, need_weights=need_weights, kv=kv)
        y = self.norm2(y + self.dropout(c))
        y = self.norm3(y + self.dropout(self.ffn(y)))
        return y, w_self, w_cross


# ------------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------------

Positional = Literal["sinusoidal", "learned"]


@dataclass(frozen=True)
class TransformerConfig:
    """Every Table 3 column is a field; defaults are the base model of Table 3.

    ``d_k``/``d_v`` default to d_model / h (§3.2.2). Bad values raise ``ValueError`` naming the field.
    """

    vocab_size: int = 37000  # shared source-target BPE vocabulary, §5.1
    n_layers: int = 6  # N
    d_model: int = 512
    d_ff: int = 2048
    n_heads: int = 8  # h
    d_k: int | None = None
    d_v: int | None = None
    p_drop: float = 0.1  # residual dropout, §5.4
    label_smoothing: float = 0.1  # ε_ls, §5.4
    positional: Positional = "sinusoidal"  # row (E): "learned"
    max_len: int = 1024  # positions available to the encoding (learned rows need a bound)
    pad_id: int = 0
    attention_dropout: float = 0.0  # Deviation knob (tensor2tensor has one); the paper names none
    ffn_dropout: float = 0.0  # idem
    source_blind: bool = False  # control, not a paper row: the encoder's output replaced by zeros

    def __post_init__(self) -> None:
        if self.d_k is None:
            object.__setattr__(self, "d_k", self._per_head("d_k"))
        if self.d_v is None:
            object.__setattr__(self, "d_v", self._per_head("d_v"))
        for name in ("vocab_size", "n_layers", "d_model", "d_ff", "n_heads", "d_k", "d_v", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        for name in ("p_drop", "label_smoothing", "attention_dropout", "ffn_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"TransformerConfig.{name} must be in [0, 1), got {value!r}")
        if self.positional not in ("sinusoidal", "learned"):
            raise ValueError(f"TransformerConfig.positional must be 'sinusoidal' or 'learned', got {self.positional!r}")
        if self.d_model % 2:
            raise ValueError(f"TransformerConfig.d_model must be even for the sinusoids, got {self.d_model}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"TransformerConfig.pad_id={self.pad_id} is outside the vocabulary [0, {self.vocab_size})")

    def _per_head(self, name: str) -> int:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TransformerConfig.{name} defaults to d_model / n_heads, but d_model={self.d_model} is not "
                f"divisible by n_heads={self.n_heads}; give {name} explicitly"
            )
        return self.d_model // self.n_heads

    def replace(self, **changes) -> "TransformerConfig":
        """A copy with ``changes``; d_k/d_v are re-derived unless given (Table 3 rows change h alone)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"TransformerConfig has no field(s) {sorted(unknown)}")
        base = {f.name: getattr(self, f.name) for f in fields(self)}
        if any(k in changes for k in ("n_heads", "d_model")):
            base["d_k"] = base["d_v"] = None
        return TransformerConfig(**{**base, **changes})

    @classmethod
    def base(cls, **changes) -> "TransformerConfig":
        """Table 3, row "base": N=6, d_model=512, d_ff=2048, h=8, d_k=d_v=64, P_drop=0.1, ε_ls=0.1."""
        return cls(**changes)

    @classmethod
    def big(cls, **changes) -> "TransformerConfig":
        """Table 3, row "big": d_model=1024, d_ff=4096, h=16, P_drop=0.3."""
        return cls(**{"d_model": 1024, "d_ff": 4096, "n_heads": 16, "p_drop": 0.3, **changes})


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


@dataclass
class Attention:
    """Attention weights of every layer for one forward pass (figures)."""

    encoder: list[Tensor]  # per layer (B, H, S, S)
    decoder_self: list[Tensor]  # per layer (B, H, T, T)
    decoder_cross: list[Tensor]  # per layer (B, H, T, S)


class Transformer(nn.Module):
    """Encoder-decoder of §3 (Figure 1) with one shared embedding matrix (§3.4).

    The source embedding, the target embedding and the pre-softmax projection share one (V, D)
    matrix; embeddings are multiplied by sqrt(d_model) and summed with positional encodings, then
    dropped out (§5.4). Returns logits (B, T, V).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        if cfg.positional == "sinusoidal":
            self.register_buffer("pe", sinusoidal_encoding(cfg.max_len, cfg.d_model), persistent=False)
            self.pos_embedding = None
        else:  # row (E): learned positional embeddings
            self.pos_embedding = nn.Embedding(cfg.max_len, cfg.d_model)
        # the source-blind control has no encoder layers: nothing it would train reaches the loss (and no
        # parameter is left unused, which distributed data parallel refuses)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(0 if cfg.source_blind else cfg.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.dropout = nn.Dropout(cfg.p_drop)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices (as tensor2tensor), N(0, d_model^-0.5) embeddings: with the ×sqrt(d_model)
        scale the embedded inputs have unit variance, and the tied output layer starts small."""
        for name, p in self.named_parameters():
            if p.dim() > 1 and "embedding" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        nn.init.normal_(self.embedding.weight, std=self.cfg.d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[self.cfg.pad_id].zero_()
        if self.pos_embedding is not None:
            nn.init.normal_(self.pos_embedding.weight, std=self.cfg.d_model**-0.5)

    # -- pieces -----------------------------------------------------------------------------------
    def positions(self, start: int, length: int) -> Tensor:
        if start + length > self.cfg.max_len:
            raise ValueError(f"sequence of {start + length} positions exceeds max_len={self.cfg.max_len}")
        if self.pos_embedding is None:
            return self.pe[start : start + length]  # (T, D)
        idx = torch.arange(start, start + length, device=self.embedding.weight.device)
        return self.pos_embedding(idx)  # (T, D)

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        """Embedding × sqrt(d_model) + PE, then dropout — §3.4, §3.5, §5.4. (B, T) -> (B, T, D)."""
        x = self.embedding(tokens) * math.sqrt(self.cfg.d_model)
        return self.dropout(x + self.positions(start, tokens.size(1)))

    def src_mask(self, src: Tensor) -> Tensor:
        return (src != self.cfg.pad_id)[:, None, None, :]  # (B, 1, 1, S): keys that are not padding

    def encode(self, src: Tensor, need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """(B, S) tokens -> memory (B, S, D) and the encoder's attention weights if asked.

        ``cfg.source_blind`` (the source-blind control): the memory is zeros, so every cross-attention
        key and value is its projection's bias and the decoder gets the same vector for every source:
        a target-side language model with the same decoder (only the source length, through the
        padding mask and the decoders' length cap, is left)."""
        if self.cfg.source_blind:
            return torch.zeros(*src.shape, self.cfg.d_model, device=src.device, dtype=self.embedding.weight.dtype), []
        x, mask, weights = self.embed(src), self.src_mask(src), []
        for layer in self.encoder:
            x, w = layer(x, mask, need_weights)
            weights.append(w)
        return x, weights

    def decode(
        self, tgt_in: Tensor, memory: Tensor, src: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Teacher-forced decoder: (B, T) shifted targets -> hidden states (B, T, D)."""
        y = self.embed(tgt_in)
        self_mask = causal_mask(tgt_in.size(1), tgt_in.device)  # (T, T)
        mem_mask = self.src_mask(src)
        w_self, w_cross = [], []
        for layer in self.decoder:
            y, ws, wc = layer(y, memory, self_mask, mem_mask, need_weights=need_weights)
            w_self.append(ws)
            w_cross.append(wc)
        return y, w_self, w_cross

    def logits(self, hidden: Tensor) -> Tensor:
        """Pre-softmax linear layer tied to the embedding matrix, §3.4. (B, T, D) -> (B, T, V)."""
        return hidden @ self.embedding.weight.t()

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        memory, _ = self.encode(src)
        hidden, _, _ = self.decode(tgt_in, memory, src)
        return self.logits(hidden)

    def forward_with_attention(self, src: Tensor, tgt_in: Tensor) -> tuple[Tensor, Attention]:
        """Same as ``forward`` through the explicit eq. (1) path, also returning every weight map."""
        memory, w_enc = self.encode(src, need_weights=True)
        hidden, w_self, w_cross = self.decode(tgt_in, memory, src, need_weights=True)
        return self.logits(hidden), Attention(w_enc, w_self, w_cross)

    # -- incremental decoding ---------------------------------------------------------------------
    def new_cache(self) -> DecoderCache:
        return DecoderCache([LayerCache() for _ in self.decoder])

    def decode_step(self, tokens: Tensor, memory: Tensor, src: Tensor, cache: DecoderCache) -> Tensor:
        """Logits (B, T_new, V) for the new target tokens (B, T_new), reusing cached keys/values.

        Each new position attends to every cached position and to new ones at or before it;
        the encoder memory is projected once per layer and kept in the cache.
        """
        start, t_new = cache.seen, tokens.size(1)
        y = self.embed(tokens, start=start)
        self_mask = causal_mask(start + t_new, tokens.device)[start:]  # (T_new, L+T_new)
        mem_mask = self.src_mask(src)
        for layer, layer_cache in zip(self.decoder, cache.layers):
            y, _, _ = layer(y, memory, self_mask, mem_mask, cache=layer_cache)
        cache.seen += t_new
        return self.logits(y)


# ------------------------------------------------------------------------------------------------
# Training pieces
# ------------------------------------------------------------------------------------------------


def label_smoothed_loss(logits: Tensor, target: Tensor, epsilon: float, pad_id: int) -> Tensor:
    """Cross-entropy against (1-ε)·one-hot + ε/V (label smoothing, §5.4, Szegedy et al. 2016).

    Mean over non-padding target tokens. ``logits`` (B, T, V), ``target`` (B, T).
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=pad_id, label_smoothing=epsilon
    )  # (B·T, V) against (B·T,)


def noam_lr(step: int, d_model: int, warmup: int) -> float:
    """lrate = d_model^-0.5 · min(step^-0.5, step · warmup^-1.5) — eq. (3), §5.3 (step counts from 1)."""
    step = max(step, 1)
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def count_parameters(cfg: TransformerConfig) -> int:
    """Trainable parameters of a model built on the ``meta`` device (no memory is allocated)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return sum(p.numel() for p in model.parameters())
