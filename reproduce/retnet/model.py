"""Retentive Network (RetNet) — Sun et al., 2023, arXiv:2307.08621: retention, MSR, the decoder LM.

Shape notation (one for the whole module):
    B batch, T tokens in this call, H heads, K key dim per head (d_k), V value dim per head,
    L tokens in one chunk, D model width (hidden size).

The three forms of retention share one set of weights and compute the same function:
    parallel   (eq. 5)  training, O(T^2) per sequence;
    recurrent  (eq. 6)  decoding, O(1) per token — the state is ``H x K x V`` per layer;
    chunkwise  (eq. 7)  long sequences: parallel inside a chunk, recurrent across chunks.

The retention-score normalisations of §2.2 ("Retention Score Normalization": scale QK^T by
1/sqrt(d_k); divide each row of D by the square root of its sum; divide each row of the scores by
max(|row sum|, 1)) are per-(token, head) positive scalars, so GroupNorm undoes them in exact
arithmetic. We go one step further and compute *the same* normalisers in all three forms: the row
sum of D has the closed form sum_{i<=n} gamma^i, and the score row sum is ``q_n . z_n`` with the
decayed key sum ``z_n = gamma z_{n-1} + k_n`` carried beside the state (K extra numbers per head).
The forms therefore agree before GroupNorm too, which is what lets the "- GroupNorm" ablation
decode recurrently.

Deviations from the paper (each also marked ``Deviation:`` where it is implemented):
- the decayed key sum ``z`` is kept in the recurrent state (K numbers per head, next to K x V) so
  that the §2.2 normalisers are exact in every form (torchscale 0.3.0 drops the score normaliser
  in its recurrent form, so its forms agree only after the head norm);
- "one gamma for all heads" (Table 6) does not say which gamma; we use 1 - 1/128, the geometric
  midpoint of §3.1's range [1 - 1/32, 1 - 1/512];
- linear layers have no bias (as in torchscale); the paper does not say.

Reference code read for facts (not copied): torchscale 0.3.0 ``component/multiscale_retention.py``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.utils import ModelOutput

Decay = Literal["paper", "eq8", "single", "none"]
HeadNorm = Literal["groupnorm", "rmsnorm", "none"]
Mode = Literal["parallel", "chunkwise", "recurrent"]
MODES: tuple[str, ...] = ("parallel", "chunkwise", "recurrent")


# ---------------------------------------------------------------------------------------------
# Decay rates and masks
# ---------------------------------------------------------------------------------------------
def decay_rates(num_heads: int, schedule: Decay = "paper", dtype=torch.float64) -> Tensor:
    """Per-head decay gamma, shape (H,).

    - ``paper``: gamma = 1 - exp(linspace(log 1/32, log 1/512, h)) — what §3.1 says the reported
      models used;
    - ``eq8``: gamma = 1 - 2^(-5 - arange(0, h)) — eq. (8)'s default (and torchscale's);
    - ``single``: one gamma for every head (Table 6 "- multi-scale decay"); Deviation: the paper
      does not give its value, we take 1 - 1/128, the geometric midpoint of §3.1's range;
    - ``none``: gamma = 1 (Table 6 "- gamma decay"; with no gate it is linear attention).
    """
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if schedule == "paper":
        return 1 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), num_heads, dtype=dtype))
    if schedule == "eq8":
        return 1 - torch.pow(torch.tensor(2.0, dtype=dtype), -5 - torch.arange(num_heads, dtype=dtype))
    if schedule == "single":
        return torch.full((num_heads,), 1 - 1 / 128, dtype=dtype)
    if schedule == "none":
        return torch.ones(num_heads, dtype=dtype)
    raise ValueError(f"unknown decay schedule {schedule!r}; expected one of {Decay.__args__}")


def decay_mask(gamma: Tensor, length: int) -> Tensor:
    """D[n, m] = gamma^(n - m) for n >= m, else 0 — eq. (5). Shape (H, T, T)."""
    n = torch.arange(length, device=gamma.device)
    distance = (n[:, None] - n[None, :]).to(gamma.dtype)  # (T, T)
    causal = distance >= 0
    power = torch.pow(gamma[:, None, None], distance.clamp(min=0))  # (H, T, T)
    return power * causal


def decay_row_sum(gamma: Tensor, positions: Tensor) -> Tensor:
    """sum_{i=0}^{n} gamma^i for each absolute position n: the row sums of D. Shape (H, T).

    Closed form (1 - gamma^(n+1)) / (1 - gamma), and n + 1 when gamma = 1.
    """
    n = positions.to(gamma.dtype)[None, :]  # (1, T)
    g = gamma[:, None]  # (H, 1)
    geometric = (1 - torch.pow(g, n + 1)) / torch.where(g == 1, torch.ones_like(g), 1 - g)
    return torch.where(g == 1, n + 1, geometric)


# ---------------------------------------------------------------------------------------------
# Rotation of Q and K (the Theta of eq. 5): xPos-style relative position, RoPE frequencies
# ---------------------------------------------------------------------------------------------
def rotate(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """x_n e^{i n theta} on interleaved pairs (x0, x1), (x2, x3), ... — Q ⊙ Θ and K ⊙ Θ̄, eq. (5).

    Rotating both q_n and k_m by their own position makes q_n . k_m depend on n - m only.
    x: (B, H, T, K); positions: (T,) absolute positions.
    """
    dim = x.shape[-1]
    theta = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=x.dtype) / dim)  # (K/2,)
    angle = positions.to(x.dtype)[:, None] * theta[None, :]  # (T, K/2)
    cos, sin = angle.cos(), angle.sin()
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, K/2) each
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (B, H, T, K/2, 2)
    return rotated.flatten(-2)  # (B, H, T, K)


# ---------------------------------------------------------------------------------------------
# Retention: the three forms
# ---------------------------------------------------------------------------------------------
@dataclass
class RetentionState:
    """Recurrent state of one retention layer: S_n = gamma S_{n-1} + K_n^T V_n (eq. 6).

    ``key_sum`` is z_n = gamma z_{n-1} + k_n (Deviation: kept so that the §2.2 score normaliser is
    exact in recurrent form). Neither grows with the sequence length.
    """

    kv: Tensor  # S_n, (B, H, K, V)
    key_sum: Tensor  # z_n, (B, H, K)

    @classmethod
    def zeros(cls, batch: int, gamma: Tensor, key_dim: int, value_dim: int, like: Tensor) -> RetentionState:
        h = gamma.shape[0]
        return cls(
            kv=like.new_zeros(batch, h, key_dim, value_dim),
            key_sum=like.new_zeros(batch, h, key_dim),
        )

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size() + self.key_sum.numel() * self.key_sum.element_size()

    def index_select(self, index: Tensor) -> RetentionState:
        return RetentionState(self.kv.index_select(0, index), self.key_sum.index_select(0, index))


def _normalise(out: Tensor, score_sum: Tensor, gamma: Tensor, positions: Tensor, key_dim: int) -> Tensor:
    """§2.2 normalisers from the raw output sum_m gamma^(n-m) (q_n.k_m) v_m and its score row sum.

    out: (B, H, T, V); score_sum: (B, H, T) = q_n . z_n. Divides by sqrt(d_k) * sqrt(sum_i D_ni), then
    by max(|normalised row sum|, 1).
    """
    scale = math.sqrt(key_dim) * decay_row_sum(gamma, positions).sqrt()  # (H, T)
    out = out / scale[None, :, :, None]
    score_sum = score_sum / scale[None]
    return out / score_sum.abs().clamp(min=1)[..., None]


def retention_parallel(q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, normalize: bool = True) -> Tensor:
    """Parallel retention, eq. (5): (Q K^T ⊙ D) V, with the §2.2 normalisers.

    q, k: (B, H, T, K) already rotated; v: (B, H, T, V); gamma: (H,). Returns (B, H, T, V).
    """
    t, key_dim = q.shape[-2], q.shape[-1]
    d = decay_mask(gamma.to(q.dtype), t)  # (H, T, T)
    scores = q @ k.transpose(-1, -2)  # (B, H, T, T)
    if normalize:
        scores = scores / math.sqrt(key_dim)
        d = d / d.sum(-1, keepdim=True).sqrt()  # D~_nm = D_nm / sqrt(sum_i D_ni)
    r = scores * d  # (B, H, T, T)
    if normalize:
        r = r / r.sum(-1, keepdim=True).abs().clamp(min=1)  # R~_nm = R_nm / max(|sum_i R_ni|, 1)
    return r @ v  # (B, H, T, V)


def retention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: RetentionState, offset: int, normalize: bool = True
) -> tuple[Tensor, RetentionState]:
    """Recurrent retention, eq. (6), one token at a time: S_n = gamma S_{n-1} + K_n^T V_n, o_n = Q_n S_n.

    q, k: (B, H, T, K); v: (B, H, T, V); ``offset`` = tokens already in ``state``.
    Returns (B, H, T, V) and the state after the last token.
    """
    g = gamma.to(q.dtype)
    kv, key_sum = state.kv, state.key_sum
    outs, score_sums = [], []
    for t in range(q.shape[-2]):
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, K), (B, H, K), (B, H, V)
        kv = g[None, :, None, None] * kv + k_t[..., :, None] * v_t[..., None, :]  # (B, H, K, V)
        key_sum = g[None, :, None] * key_sum + k_t  # (B, H, K)
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, kv))  # (B, H, V)
        score_sums.append((q_t * key_sum).sum(-1))  # (B, H)
    out = torch.stack(outs, dim=2)  # (B, H, T, V)
    if normalize:
        positions = torch.arange(offset, offset + q.shape[-2], device=q.device)
        out = _normalise(out, torch.stack(score_sums, dim=2), g, positions, q.shape[-1])
    return out, RetentionState(kv, key_sum)


def retention_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: Tensor,
    chunk_size: int,
    state: RetentionState,
    offset: int,
    normalize: bool = True,
) -> tuple[Tensor, RetentionState]:
    """Chunkwise recurrent retention, eq. (7).

    Inside chunk i (L tokens): (Q_i K_i^T ⊙ D) V_i + (Q_i R_{i-1}) ⊙ xi, xi_j = gamma^(j+1);
    across chunks: R_i = K_i^T (V_i ⊙ zeta) + gamma^L R_{i-1}, zeta_j = gamma^(L-j-1) (0-based j).
    The last chunk may be shorter than ``chunk_size``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    g = gamma.to(q.dtype)
    kv, key_sum = state.kv, state.key_sum
    outs, score_sums = [], []
    for start in range(0, q.shape[-2], chunk_size):
        q_i, k_i, v_i = (x[:, :, start : start + chunk_size] for x in (q, k, v))  # (B, H, L, .)
        length = q_i.shape[-2]
        d = decay_mask(g, length)  # (H, L, L)
        j = torch.arange(length, device=q.device, dtype=q.dtype)
        xi = torch.pow(g[:, None], j + 1)  # (H, L)
        zeta = torch.pow(g[:, None], length - j - 1)  # (H, L)
        inner = ((q_i @ k_i.transpose(-1, -2)) * d) @ v_i  # (B, H, L, V)
        cross = (q_i @ kv) * xi[None, :, :, None]  # (B, H, L, V)
        outs.append(inner + cross)
        z = d @ k_i + xi[None, :, :, None] * key_sum[:, :, None, :]  # (B, H, L, K): z_n per token
        score_sums.append((q_i * z).sum(-1))  # (B, H, L)
        decay_chunk = torch.pow(g, length)[None, :, None, None]  # gamma^L, (1, H, 1, 1)
        kv = decay_chunk * kv + k_i.transpose(-1, -2) @ (v_i * zeta[None, :, :, None])  # (B, H, K, V)
        key_sum = decay_chunk[..., 0] * key_sum + (k_i * zeta[None, :, :, None]).sum(-2)  # (B, H, K)
    out = torch.cat(outs, dim=2)  # (B, H, T, V)
    if normalize:
        positions = torch.arange(offset, offset + q.shape[-2], device=q.device)
        out = _normalise(out, torch.cat(score_sums, dim=2), g, positions, q.shape[-1])
    return out, RetentionState(kv, key_sum)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
_BASE_CONFIG_KEYS = {f.name for f in dataclasses.fields(PreTrainedConfig)} | {
    "model_type",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
}


@strict
class RetNetConfig(PreTrainedConfig):
    """RetNet hyper-parameters; defaults are the paper's 1.3B model (Table 2, §3.1).

    1.3B: hidden 2048, 24 layers, d_k = 256 per head (so 8 heads), value dim 2d, FFN 2d (§2.3 keeps
    12 d^2 parameters per block, like a Transformer). Each Table 6 ablation is one switch:
    ``use_gate=False`` (- swish gate), ``head_norm="none"`` (- GroupNorm), ``decay="none"`` (- gamma
    decay), ``decay="single"`` (- multi-scale decay), more heads at the same width (reduced head dim).
    Unknown keys and inconsistent values raise an error naming them.
    """

    model_type = "retnet"

    vocab_size: int = 50257  # not stated in the paper; a GPT-2-sized vocabulary
    hidden_size: int = 2048
    num_hidden_layers: int = 24
    num_heads: int = 8  # d_k = hidden_size / num_heads = 256 (§3.1)
    value_factor: int = 2  # value dim = 2 d (§2.3)
    ffn_factor: int = 2  # FFN intermediate = 2 d (§2.3)
    decay: str = "paper"
    use_gate: bool = True
    head_norm: str = "groupnorm"
    normalize_retention: bool = True  # the §2.2 score normalisers
    use_rotation: bool = True
    rotation_base: float = 10000.0
    norm_eps: float = 1e-6
    forward_mode: str = "parallel"  # form used by forward() when no state is asked for
    chunk_size: int = 512
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self, **kwargs):
        unknown = sorted(set(kwargs) - _BASE_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"RetNetConfig: unknown key(s) {unknown}; known: {sorted(self.__dataclass_fields__)}")
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: refuse values that cannot build a RetNet."""
        checks = {
            "decay": self.decay in Decay.__args__,
            "head_norm": self.head_norm in HeadNorm.__args__,
            "forward_mode": self.forward_mode in ("parallel", "chunkwise"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"RetNetConfig.{name}={getattr(self, name)!r} is not allowed")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "value_factor", "ffn_factor", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"RetNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"RetNetConfig: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.use_rotation and self.key_dim % 2:
            raise ValueError(f"RetNetConfig: rotation needs an even key dim, got {self.key_dim}")
        if not self.norm_eps >= 0:
            raise ValueError(f"RetNetConfig.norm_eps must be >= 0, got {self.norm_eps}")

    @property
    def key_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def value_dim(self) -> int:
        return self.key_dim * self.value_factor


# ---------------------------------------------------------------------------------------------
# Multi-scale retention (§2.2) and the RetNet block (§2.3)
# ---------------------------------------------------------------------------------------------
class HeadRMSNorm(nn.Module):
    """Per-head RMSNorm without affine weights: torchscale 0.3.0's choice where the paper says GroupNorm."""

    def __init__(self, num_heads: int, eps: float):
        super().__init__()
        self.num_heads, self.eps = num_heads, eps

    def forward(self, y: Tensor) -> Tensor:  # (B, T, H*V)
        b, t, _ = y.shape
        y = y.view(b, t, self.num_heads, -1)  # (B, T, H, V)
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.view(b, t, -1)  # (B, T, H*V)


class MultiScaleRetention(nn.Module):
    """MSR, §2.2: heads with their own gamma, GroupNorm per head, swish gate.

    MSR(X) = (swish(X W_G) ⊙ GroupNorm(head_1, ..., head_h)) W_O.
    """

    def __init__(self, config: RetNetConfig):
        super().__init__()
        self.config = config
        h, d, k, v = config.num_heads, config.hidden_size, config.key_dim, config.value_dim
        self.q_proj = nn.Linear(d, h * k, bias=False)
        self.k_proj = nn.Linear(d, h * k, bias=False)
        self.v_proj = nn.Linear(d, h * v, bias=False)
        self.g_proj = nn.Linear(d, h * v, bias=False) if config.use_gate else None
        self.out_proj = nn.Linear(h * v, d, bias=False)
        if config.head_norm == "groupnorm":
            self.head_norm = nn.GroupNorm(h, h * v, eps=config.norm_eps)
        elif config.head_norm == "rmsnorm":
            self.head_norm = HeadRMSNorm(h, config.norm_eps)
        else:
            self.head_norm = None
        self.register_buffer("gamma", decay_rates(h, config.decay, torch.float64), persistent=False)

    def _project(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = x.shape
        c = self.config
        q = self.q_proj(x).view(b, t, c.num_heads, c.key_dim).transpose(1, 2)  # (B, H, T, K)
        k = self.k_proj(x).view(b, t, c.num_heads, c.key_dim).transpose(1, 2)  # (B, H, T, K)
        v = self.v_proj(x).view(b, t, c.num_heads, c.value_dim).transpose(1, 2)  # (B, H, T, V)
        if c.use_rotation:
            positions = torch.arange(offset, offset + t, device=x.device)
            q, k = rotate(q, positions, c.rotation_base), rotate(k, positions, c.rotation_base)
        return q, k, v

    def forward(
        self, x: Tensor, mode: Mode = "parallel", state: RetentionState | None = None, offset: int = 0
    ) -> tuple[Tensor, RetentionState | None]:
        """x: (B, T, D) -> (B, T, D), and the state after the last token (``None`` in parallel mode)."""
        c = self.config
        q, k, v = self._project(x, offset)
        gamma = self.gamma.to(x.dtype)
        if mode == "parallel":
            if state is not None or offset:
                raise ValueError("the parallel form starts from an empty state; use mode='chunkwise' to continue one")
            y, new_state = retention_parallel(q, k, v, gamma, c.normalize_retention), None
        else:
            if state is None:
                state = RetentionState.zeros(x.shape[0], gamma, c.key_dim, c.value_dim, like=x)
            if mode == "recurrent":
                y, new_state = retention_recurrent(q, k, v, gamma, state, offset, c.normalize_retention)
            elif mode == "chunkwise":
                y, new_state = retention_chunkwise(q, k, v, gamma, c.chunk_size, state, offset, c.normalize_retention)
            else:
                raise ValueError(f"unknown retention mode {mode!r}; expected one of {MODES}")
        b, t = x.shape[:2]
        y = y.transpose(1, 2).reshape(b, t, c.num_heads * c.value_dim)  # (B, T, H*V)
        if self.head_norm is not None:
            y = self.head_norm(y.reshape(b * t, -1)).view(b, t, -1) if isinstance(self.head_norm, nn.GroupNorm) else self.head_norm(y)
        if self.g_proj is not None:
            y = F.silu(self.g_proj(x)) * y  # swish gate
        return self.out_proj(y), new_state


class RetNetBlock(nn.Module):
    """Pre-LN block, §2.3: Y = MSR(LN(X)) + X;  X' = FFN(LN(Y)) + Y,  FFN(X) = gelu(X W1) W2."""

    def __init__(self, config: RetNetConfig):
        super().__init__()
        d = config.hidden_size
        self.retention_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.retention = MultiScaleRetention(config)
        self.ffn_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(d, config.ffn_factor * d, bias=False), nn.GELU(), nn.Linear(config.ffn_factor * d, d, bias=False)
        )

    def forward(self, x: Tensor, mode: Mode, state: RetentionState | None, offset: int):
        y, state = self.retention(self.retention_norm(x), mode, state, offset)
        y = y + x
        return self.ffn(self.ffn_norm(y)) + y, state


# ---------------------------------------------------------------------------------------------
# The recurrent state as generate()'s cache
# ---------------------------------------------------------------------------------------------
class RetNetCache:
    """Per-layer :class:`RetentionState` s plus the number of tokens seen: generate()'s cache.

    Its size is fixed (``H x K x (V + 1)`` numbers per layer and sequence) whatever the length:
    decoding is O(1) memory per step. ``get_seq_length()`` returns the tokens seen, which drive the
    positions of the rotation.
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int):
        self.layers: list[RetentionState | None] = [None] * num_layers
        self.seen_tokens = 0

    @property
    def is_linear(self) -> list[bool]:  # generate() asks: every layer is a fixed-size (linear) state
        return [True] * len(self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.layers if s is not None)

    def reorder_cache(self, beam_idx: Tensor) -> None:
        self.layers = [s.index_select(beam_idx) if s is not None else None for s in self.layers]


# ---------------------------------------------------------------------------------------------
# The decoder language model
# ---------------------------------------------------------------------------------------------
@dataclass
class RetNetOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    cache: RetNetCache | None = None


class RetNetPreTrainedModel(PreTrainedModel):
    config_class = RetNetConfig
    config: RetNetConfig
    base_model_prefix = "model"
    _no_split_modules = ["RetNetBlock"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MultiScaleRetention):  # gamma is a non-persistent buffer: rebuild it from the config
            hf_init.copy_(module.gamma, decay_rates(self.config.num_heads, self.config.decay, torch.float64))

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is a RetNetCache, created by forward() itself


class RetNetModel(RetNetPreTrainedModel):
    """Embedding, L RetNet blocks, final LayerNorm."""

    def __init__(self, config: RetNetConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(RetNetBlock(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids: Tensor, mode: Mode, cache: RetNetCache | None) -> Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, D)
        offset = cache.seen_tokens if cache is not None else 0
        for i, layer in enumerate(self.layers):
            state = cache.layers[i] if cache is not None else None
            x, state = layer(x, mode, state, offset)
            if cache is not None:
                cache.layers[i] = state
        if cache is not None:
            cache.seen_tokens += input_ids.shape[1]
        return self.norm(x)


class RetNetForCausalLM(RetNetPreTrainedModel, GenerationMixin):
    """RetNet decoder LM; ``generate()`` decodes with the recurrent state (eq. 6) as its cache."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: RetNetConfig):
        super().__init__(config)
        self.model = RetNetModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(
        self,
        input_ids: Tensor,
        cache: RetNetCache | None = None,
        use_cache: bool | None = None,
        labels: Tensor | None = None,
        attention_mask: Tensor | None = None,
        mode: Mode | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> RetNetOutput:
        """Logits for ``input_ids`` (B, T).

        ``mode`` picks the form: ``parallel`` (no state), ``chunkwise`` or ``recurrent`` (both return
        the state). With a cache (or ``use_cache=True``) the default is chunkwise, which continues
        from the cache's state — for a prompt (prefill) or a single token (one recurrent step).
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("RetNetForCausalLM does not support padding (attention_mask has zeros); batch equal lengths")
        use_cache = bool(use_cache) or cache is not None
        if mode is None:
            mode = "chunkwise" if use_cache else self.config.forward_mode
        if mode not in MODES:
            raise ValueError(f"unknown retention mode {mode!r}; expected one of {MODES}")
        if mode == "parallel" and use_cache:
            raise ValueError("the parallel form keeps no state; use mode='chunkwise' or 'recurrent' with a cache")
        if mode != "parallel" and cache is None:
            cache = RetNetCache(self.config.num_hidden_layers)
        hidden = self.model(input_ids, mode, cache)
        logits = self.lm_head(hidden)  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return RetNetOutput(loss=loss, logits=logits, cache=cache if use_cache else None)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
