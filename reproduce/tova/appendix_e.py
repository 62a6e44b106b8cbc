"""The paper's fast exact evaluation (App. E): one parallel pass per layer with a policy mask.

Streaming a bounded MSRNN token by token costs one model step per token. App. E evaluates the same
thing in parallel: at every layer the keys/values of the whole chunk are computed at once, the
policy's decisions are replayed step by step on that layer's score matrix, and attention runs in
parallel with the resulting mask ``M`` (``M[t, j]`` = token ``j`` is visible to query ``t``, i.e.
``j`` is in the state after step ``t - 1``, or ``j = t``). Since a layer's decisions only depend on
its own queries and keys, and those only on the layers below, the result is exactly the streaming
one (``tests/test_tova.py`` checks it against the Cache objects on real text).

- Window / Window+i: the mask is a band (plus ``i`` sink columns), no scores needed.
- TOVA: state ``K_t`` (``|K_t| <= C``); query ``t`` attends over ``K_{t-1} + {t}``; the token with
  the lowest head-averaged probability of query ``t`` is dropped (§3.3). One decision per step.
- H2O: the same per KV head, with scores accumulated over all queries so far.
- Scope (``EvictionSpec.scope``, for the sensitivity passes): the paper's TOVA keeps one set per
  layer and H2O one per KV head; ``scope="head"`` gives TOVA a set per KV head (scored by that
  head's query heads), ``scope="layer"`` gives H2O one set per layer (scored by all heads).

Every policy's mask has one compact form: ``last[b, m, j]``, the last step at which token ``j`` is
in the state (``T - 1`` if never dropped), so that ``M[t, j] = j <= t <= last[j]``.

The TOVA/H2O decisions come in two forms that give the same kept sets (``tests/test_tova.py``):

- :func:`tova_mask` / :func:`h2o_mask`, the definition step by step: a Python loop over ``t`` on
  the precomputed ``(B, H, T, T)`` logits (:func:`decision_logits`), each step's softmax over its
  exact candidates. Readable, and the reference of the tests and ``benchmarks/tova_decisions.py``.
- :func:`evictions`, the fast form used by the pass: steps go by blocks of ``K``. The candidates of
  steps ``t0 .. t0+K-1`` all lie in ``U`` = the state at ``t0`` plus the ``K`` new tokens, so one
  small matmul gives the logits of those ``K`` queries over ``U`` (no ``T x T`` matrix), one
  vectorised ``exp`` their exponentials, and a compiled loop (numba) replays the ``K`` decisions,
  normalising each step over its exact candidate set.

One tie rule in both forms, on every machine: the decisions are computed in float64 from the
layer's queries and keys (whatever the model's dtype), and the lowest score is dropped, the first
in slot order on an exact tie. The two forms round differently only at float64's ~1e-16, so they
part only where two scores agree to that (none on real text: ``benchmarks/tova_decisions.py`` and
a test at C = 512 count them). In float32, H2O's accumulated scores tie to rounding often enough
to part (6 of 18,420 decisions at C = 512 before this rule).

Shapes: ``B`` batch, ``H`` query heads, ``Hk`` KV heads, ``G = H / Hk``, ``T`` chunk length,
``D`` head dim, ``C`` budget; ``Hm`` the head dimension of a mask (1 when all heads share it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numba
import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from .policies import EvictionSpec

ATTN_NAME = "tova_appendix_e"


# ----------------------------------------------------------------------------- masks
def band_mask(T: int, spec: EvictionSpec, device=None) -> torch.Tensor:
    """Full / Window / Window+i: ``(1, 1, T, T)`` bool, True where query ``t`` sees key ``j``."""
    t = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    causal = j <= t
    if spec.policy == "full":
        return causal[None, None]
    if spec.policy == "window":  # state after t-1: tokens t-C .. t-1
        return (causal & (j >= t - spec.budget))[None, None]
    if spec.policy == "window_sink":  # state: 0..i-1 and t-(C-i) .. t-1
        return (causal & ((j < spec.sinks) | (j >= t - (spec.budget - spec.sinks))))[None, None]
    raise ValueError(f"policy {spec.policy!r} has no band mask; use tova_mask or h2o_mask")


DECISION_DTYPE = torch.float64  # the dtype of every keep/evict decision (the tie rule in the module docstring)


def decision_logits(query: torch.Tensor, key: torch.Tensor, scaling: float) -> torch.Tensor:
    """``(B, H, T, T)`` logits the step-by-step definitions decide on: ``(q * scaling) @ k.T`` in
    :data:`DECISION_DTYPE`, each KV head repeated for its query heads (as :func:`evictions` computes them)."""
    H, Hk = query.shape[1], key.shape[1]
    q = query.to(DECISION_DTYPE) * scaling
    return q @ key.to(DECISION_DTYPE).repeat_interleave(H // Hk, dim=1).transpose(2, 3)


def mask_heads(spec: EvictionSpec, kv_heads: int) -> int:
    """``Hm``, the number of kept sets per layer: 1 (TOVA; H2O with ``scope="layer"``) or ``kv_heads``
    (H2O; TOVA with ``scope="head"``)."""
    scope = spec.scope or ("head" if spec.policy == "h2o" else "layer")
    return kv_heads if scope == "head" else 1


def _row_probs(logits: torch.Tensor, t: int, candidates: torch.Tensor) -> torch.Tensor:
    """Probabilities (``B, Hm, H/Hm, n``) of query ``t`` over ``candidates`` (``B, Hm, n``), each query
    head's softmax over exactly its candidates, in :data:`DECISION_DTYPE`."""
    B, H, _, _ = logits.shape
    Hm = candidates.shape[1]
    row = logits[:, :, t, :].view(B, Hm, H // Hm, -1)  # B, Hm, H/Hm, T
    row = row.gather(-1, candidates.unsqueeze(2).expand(-1, -1, H // Hm, -1))  # B, Hm, H/Hm, n
    return F.softmax(row, dim=-1, dtype=DECISION_DTYPE)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run a step-by-step loop of tiny ops on one thread: intra-op parallelism cannot help there, and
    on a busy machine each parallel region waits for a second core (measured 30x slower on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@one_thread()
def tova_mask(logits: torch.Tensor, budget: int, heads: int = 1) -> torch.Tensor:
    """TOVA's visibility mask ``(B, heads, T, T)``, decided step by step from ``logits`` (``B, H, T, T``;
    :func:`decision_logits`).

    Rows ``0..C`` see their whole prefix (no eviction before the state holds C + 1 tokens). From
    ``t = C`` on, query ``t`` attends over the ``C`` kept tokens plus itself, then the candidate
    with the lowest head-averaged probability is dropped (§3.3; it may be ``t`` itself). ``heads``:
    1 (the paper: one set per layer, all heads averaged) or the KV heads (one set per KV head,
    averaged over its query heads); the sum over heads ranks as the mean does.
    """
    B, H, T, _ = logits.shape
    C, Hm = budget, heads
    mask = torch.ones(T, T, dtype=torch.bool, device=logits.device).tril().expand(B, Hm, T, T).clone()
    if T <= C + 1:
        return mask
    mask[:, :, C + 1 :, :] = False
    slots = torch.arange(C, device=logits.device).expand(B, Hm, C).clone()  # B, Hm, C: state after step C-1
    newest = torch.empty(B, Hm, 1, dtype=torch.long, device=logits.device)
    for t in range(C, T):
        candidates = torch.cat([slots, newest.fill_(t)], dim=-1)  # B, Hm, C+1
        mask[:, :, t].scatter_(-1, candidates, True)
        score = _row_probs(logits, t, candidates).sum(dim=2)  # B, Hm, C+1: summed over the set's heads
        drop = score.argmin(dim=-1, keepdim=True)  # B, Hm, 1: the first lowest in slot order
        slots = candidates.scatter(-1, drop, candidates[..., C:])[..., :C]  # the newest token takes the dropped slot
    return mask


@one_thread()
def h2o_mask(logits: torch.Tensor, budget: int, heads: int) -> torch.Tensor:
    """H2O's visibility mask ``(B, heads, T, T)``: per kept set, ``C // 2`` recent + heavy hitters.

    ``logits``: ``B, H, T, T`` (:func:`decision_logits`). ``heads``: the KV heads (the paper: a set
    per KV head, scored by its ``G`` query heads) or 1 (one set per layer, scored by all heads).
    Scores accumulate the probabilities each key receives from every query so far. Recent tokens
    (the last ``C // 2`` positions) are never evicted.
    """
    B, H, T, _ = logits.shape
    C, Hm, G = budget, heads, H // heads
    recent = C // 2
    dev = logits.device
    mask = torch.ones(T, T, dtype=torch.bool, device=dev).tril().expand(B, Hm, T, T).clone()
    if T <= C + 1:
        return mask
    mask[:, :, C + 1 :, :] = False
    # Steps 0..C-1 keep everything: their accumulated scores are column sums of causal attention.
    head = logits[:, :, :C, :C].masked_fill(~mask[:, :1, :C, :C], float("-inf"))  # B, H, C, C
    probs = F.softmax(head, dim=-1, dtype=DECISION_DTYPE)
    scores = torch.zeros(B, Hm, T, dtype=DECISION_DTYPE, device=dev)
    scores[..., :C] = probs.view(B, Hm, G, C, C).sum(dim=(2, 3))  # B, Hm, C
    slots = torch.arange(C, device=dev).expand(B, Hm, C).clone()  # B, Hm, C
    newest = torch.empty(B, Hm, 1, dtype=torch.long, device=dev)
    for t in range(C, T):
        candidates = torch.cat([slots, newest.fill_(t)], dim=-1)  # B, Hm, C+1
        mask[:, :, t].scatter_(-1, candidates, True)
        received = _row_probs(logits, t, candidates).sum(dim=2)  # B, Hm, C+1
        scores.scatter_add_(-1, candidates, received)
        ranked = scores.gather(-1, candidates).masked_fill(candidates > t - recent, float("inf"))  # recent: never
        drop = ranked.argmin(dim=-1, keepdim=True)  # B, Hk, 1
        slots = candidates.scatter(-1, drop, candidates[..., C:])[..., :C]
    return mask


# ----------------------------------------------------------------------------- the fast form
# fastmath without "nnan"/"ninf": the loop compares with np.inf (recent tokens, the running minimum), which
# fastmath=True lets the compiler assume never occurs
@numba.njit(nogil=True, cache=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def _replay(E, ids, t0, scores, recent, last, h2o):  # pragma: no cover - compiled; checked against the loops
    """Replay ``K`` steps of TOVA (``h2o=False``) or H2O on one block (see :func:`evictions`).

    ``E`` (``B, Hk, K, G, C + K``): the softmax of query ``t0 + i`` (head ``k * G + g``) over ``U`` =
    the ``C`` slots (``ids``: ``B, Hm, C`` token ids, updated in place) then tokens ``t0 .. t0+K-1``,
    future tokens at 0. Each step renormalises over its own candidates. ``scores`` (``B, Hm, T``):
    H2O's accumulated attention. ``last`` (``B, Hm, T``): set at each drop.
    """
    B, Hk, K, G, W = E.shape
    Hm, C = ids.shape[1], ids.shape[2]
    per = Hk // Hm  # KV heads per kept set: all of them (one set per layer) or one (a set per KV head)
    col = np.empty(C + 1, np.int64)  # candidate -> column of U
    tok = np.empty(C + 1, np.int64)  # candidate -> token id
    live = np.empty(W, np.float64)  # 1 where the column is a candidate of this step
    score = np.empty(W, np.float64)
    for b in range(B):
        for m in range(Hm):
            for j in range(C):
                col[j] = j
                tok[j] = ids[b, m, j]
            live[:C] = 1.0
            live[C:] = 0.0
            for i in range(K):
                t = t0 + i
                col[C] = C + i  # the new token is the last candidate
                tok[C] = t
                live[C + i] = 1.0
                score[:] = 0.0
                for k in range(m * per, (m + 1) * per):
                    for g in range(G):
                        row = E[b, k, i, g]
                        z = 0.0
                        for w in range(W):  # this head's softmax normaliser over the candidates
                            z += row[w] * live[w]
                        inv = 1.0 / z
                        for w in range(W):  # the sum over the set's heads (TOVA: the mean up to a constant)
                            score[w] += row[w] * inv
                best, lowest = 0, np.inf
                for j in range(C + 1):
                    p = score[col[j]]
                    if h2o:
                        scores[b, m, tok[j]] += p
                        p = np.inf if tok[j] > t - recent else scores[b, m, tok[j]]  # recent: never evicted
                    if p < lowest:  # the first lowest in slot order, as argmin
                        best, lowest = j, p
                last[b, m, tok[best]] = t
                live[col[best]] = 0.0
                if best < C:  # the new token takes the dropped slot (or is itself dropped)
                    col[best] = C + i
                    tok[best] = t
            for j in range(C):
                ids[b, m, j] = tok[j]


def _probs_over(q: torch.Tensor, k: torch.Tensor, offset: int) -> torch.Tensor:
    """Softmax of ``K`` consecutive queries over ``W`` key columns (``B * Hk, K * G, W``).

    ``q`` (``B, Hk, K, G, D``): the block's queries, scaled; ``k`` (``B, Hk, W, D``): the keys of the
    columns; query ``i`` of the block sees column ``w`` only where ``w <= offset + i`` (H2O's first
    ``C`` steps: causal over the prefix, ``offset = r0``; later blocks: the ``C`` slots and the new
    tokens up to its own, ``offset = C``).
    """
    B, Hk, K, G, D = q.shape
    W = k.shape[2]
    hidden = torch.arange(W, device=k.device) > offset + torch.arange(K, device=k.device)[:, None, None]  # K, 1, W
    bias = torch.zeros(K, G, W, dtype=q.dtype, device=k.device).masked_fill_(hidden, float("-inf"))
    logits = torch.baddbmm(bias.reshape(K * G, W), q.reshape(B * Hk, K * G, D), k.reshape(B * Hk, W, D).transpose(1, 2))
    return torch.softmax(logits, dim=-1)  # B*Hk, K*G, W


def evictions(query: torch.Tensor, key: torch.Tensor, spec: EvictionSpec, scaling: float, block: int = 64) -> torch.Tensor:
    """``last`` (``B, Hm, T``) of TOVA or H2O from one layer's queries and keys (``Hm``: :func:`mask_heads`).

    ``query`` (``B, H, T, D``), ``key`` (``B, Hk, T, D``), rotated. Equal to :func:`tova_mask` /
    :func:`h2o_mask` on :func:`decision_logits` (see the module docstring: decided in float64).
    """
    B, H, T, D = query.shape
    Hk = key.shape[1]
    G, C = H // Hk, spec.budget
    h2o = spec.policy == "h2o"
    Hm = mask_heads(spec, Hk)
    last = np.full((B, Hm, T), T - 1, dtype=np.int64)
    if T <= C + 1:
        return torch.from_numpy(last).to(key.device)
    q = (query.to(DECISION_DTYPE) * scaling).view(B, Hk, G, T, D).transpose(2, 3)  # B, Hk, T, G, D
    k = key.to(DECISION_DTYPE)
    ids = np.broadcast_to(np.arange(C), (B, Hm, C)).copy()  # the state after step C - 1
    scores = np.zeros((B, Hm, T), dtype=np.float64)
    if h2o:  # steps 0..C-1 keep everything: scores are column sums of causal attention, K rows at a time
        received = torch.zeros(B, Hk, C, dtype=DECISION_DTYPE, device=key.device)
        for r0 in range(0, C, block):
            K = min(block, C - r0)
            probs = _probs_over(q[:, :, r0 : r0 + K], k[:, :, : r0 + K], offset=r0)  # B*Hk, K*G, r0+K
            received[..., : r0 + K] += probs.view(B, Hk, K * G, r0 + K).sum(dim=2)
        scores[..., :C] = received.view(B, Hm, Hk // Hm, C).sum(dim=2).cpu().numpy()
    for t0 in range(C, T, block):
        K = min(block, T - t0)
        new = torch.arange(t0, t0 + K, device=key.device).expand(B, Hm, K)
        U = torch.cat([torch.from_numpy(ids).to(key.device), new], dim=-1)  # B, Hm, C+K
        U = U.repeat_interleave(Hk // Hm, dim=1)  # B, Hk, C+K: each KV head's candidates
        keys = k.gather(2, U[..., None].expand(-1, -1, -1, D))  # B, Hk, C+K, D
        E = _probs_over(q[:, :, t0 : t0 + K], keys, offset=C).view(B, Hk, K, G, C + K).cpu().numpy()
        _replay(E, ids, t0, scores, C // 2, last, h2o)
    return torch.from_numpy(last).to(key.device)


def band_last(T: int, spec: EvictionSpec, device=None) -> torch.Tensor:
    """``last`` (``1, 1, T``) of the full cache, Window and Window+i: when each token leaves the band."""
    j = torch.arange(T, device=device)
    if spec.policy == "full":
        last = torch.full_like(j, T - 1)
    elif spec.policy == "window":  # j is in the states after steps j .. j+C-1, seen by queries j .. j+C
        last = (j + spec.budget).clamp(max=T - 1)
    elif spec.policy == "window_sink":
        last = torch.where(j < spec.sinks, T - 1, (j + spec.budget - spec.sinks).clamp(max=T - 1))
    else:
        raise ValueError(f"policy {spec.policy!r} has no band; use evictions")
    return last[None, None]


def mask_from_last(last: torch.Tensor, rows: slice = slice(None), cols=slice(None)) -> torch.Tensor:
    """The visibility mask ``(B, Hm, rows, cols)``: ``M[t, j] = j <= t <= last[j]``."""
    T = last.shape[-1]
    t = torch.arange(T, device=last.device)[rows, None]
    j = torch.arange(T, device=last.device)[cols]
    return (j <= t) & (t <= last[..., None, cols])


def policy_last(query: torch.Tensor, key: torch.Tensor, spec: EvictionSpec, scaling: float) -> torch.Tensor:
    """``last`` of ``spec`` for one layer: decided for TOVA/H2O, a band otherwise."""
    if spec.policy in ("tova", "h2o"):
        return evictions(query, key, spec, scaling)
    return band_last(query.shape[2], spec, device=query.device)


def policy_mask(logits: torch.Tensor, spec: EvictionSpec, kv_heads: int) -> torch.Tensor:
    """The step-by-step visibility mask of ``spec`` for one layer (``B, Hm, T, T``, Hm in {1, Hk}) from
    :func:`decision_logits`."""
    T = logits.shape[-1]
    if spec.policy == "tova":
        return tova_mask(logits, spec.budget, mask_heads(spec, kv_heads))
    if spec.policy == "h2o":
        return h2o_mask(logits, spec.budget, mask_heads(spec, kv_heads))
    return band_mask(T, spec, device=logits.device)


# ----------------------------------------------------------------------------- one masked pass
@dataclass
class MaskedPass:
    """The policy of one App. E forward pass, and what it collects per layer.

    ``survival[l]`` (``B, T``, every batch of the pass in order): for each token, the fraction of later
    steps at which it was in layer l's state (heads averaged for H2O). ``last_row[l]`` (``B, Hm, T``): the state before the last
    step plus the last token. ``occupancy[l]``: the layer's mask of batch element 0,
    average-pooled to ``picture_size`` squared, for the layers in ``picture_layers``.
    """

    spec: EvictionSpec
    collect: bool = False
    picture_layers: tuple[int, ...] = ()
    picture_size: int = 128
    survival: dict[int, torch.Tensor] = field(default_factory=dict)
    occupancy: dict[int, torch.Tensor] = field(default_factory=dict)
    last_row: dict[int, torch.Tensor] = field(default_factory=dict)  # B, Hm, T: visible to the last query

    def observe(self, layer_idx: int, last: torch.Tensor) -> None:
        """Collect from one layer's ``last`` (``B, Hm, T``; see the module docstring).

        A pass over several batches appends each batch's rows in order (survival, last row); the
        occupancy picture is the first batch's element 0.
        """
        if not self.collect:
            return
        T = last.shape[-1]
        j = torch.arange(T, device=last.device)
        later = (T - 1 - j).clamp(min=1)  # steps after token j
        rows = {"last_row": (last == T - 1).cpu(),  # B, Hm, T: still in the state at the last step
                "survival": ((last - j).float() / later).mean(dim=1).cpu()}  # B, T: j is kept at steps j+1..last
        for name, value in rows.items():
            store = getattr(self, name)
            store[layer_idx] = torch.cat([store[layer_idx], value]) if layer_idx in store else value
        if layer_idx in self.picture_layers and layer_idx not in self.occupancy:
            size = min(self.picture_size, T)
            self.occupancy[layer_idx] = F.adaptive_avg_pool2d(mask_from_last(last[:1, :1])[0].float(), size)[0].cpu()


def appendix_e_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, eviction=None, **kwargs):
    """Attention with a policy mask (App. E); registered as ``attn_implementation="tova_appendix_e"``.

    ``query`` (``B, H, T, D``), ``key``/``value`` (``B, Hk, T, D``, already rotated: RoPE at true
    positions). ``eviction`` is the :class:`MaskedPass` passed through the model's forward kwargs.
    """
    if not isinstance(eviction, MaskedPass):
        raise RuntimeError("the App. E attention needs eviction=MaskedPass(...) in the forward call; use appendix_e.nll")
    B = query.shape[0]
    spec = eviction.spec
    last = policy_last(query, key, spec, scaling)  # B or 1, Hm, T
    eviction.observe(module.layer_idx, last.expand(B, -1, -1))
    # Deviation from eager attention: the masked attention itself runs in SDPA (a fused kernel, ~3x
    # faster on CPU here); it agrees with eager to rounding (the equivalence tests bound it).
    if spec.policy == "full":
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    else:
        out = blocked_attention(query, key, value, last, scaling, spec)  # B, H, T, D
    return out.transpose(1, 2).contiguous(), None  # B, T, H, D


def visible_keys(spec: EvictionSpec, start: int, stop: int) -> torch.Tensor | slice:
    """Key positions that queries ``start..stop-1`` may see under ``spec`` (a superset of the mask's)."""
    if spec.policy == "window":
        return slice(max(0, start - spec.budget), stop)
    if spec.policy == "window_sink":
        low = max(spec.sinks, start - (spec.budget - spec.sinks))
        return torch.cat([torch.arange(spec.sinks), torch.arange(low, stop)]) if low < stop else slice(0, stop)
    return slice(0, stop)  # causal: nothing after the last query of the block


def blocked_attention(query, key, value, last, scaling, spec: EvictionSpec, block: int = 256) -> torch.Tensor:
    """Masked SDPA by blocks of ``block`` queries, each over the keys it may see (exact; skips the
    causal upper triangle and, for windows, everything outside the band). ``last`` (``B or 1, Hm, T``)
    gives the mask (:func:`mask_from_last`), built block by block: no ``T x T`` mask exists."""
    B, H, T, D = query.shape
    Hm = last.shape[1]
    out = torch.empty_like(query)  # B, H, T, D
    for start in range(0, T, block):
        stop = min(start + block, T)
        keys = visible_keys(spec, start, stop)
        if isinstance(keys, torch.Tensor):
            keys = keys.to(query.device)
        mask = mask_from_last(last, slice(start, stop), keys)  # B or 1, Hm, stop-start, keys
        if Hm not in (1, H):
            mask = mask.repeat_interleave(H // Hm, dim=1)  # H2O: a KV head's mask for each of its query heads
        out[:, :, start:stop] = F.scaled_dot_product_attention(
            query[:, :, start:stop], key[:, :, keys], value[:, :, keys], attn_mask=mask,
            scale=scaling, enable_gqa=True)  # B, H, stop-start, D
    return out


AttentionInterface.register(ATTN_NAME, appendix_e_attention)


@contextlib.contextmanager
def masked_attention(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Switch ``model`` to the App. E attention for the duration of the block."""
    previous = model.config._attn_implementation
    model.config._attn_implementation = ATTN_NAME
    try:
        yield model
    finally:
        model.config._attn_implementation = previous


@torch.no_grad()
def nll(model, input_ids: torch.Tensor, spec: EvictionSpec, collect: MaskedPass | None = None,
        vocab_chunk: int = 512) -> torch.Tensor:
    """Per-token negative log-likelihood (``B, L - 1``) of ``input_ids`` (``B, L``) under ``spec``.

    Token ``t + 1`` is predicted from the state after step ``t``. Logits are computed in chunks of
    ``vocab_chunk`` positions so that a ``(B, L, vocab)`` tensor never exists.
    """
    run = collect if collect is not None else MaskedPass(spec)
    if run.spec != spec:
        raise ValueError(f"collect is for {run.spec}, not {spec}")
    with masked_attention(model):
        hidden = model.model(input_ids=input_ids, use_cache=False, eviction=run).last_hidden_state  # B, L, d
    return chunked_nll(model.lm_head, hidden, input_ids, vocab_chunk)


def chunked_nll(lm_head: torch.nn.Module, hidden: torch.Tensor, input_ids: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """``-log p(x_{t+1} | h_t)`` for every position, ``lm_head`` applied ``chunk`` positions at a time."""
    B, L, _ = hidden.shape
    out = []
    for start in range(0, L - 1, chunk):
        stop = min(start + chunk, L - 1)
        logits = lm_head(hidden[:, start:stop]).float()  # B, n, V
        targets = input_ids[:, start + 1 : stop + 1]  # B, n
        out.append(F.cross_entropy(logits.transpose(1, 2), targets, reduction="none"))  # B, n
    return torch.cat(out, dim=1)  # B, L-1
