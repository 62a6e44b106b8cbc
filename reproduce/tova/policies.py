"""Eviction policies as ``transformers`` Caches: the bounded multi-state RNN of §3 (streaming form).

A decoder-only Transformer is a multi-state RNN whose state is the KV cache (§3.1, eq. 2); capping
the cache at ``C`` tokens per layer makes it a *bounded* MSRNN (§3.2). A policy decides which
token's key/value to drop when the state overflows:

=============  ==========================================================================
``full``       no bound (the unbounded MSRNN, i.e. the plain Transformer).
``window``     keep the C most recent tokens (FIFO).
``window_sink``Window+i: the first ``i`` tokens plus the ``C - i`` most recent (StreamingLLM).
``h2o``        per KV head: the ``C // 2`` most recent tokens plus the ``C - C // 2`` "heavy
               hitters" with the largest attention accumulated over all steps (Zhang et al.).
``tova``       §3.3: after attending over the ``C + 1`` tokens, drop the one with the lowest
               attention of the current query, averaged over all heads of the layer (the new
               token may be dropped; nothing is pinned).
=============  ==========================================================================

Every step the new token attends over the ``C`` kept tokens plus itself, then the policy cuts the
state back to ``C``. A prompt longer than ``C`` is cut in one shot after its forward pass.

How this meets the transformers Cache API (tested range: transformers 5.24):

- ``Cache.update`` runs after RoPE, so kept keys keep their original rotary positions.
- ``get_seq_length()`` returns tokens *seen* (it drives the positions of new tokens), while the
  stored length is ``S <= C``; ``get_mask_sizes(q)`` returns ``(S + q, seen - S)``: the mask treats
  the stored keys as if they were the ``S`` positions just before the query, so every kept key is
  visible to every new query and new keys stay causal among themselves. This is the precedent of
  ``DynamicSlidingWindowLayer``.
- ``update`` runs *before* attention. Window and Window+i need no scores, so they cut inside
  ``update`` (storing the cut state, returning the full one). TOVA and H2O need the attention
  probabilities: :func:`attach` puts a forward hook on every attention module that hands the
  layer's attention weights (eager attention) to the cache layer, which evicts right after
  attention, exactly when the paper does.

Batches must not contain padding: a 2D padding mask is indexed by position, which no longer
matches the stored keys once tokens are evicted.

Shapes: ``B`` batch, ``H`` query heads, ``Hk`` KV heads, ``G = H / Hk`` (grouped-query attention),
``T`` new tokens, ``S`` stored tokens, ``D`` head dim, ``C`` budget (multi-state size).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicLayer

POLICIES = ("full", "window", "window_sink", "h2o", "tova")
SCORED_POLICIES = ("h2o", "tova")  # need the attention probabilities
LABELS = {"full": "Full cache", "window": "Window", "window_sink": "Window+{sinks}", "h2o": "H2O", "tova": "TOVA"}


@dataclass(frozen=True)
class EvictionSpec:
    """A policy and its multi-state size ``budget`` (C); ``sinks`` is the i of Window+i (4 in §4.1).

    ``scope`` (TOVA and H2O, for the sensitivity passes): ``""`` is each paper's own (TOVA one kept
    set per layer, H2O one per KV head); ``"layer"`` / ``"head"`` choose the other. Only the App. E
    pass implements the non-default scopes; the streaming Caches keep each paper's own.
    """

    policy: str
    budget: int | None = None
    sinks: int = 4
    scope: str = ""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; expected one of {POLICIES}")
        if self.scope not in ("", "layer", "head"):
            raise ValueError(f"scope must be '', 'layer' or 'head', got {self.scope!r}")
        if self.scope and self.policy not in SCORED_POLICIES:
            raise ValueError(f"scope applies to TOVA and H2O only, not {self.policy!r}")
        if self.scope == ("head" if self.policy == "h2o" else "layer"):
            object.__setattr__(self, "scope", "")  # the paper's own scope: one spelling, equal specs
        if self.policy == "full":
            if self.budget is not None:
                raise ValueError("policy 'full' keeps every token; leave budget=None")
            return
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise ValueError(f"policy {self.policy!r} needs an integer budget C >= 1, got {self.budget!r}")
        if self.policy == "window_sink" and not 0 < self.sinks < self.budget:
            raise ValueError(f"Window+i needs 0 < sinks < budget, got sinks={self.sinks}, budget={self.budget}")
        if self.policy == "h2o" and self.budget < 2:
            raise ValueError("H2O splits its budget into recent tokens and heavy hitters: budget must be >= 2")

    @property
    def label(self) -> str:
        return LABELS[self.policy].format(sinks=self.sinks)

    @property
    def default_scope(self) -> bool:
        """Whether the kept sets are the paper's own (TOVA per layer, H2O per KV head)."""
        return not self.scope

    def __str__(self) -> str:
        scope = "" if self.default_scope else f", one set per {self.scope}"
        return self.label if self.budget is None else f"{self.label} (C={self.budget}{scope})"


# ----------------------------------------------------------------------------- per-layer state
class BoundedLayer(DynamicLayer):
    """One layer's multi-state: at most ``budget`` tokens kept between steps (None = unbounded).

    Besides keys/values (``B, Hk, S, D``) it keeps ``positions`` (``B, Hk, S``), the index in the
    text of every stored token, so that what a policy keeps can be inspected and tested.
    """

    is_croppable = False  # eviction is irreversible: no rollback for assisted decoding

    def __init__(self, budget: int | None = None):
        super().__init__()
        self.budget = budget
        self.seen = 0
        self.positions: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        B, Hk, _, D = key_states.shape
        self.keys = key_states.new_zeros(B, Hk, 0, D)
        self.values = value_states.new_zeros(B, Hk, 0, D)
        self.positions = torch.zeros(B, Hk, 0, dtype=torch.long, device=key_states.device)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append the ``T`` new tokens; returns every key/value the new queries attend over."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._check_evicted()
        B, Hk, T, _ = key_states.shape
        new_pos = torch.arange(self.seen, self.seen + T, device=self.positions.device)  # T
        self.positions = torch.cat([self.positions, new_pos.expand(B, Hk, T)], dim=-1)  # B, Hk, S+T
        self.keys = torch.cat([self.keys, key_states], dim=-2)  # B, Hk, S+T, D
        self.values = torch.cat([self.values, value_states], dim=-2)  # B, Hk, S+T, D
        self.seen += T
        keys, values = self.keys, self.values
        self.evict_before_attention()
        return keys, values

    def _check_evicted(self) -> None:
        if self.budget is not None and self.stored > self.budget:
            raise RuntimeError(
                f"{type(self).__name__} holds {self.stored} > C={self.budget} tokens: the attention weights of the "
                "last step never reached the cache. Call reproduce.tova.attach(model) on a model loaded with "
                "attn_implementation='eager'"
            )

    def evict_before_attention(self) -> None:
        """Policies that need no attention scores cut here (default: keep everything)."""

    def observe(self, attn_weights: torch.Tensor) -> None:
        """Called by the hook of :func:`attach` with the layer's attention weights (``B, H, T, S``)."""

    def keep(self, index: torch.Tensor) -> None:
        """Keep the stored slots ``index`` (``B, Hk, C``) of every head."""
        D = self.keys.shape[-1]
        gather = index.unsqueeze(-1).expand(-1, -1, -1, D)  # B, Hk, C, D
        self.keys = self.keys.gather(2, gather)
        self.values = self.values.gather(2, gather)
        self.positions = self.positions.gather(2, index)

    @property
    def stored(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def get_seq_length(self) -> int:
        """Tokens seen so far (drives the RoPE positions of new tokens), not tokens stored."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(S + q, seen - S)``: stored keys sit just before the queries, all visible to them."""
        return self.stored + query_length, self.seen - self.stored

    def get_max_length(self) -> int:
        return -1 if self.budget is None else self.budget

    def reset(self) -> None:
        super().reset()
        self.seen = 0
        self.positions = None

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.positions is not None:
            self.positions = self.positions.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        if self.positions is not None:
            self.positions = self.positions[indices, ...]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        if self.positions is not None and self.positions.numel():
            self.positions = self.positions.index_select(0, beam_idx.to(self.positions.device))

    def nbytes(self) -> int:
        """Bytes of the stored key and value tensors."""
        if self.keys is None:
            return 0
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()


class WindowLayer(BoundedLayer):
    """Window: keep the ``C`` most recent tokens."""

    def evict_before_attention(self) -> None:
        S, C = self.stored, self.budget
        if S > C:  # the last C slots are a contiguous range: views, no copy (as DynamicSlidingWindowLayer)
            self.keys, self.values = self.keys[:, :, S - C :], self.values[:, :, S - C :]
            self.positions = self.positions[:, :, S - C :]

    def _keep_slots(self, slots: torch.Tensor) -> None:
        B, Hk, _ = self.positions.shape
        self.keep(slots.to(self.positions.device).expand(B, Hk, -1))


class WindowSinkLayer(WindowLayer):
    """Window+i: keep the first ``i`` tokens (attention sinks) plus the ``C - i`` most recent."""

    def __init__(self, budget: int, sinks: int = 4):
        super().__init__(budget)
        self.sinks = sinks

    def evict_before_attention(self) -> None:
        S, C, i = self.stored, self.budget, self.sinks
        if S > C:  # the first i slots hold tokens 0..i-1: they are never evicted
            self._keep_slots(torch.cat([torch.arange(i), torch.arange(S - (C - i), S)]))


class TOVALayer(BoundedLayer):
    """TOVA (§3.3): keep the top-C tokens by the current query's head-averaged attention.

    With grouped-query attention the score is still averaged over all ``H`` query heads, so all
    ``Hk`` KV heads of the layer drop the same positions. After a multi-token forward (a prompt
    longer than C) the last query's attention cuts the state in one shot.
    """

    def observe(self, attn_weights: torch.Tensor) -> None:
        S, C = self.stored, self.budget
        if S <= C:
            return
        score = attn_weights[:, :, -1, :].mean(dim=1)  # B, S: last query, mean over heads
        B, Hk, _ = self.positions.shape
        if S == C + 1:  # one new token: drop the lowest; the newest moves into its slot (no copy of the state)
            self._drop_one(score.argmin(dim=-1))
            return
        keep = score.topk(C, dim=-1).indices.sort(dim=-1).values  # B, C: original order
        self.keep(keep.unsqueeze(1).expand(B, Hk, C))  # B, Hk, C: same tokens in every KV head

    def _drop_one(self, drop: torch.Tensor) -> None:
        """Evict slot ``drop[b]`` of row b in every KV head: the last slot's token is moved there."""
        C = self.budget
        B, Hk, _, D = self.keys.shape
        slot = drop.view(B, 1, 1).expand(B, Hk, 1)  # B, Hk, 1
        self.positions.scatter_(2, slot, self.positions[:, :, C:].clone())
        slot = slot.unsqueeze(-1).expand(B, Hk, 1, D)  # B, Hk, 1, D
        self.keys.scatter_(2, slot, self.keys[:, :, C:].clone())
        self.values.scatter_(2, slot, self.values[:, :, C:].clone())
        self.keys, self.values, self.positions = self.keys[:, :, :C], self.values[:, :, :C], self.positions[:, :, :C]


class H2OLayer(BoundedLayer):
    """H2O (Zhang et al., 2023), per KV head: ``C // 2`` recent tokens + ``C - C // 2`` heavy hitters.

    A token's score is the attention it has received, accumulated over every query since it entered
    the cache. Deviation (grouped-query attention, absent from LLaMA-2-7B): a KV head's score sums
    the attention of the ``G`` query heads that share it.
    """

    def __init__(self, budget: int):
        super().__init__(budget)
        self.recent = budget // 2
        self.scores: torch.Tensor | None = None  # B, Hk, S: accumulated attention

    def observe(self, attn_weights: torch.Tensor) -> None:
        B, H, T, S = attn_weights.shape
        Hk = self.positions.shape[1]
        probs = attn_weights.to(torch.promote_types(attn_weights.dtype, torch.float32))  # accumulate in >= fp32
        received = probs.view(B, Hk, H // Hk, T, S).sum(dim=(2, 3))  # B, Hk, S
        old = self.scores if self.scores is not None else received.new_zeros(B, Hk, 0)
        self.scores = torch.nn.functional.pad(old, (0, S - old.shape[-1])) + received  # B, Hk, S
        C = self.budget
        if S <= C:
            return
        # Recent tokens are the last `recent` slots (slots stay in position order); they are never evicted.
        candidates = self.scores[..., : S - self.recent]  # B, Hk, S - recent
        heavy = candidates.topk(C - self.recent, dim=-1).indices  # B, Hk, C - recent
        recent = torch.arange(S - self.recent, S, device=heavy.device).expand(B, Hk, self.recent)
        keep = torch.cat([heavy, recent], dim=-1).sort(dim=-1).values  # B, Hk, C
        self.keep(keep)
        self.scores = self.scores.gather(2, keep)

    def reset(self) -> None:
        super().reset()
        self.scores = None


# ----------------------------------------------------------------------------- the Cache container
class EvictionCache(Cache):
    """A ``transformers`` Cache whose layers all follow one eviction policy with budget C."""

    layer_class: type[BoundedLayer] = BoundedLayer
    policy = "full"

    def __init__(self, budget: int | None = None, **layer_kwargs):
        self.spec = EvictionSpec(self.policy, budget, **layer_kwargs)
        factory = partial(self.layer_class, budget, **layer_kwargs) if budget is not None else self.layer_class
        super().__init__(layer_class_to_replicate=factory)

    @property
    def budget(self) -> int | None:
        return self.spec.budget

    def stored_lengths(self) -> list[int]:
        return [layer.stored for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes of every layer's stored keys and values (Table 1's KV memory)."""
        return sum(layer.nbytes() for layer in self.layers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec}, layers={len(self.layers)})"


class FullCache(EvictionCache):
    """The unbounded multi-state RNN: every token is kept."""

    def __init__(self):
        super().__init__(None)


class WindowCache(EvictionCache):
    layer_class, policy = WindowLayer, "window"

    def __init__(self, budget: int):
        super().__init__(budget)


class WindowSinkCache(EvictionCache):
    layer_class, policy = WindowSinkLayer, "window_sink"

    def __init__(self, budget: int, sinks: int = 4):
        super().__init__(budget, sinks=sinks)


class H2OCache(EvictionCache):
    layer_class, policy = H2OLayer, "h2o"

    def __init__(self, budget: int):
        super().__init__(budget)


class TOVACache(EvictionCache):
    layer_class, policy = TOVALayer, "tova"

    def __init__(self, budget: int):
        super().__init__(budget)


CACHES: dict[str, type[EvictionCache]] = {
    "full": FullCache, "window": WindowCache, "window_sink": WindowSinkCache, "h2o": H2OCache, "tova": TOVACache,
}


def make_cache(spec: EvictionSpec) -> EvictionCache:
    """A fresh cache for ``spec``."""
    if not spec.default_scope:
        raise ValueError(f"{spec}: only the App. E pass (appendix_e.nll) keeps sets at a scope other than the paper's")
    if spec.policy == "full":
        return FullCache()
    if spec.policy == "window_sink":
        return WindowSinkCache(spec.budget, sinks=spec.sinks)
    return CACHES[spec.policy](spec.budget)


# ----------------------------------------------------------------------------- attention hooks
def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The self-attention module of every decoder layer (LLaMA-family layout)."""
    modules = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no attention modules with q_proj and layer_idx (LLaMA family)")
    return modules


def _after_attention(module, args, kwargs, output) -> None:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if not isinstance(cache, EvictionCache) or cache.policy not in SCORED_POLICIES:
        return
    attn_weights = output[1]
    if attn_weights is None:
        raise RuntimeError(
            f"{cache.spec.label} scores tokens by attention probabilities, but attention returned none: "
            "load the model with attn_implementation='eager'"
        )
    cache.layers[module.layer_idx].observe(attn_weights)  # TOVA/H2O: evict after attention


def attach(model: torch.nn.Module) -> torch.nn.Module:
    """Let TOVA and H2O caches see the attention weights of ``model`` (idempotent; returns the model).

    Needs eager attention, which returns the probabilities. Caches of other classes are unaffected.
    """
    if getattr(model.config, "_attn_implementation", None) != "eager":
        raise ValueError(
            f"TOVA and H2O need the attention probabilities, but the model uses "
            f"attn_implementation={model.config._attn_implementation!r}: load it with attn_implementation='eager'"
        )
    if not getattr(model, "_tova_hooks", None):
        model._tova_hooks = [m.register_forward_hook(_after_attention, with_kwargs=True) for m in attention_modules(model)]
    return model
