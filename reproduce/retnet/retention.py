"""Retention (§2.1) and multi-scale retention (§2.2) of RetNet, arXiv:2307.08621 — torch only.

Shape notation (one for the package):
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

This module imports torch only (no transformers), so that the training-cost measurements can
start a fresh process per point cheaply. ``MultiScaleRetention`` and ``RetNetBlock`` (§2.3) are
configured by a :class:`RetentionConfig` (plain values: it pickles into such a process without
transformers); the language model's ``RetNetConfig.retention`` gives its own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        # the device said explicitly: transformers' from_pretrained swaps torch.linspace for a CPU-default
        # wrapper while it builds on the meta device, and when that is the first `with torch.device(...)`
        # of the process, torch caches the wrapper, so linspace ignores every later device context
        where = torch.get_default_device()
        return 1 - torch.exp(torch.linspace(math.log(1 / 32), math.log(1 / 512), num_heads, dtype=dtype, device=where))
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
@functools.lru_cache(maxsize=64)
def rotation_frequencies(dim: int, base: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """theta_j = base^(-2j / dim), j = 0 .. dim/2 - 1: RoPE's frequencies. Shape (K/2,).

    Computed once per (dim, base, dtype, device) and shared: a decode step would otherwise rebuild
    them for every layer and token (the same expression, so the same bits as before). Created
    outside any inference mode, so a table first built while decoding can still serve training.
    """
    with torch.inference_mode(False), torch.no_grad():
        return base ** (-torch.arange(0, dim, 2, device=device, dtype=dtype) / dim)


def rotate(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    """x_n e^{i n theta} on interleaved pairs (x0, x1), (x2, x3), ... — Q ⊙ Θ and K ⊙ Θ̄, eq. (5).

    Rotating both q_n and k_m by their own position makes q_n . k_m depend on n - m only.
    x: (B, H, T, K); positions: (T,) absolute positions.

    The angles are computed in fp32 at least, whatever x's dtype (as LLaMA's RoPE): in bf16, positions
    0..2047 would collapse to 641 distinct angles; cos and sin are then cast to x's dtype.
    """
    dim, exact = x.shape[-1], torch.promote_types(x.dtype, torch.float32)
    theta = rotation_frequencies(dim, base, exact, x.device)  # (K/2,), built once per (dim, base, dtype, device)
    angle = positions.to(device=x.device, dtype=exact)[:, None] * theta[None, :]  # (T, K/2), fp32 or fp64
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
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
    q: Tensor, k: Tensor, v: Tensor, gamma: Tensor, state: RetentionState, offset: int, normalize: bool = True,
    in_place: bool = False,
) -> tuple[Tensor, RetentionState]:
    """Recurrent retention, eq. (6), one token at a time: S_n = gamma S_{n-1} + K_n^T V_n, o_n = Q_n S_n.

    q, k: (B, H, T, K); v: (B, H, T, V); ``offset`` = tokens already in ``state``.
    Returns (B, H, T, V) and the state after the last token.

    The state update is fused: ``gamma S`` is the one new tensor of a step and ``K_n^T V_n`` is added
    into it in place (``addcmul_``), instead of three full-size temporaries (the outer product, the
    decayed state, their sum). On a CPU the temporaries, not the arithmetic, dominated the step (each a
    fresh multi-MB allocation). The state passed in is not modified, unless ``in_place``: then its
    tensors (which must belong to the caller alone, as a decode cache's do, and need no gradient) are
    decayed and updated where they are, and no state-sized tensor is allocated at all.
    """
    if in_place and torch.is_grad_enabled():
        raise ValueError("retention_recurrent(in_place=True) runs under torch.no_grad() or inference_mode only: "
                         "autograd keeps the state of every token")
    # a state made under inference_mode cannot change outside it: then the step allocates, as without in_place
    in_place = in_place and (torch.is_inference_mode_enabled() or not state.kv.is_inference())
    g = gamma.to(q.dtype)
    decay_kv, decay_sum = g[None, :, None, None], g[None, :, None]  # (1, H, 1, 1), (1, H, 1)
    kv, key_sum = state.kv, state.key_sum
    outs, score_sums = [], []
    for t in range(q.shape[-2]):
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, K), (B, H, K), (B, H, V)
        kv = (kv.mul_(decay_kv) if in_place else decay_kv * kv).addcmul_(k_t[..., :, None], v_t[..., None, :])  # (B, H, K, V)
        key_sum = (key_sum.mul_(decay_sum) if in_place else decay_sum * key_sum).add_(k_t)  # (B, H, K)
        outs.append((q_t[..., None, :] @ kv)[..., 0, :])  # (B, H, 1, K) @ (B, H, K, V) -> (B, H, V)
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
    full_mask = decay_mask(g, min(chunk_size, q.shape[-2]))  # (H, C, C); a shorter chunk uses its top-left block
    outs, score_sums = [], []
    for start in range(0, q.shape[-2], chunk_size):
        q_i, k_i, v_i = (x[:, :, start : start + chunk_size] for x in (q, k, v))  # (B, H, L, .)
        length = q_i.shape[-2]
        d = full_mask[:, :length, :length]  # (H, L, L)
        j = torch.arange(length, device=q.device, dtype=q.dtype)
        xi = torch.pow(g[:, None], j + 1)[None, :, :, None]  # gamma^(j+1), (1, H, L, 1)
        zeta = torch.pow(g[:, None], length - j - 1)[None, :, :, None]  # gamma^(L-j-1), (1, H, L, 1)
        scores = (q_i @ k_i.transpose(-1, -2)) * d  # (B, H, L, L)
        outs.append(scores @ v_i + (q_i @ kv) * xi)  # inner + cross, (B, H, L, V)
        # q_n . z_n (the §2.2 score row sum) = inner row sum + xi * q_n . z_prev: no extra matmul
        score_sums.append(scores.sum(-1) + xi[..., 0] * (q_i @ key_sum[..., None])[..., 0])  # (B, H, L)
        decay_chunk = torch.pow(g, length)[None, :, None, None]  # gamma^L, (1, H, 1, 1)
        kv = decay_chunk * kv + k_i.transpose(-1, -2) @ (v_i * zeta)  # (B, H, K, V)
        key_sum = decay_chunk[..., 0] * key_sum + (k_i * zeta).sum(-2)  # (B, H, K)
    out = torch.cat(outs, dim=2)  # (B, H, T, V)
    if normalize:
        positions = torch.arange(offset, offset + q.shape[-2], device=q.device)
        out = _normalise(out, torch.cat(score_sums, dim=2), g, positions, q.shape[-1])
    return out, RetentionState(kv, key_sum)


# ---------------------------------------------------------------------------------------------
# Multi-scale retention (§2.2) and the RetNet block (§2.3)
# ---------------------------------------------------------------------------------------------
def check_retention(config, owner: str) -> None:
    """Refuse values that cannot build multi-scale retention, naming the field (``owner.field``).

    ``RetentionConfig`` checks itself with it, and ``RetNetConfig`` checks its retention fields with it.
    """
    for name, allowed in (("decay", Decay.__args__), ("head_norm", HeadNorm.__args__)):
        if getattr(config, name) not in allowed:
            raise ValueError(f"{owner}.{name}={getattr(config, name)!r} is not allowed; expected one of {allowed}")
    for name in ("hidden_size", "num_heads", "value_factor", "ffn_factor", "chunk_size"):
        if getattr(config, name) < 1:
            raise ValueError(f"{owner}.{name} must be >= 1, got {getattr(config, name)}")
    if config.hidden_size % config.num_heads:
        raise ValueError(f"{owner}: hidden_size {config.hidden_size} is not a multiple of num_heads {config.num_heads}")
    if config.use_rotation and config.key_dim % 2:
        raise ValueError(f"{owner}: rotation needs an even key dim, got {config.key_dim}")
    if not config.norm_eps >= 0:
        raise ValueError(f"{owner}.norm_eps must be >= 0, got {config.norm_eps}")


@dataclass(frozen=True)
class RetentionConfig:
    """What ``MultiScaleRetention`` and ``RetNetBlock`` read; defaults are the paper's 1.3B model (§3.1),
    as in ``RetNetConfig`` (which gives its own as ``RetNetConfig.retention``). Bad values raise an
    error naming them.
    """

    hidden_size: int = 2048  # D
    num_heads: int = 8  # H; d_k = D / H = 256 (§3.1)
    value_factor: int = 2  # value dim = 2 d (§2.3)
    ffn_factor: int = 2  # FFN intermediate = 2 d (§2.3)
    decay: Decay = "paper"
    use_gate: bool = True
    head_norm: HeadNorm = "groupnorm"
    normalize_retention: bool = True  # the §2.2 score normalisers
    use_rotation: bool = True
    rotation_base: float = 10000.0
    norm_eps: float = 1e-6
    chunk_size: int = 512  # L of the chunkwise form
    zero_mixer: bool = False  # the no-mixer control: out_proj zero and frozen (embeddings + FFN only)

    def __post_init__(self) -> None:
        check_retention(self, "RetentionConfig")

    @property
    def key_dim(self) -> int:  # K
        return self.hidden_size // self.num_heads

    @property
    def value_dim(self) -> int:  # V
        return self.key_dim * self.value_factor


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

    def __init__(self, config: RetentionConfig):
        super().__init__()
        if not isinstance(config, RetentionConfig):
            raise TypeError(f"MultiScaleRetention takes a RetentionConfig (RetNetConfig.retention), not {type(config).__name__}")
        self.config = config
        h, d, k, v = config.num_heads, config.hidden_size, config.key_dim, config.value_dim
        self.q_proj = nn.Linear(d, h * k, bias=False)
        self.k_proj = nn.Linear(d, h * k, bias=False)
        self.v_proj = nn.Linear(d, h * v, bias=False)
        self.g_proj = nn.Linear(d, h * v, bias=False) if config.use_gate else None
        self.out_proj = nn.Linear(h * v, d, bias=False)
        if config.zero_mixer:  # the no-mixer control, here only: out_proj zero and frozen (the model's init keeps it)
            nn.init.zeros_(self.out_proj.weight)
            self.out_proj.weight.requires_grad_(False)
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
        self, x: Tensor, mode: Mode = "parallel", state: RetentionState | None = None, offset: int = 0,
        in_place: bool = False,
    ) -> tuple[Tensor, RetentionState | None]:
        """x: (B, T, D) -> (B, T, D), and the state after the last token (``None`` in parallel mode).

        ``in_place``: the recurrent form may update ``state`` where it is (a decode cache's own state,
        under no_grad; see :func:`retention_recurrent`).
        """
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
                y, new_state = retention_recurrent(q, k, v, gamma, state, offset, c.normalize_retention, in_place)
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

    def __init__(self, config: RetentionConfig):
        super().__init__()
        d = config.hidden_size
        self.retention_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.retention = MultiScaleRetention(config)
        self.ffn_norm = nn.LayerNorm(d, eps=config.norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(d, config.ffn_factor * d, bias=False), nn.GELU(), nn.Linear(config.ffn_factor * d, d, bias=False)
        )

    def forward(self, x: Tensor, mode: Mode, state: RetentionState | None, offset: int, in_place: bool = False):
        y, state = self.retention(self.retention_norm(x), mode, state, offset, in_place)
        y = y + x
        return self.ffn(self.ffn_norm(y)) + y, state
