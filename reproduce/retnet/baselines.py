"""The compared models of the RetNet notebook (arXiv:2307.08621): the Table 5/6 rows, their shared shape,
their builders, and the Transformer blocks that Table 4's training cost measures RetNet's block against.

- :data:`VARIANTS` (and ``LABELS``, ``FAMILY``, ``TABLE5``, ``ABLATIONS``, ``CONTROL``, ``MIXERS``):
  the rows of Tables 5/6 and the no-mixer control, from their one declaration in
  ``reproduce.configs.retnet.VARIANTS``;
- :class:`LMShape`, :func:`retnet_config`, :func:`transformer_config`, :func:`build_model`: one row's
  model at a shared width, depth and heads (RetNet and its ablations: :mod:`reproduce.retnet.model`;
  the Transformer: transformers' ``LlamaForCausalLM``, SDPA);
- :class:`SoftmaxAttention`, :class:`TransformerBlock`: a pre-LN Transformer block of RetNet's 12 d^2
  weights, with fused (SDPA) or unfused (math) softmax attention: Table 4's two Transformer columns;
- :class:`LinearAttention`, :class:`LinearTransformerForCausalLM`: Table 5's Linear Transformer
  (Katharopoulos et al., 2020, arXiv:2006.16236, eqs. 6 and 9): feature map elu(x) + 1 on queries
  and keys, a positive normaliser, in the same pre-LN block of 12 d^2 weights.

Deviations from the paper: its Transformer baseline is not specified beyond its size; ours is
LLaMA-style (pre-RMSNorm, RoPE, SwiGLU FFN of 8d/3) for the LMs, and a pre-LN block with rotation and
a GELU FFN of 4d for Table 4, both with RetNet's 12 d^2 weights per block (§2.3). The Linear
Transformer's block is Table 4's block with linear attention in place of softmax attention and no
rotation (Katharopoulos et al. use no position encoding inside the kernel: order enters through causality).

Imports torch only at the top (transformers inside the builders): a fresh training-cost process
(:func:`reproduce.retnet.costs.training_cost`) builds its blocks without importing transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from reproduce.configs.retnet import VARIANTS as _ROWS

from .retention import rotate

# --------------------------------------------------------------------------------------------------
# The rows of Tables 5/6 and the control
# --------------------------------------------------------------------------------------------------
VARIANTS: dict[str, dict | None] = {name: overrides for name, (_, _, _, overrides) in _ROWS.items()}  # None: not a RetNet
LABELS: dict[str, str] = {name: label for name, (_, label, _, _) in _ROWS.items()}
FAMILY: dict[str, str] = {name: family for name, (_, _, family, _) in _ROWS.items()}  # whose swept lr a row uses
TABLE5 = tuple(name for name, (table, _, _, _) in _ROWS.items() if table == "Table 5")
ABLATIONS = tuple(name for name, (table, _, _, _) in _ROWS.items() if table == "Table 6")
CONTROL = "no_mixer"  # embeddings + FFN only: what a model learns without mixing tokens
MIXERS = tuple(name for name in _ROWS if name != CONTROL)
# Which model a row is: transformers' LLaMA, the Linear Transformer below, or RetNet (with the row's overrides).
ARCHITECTURE: dict[str, str] = {name: ("retnet" if overrides is not None else name) for name, overrides in VARIANTS.items()}


@dataclass(frozen=True)
class LMShape:
    """Width, depth and heads shared by every compared model, plus the vocabulary."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    gamma_schedule: str = "paper"
    head_norm: str = "groupnorm"
    chunk_size: int = 64


def retnet_config(shape: LMShape, variant: str = "retnet", **extra):
    """The RetNetConfig of one Table 5/6 row."""
    from .model import RetNetConfig

    overrides = dict(VARIANTS[variant] or {})
    if variant == "small_heads":
        overrides["num_heads"] = shape.num_heads * overrides["num_heads"]
    base = dict(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_heads=shape.num_heads, decay=shape.gamma_schedule, head_norm=shape.head_norm, chunk_size=shape.chunk_size,
    )
    return RetNetConfig(**{**base, **overrides, **extra})


def transformer_config(shape: LMShape, max_positions: int = 8192):
    """A LLaMA-style Transformer of the same width, depth and heads (transformers' own model).

    Its SwiGLU FFN has 3 d x I weights; I = 8d/3 gives 12 d^2 per block, RetNet's allocation (§2.3).
    Pre-RMSNorm and RoPE (the paper's Transformer baseline is not otherwise specified).
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=round(8 * shape.hidden_size / 3),
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def build_model(shape: LMShape, variant: str, seed: int, dtype=torch.float32):
    """A freshly initialised model of one row, seeded."""
    from transformers import LlamaForCausalLM

    from .model import RetNetForCausalLM

    torch.manual_seed(seed)
    if ARCHITECTURE[variant] == "transformer":
        model = LlamaForCausalLM._from_config(transformer_config(shape), attn_implementation="sdpa")
    elif ARCHITECTURE[variant] == "linear_transformer":
        model = LinearTransformerForCausalLM(shape)
    else:
        model = RetNetForCausalLM(retnet_config(shape, variant))
    return model.to(dtype)


# --------------------------------------------------------------------------------------------------
# Table 4's Transformer block: fused and unfused softmax attention
# --------------------------------------------------------------------------------------------------
class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention with rotation (4 d^2 weights).

    ``fused=True``: ``scaled_dot_product_attention`` (on CPU a fused kernel that never holds the
    T x T probabilities for the backward pass; FlashAttention's role on a GPU). ``fused=False``: the
    unfused (math) form softmax(Q K^T / sqrt(d_k) + causal mask) V, which keeps the T x T scores
    and probabilities for the backward pass: the paper's "Transformer" column of Table 4.
    """

    def __init__(self, hidden_size: int, num_heads: int, fused: bool = True):
        super().__init__()
        self.num_heads, self.fused = num_heads, fused
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, K)
        positions = torch.arange(t, device=x.device)
        q, k = rotate(q, positions), rotate(k, positions)
        if self.fused:
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, K)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (T, T)
            y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (B, H, T, K)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class TransformerBlock(nn.Module):
    """Pre-LN Transformer block of 12 d^2 weights (attention 4 d^2 + GELU FFN of 4d): RetNet's budget (§2.3).

    ``attention``: the token mixer (default: :class:`SoftmaxAttention`, Table 4's Transformer; Table 5's
    Linear Transformer passes :class:`LinearAttention`, :func:`linear_transformer_block`)."""

    def __init__(self, hidden_size: int, num_heads: int, fused: bool = True, attention: nn.Module | None = None):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.attention = attention if attention is not None else SoftmaxAttention(hidden_size, num_heads, fused)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size, bias=False), nn.GELU(),
                                 nn.Linear(4 * hidden_size, hidden_size, bias=False))

    def forward(self, x):
        y = self.attention(self.attention_norm(x)) + x
        return self.ffn(self.ffn_norm(y)) + y


# --------------------------------------------------------------------------------------------------
# Table 5's Linear Transformer (Katharopoulos et al., 2020)
# --------------------------------------------------------------------------------------------------
def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0 — Katharopoulos et al. (2020), eq. (7)."""
    return torch.nn.functional.elu(x) + 1


class LinearAttention(nn.Module):
    """Causal linear attention (4 d^2 weights) — Katharopoulos et al. (2020), eq. (9):

        out_t = phi(q_t)^T S_t / (phi(q_t)^T z_t),  S_t = sum_{j<=t} phi(k_j) v_j^T,  z_t = sum_{j<=t} phi(k_j)

    computed in its parallel form, (phi(Q) phi(K)^T masked causally) V / row sums: every weight is
    positive, so the normaliser is too (unlike retention's signed scores, §2.2).
    """

    EPS = 1e-6  # guards the division only; the normaliser is > 0 for every row

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, K)
        q, k = elu_feature_map(q), elu_feature_map(k)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (T, T)
        weights = (q @ k.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (B, H, T, T): phi(q_t)^T phi(k_j), j <= t
        y = (weights @ v) / (weights.sum(-1, keepdim=True) + self.EPS)  # (B, H, T, K)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


def linear_transformer_block(hidden_size: int, num_heads: int) -> TransformerBlock:
    """Pre-LN block of 12 d^2 weights: linear attention (4 d^2) + GELU FFN of 4d (8 d^2), as Table 4's block."""
    return TransformerBlock(hidden_size, num_heads, attention=LinearAttention(hidden_size, num_heads))


@dataclass
class LinearTransformerOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class LinearTransformerForCausalLM(nn.Module):
    """A decoder LM of :func:`linear_transformer_block` s at the shared shape: embeddings (std d^-1/2, as
    RetNet's), blocks, final LayerNorm, output projection tied to the embeddings. Called as the other
    rows are (``model(input_ids=..., labels=...)``: ``.loss`` shifts the labels inside, ``.logits``)."""

    def __init__(self, shape: LMShape):
        super().__init__()
        d = shape.hidden_size
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(shape.vocab_size, d)
        self.model.layers = nn.ModuleList(linear_transformer_block(d, shape.num_heads) for _ in range(shape.num_layers))
        self.model.norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, shape.vocab_size, bias=False)
        nn.init.normal_(self.model.embed_tokens.weight, std=d**-0.5)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied, as the other rows

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, **_) -> LinearTransformerOutput:
        x = self.model.embed_tokens(input_ids)  # (B, T, D)
        for layer in self.model.layers:
            x = layer(x)
        logits = self.lm_head(self.model.norm(x))  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                               labels[:, 1:].reshape(-1), ignore_index=-100)
        return LinearTransformerOutput(loss, logits)
