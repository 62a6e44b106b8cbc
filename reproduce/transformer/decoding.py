"""Inference as in §6.1: beam search (beam 4, length penalty α = 0.6, max length input + 50, early
stop) and checkpoint averaging (the last 5 checkpoints for base models).

Shape notation as in :mod:`reproduce.transformer.model`; N = number of beams per sentence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from .model import Transformer


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """lp(Y) = (5 + |Y|)^α / (5 + 1)^α — the GNMT form (Wu et al. 2016, eq. 14) the paper's α refers to."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # without BOS, ending with EOS when it finished
    logprob: float
    score: float  # logprob / lp(len)


@torch.no_grad()
def greedy_decode(
    model: Transformer, src: Tensor, bos_id: int, eos_id: int, extra_len: int = 50, use_cache: bool = True
) -> list[list[int]]:
    """Arg-max decoding, one token at a time, up to input length + ``extra_len`` (§6.1)."""
    model.eval()
    memory, _ = model.encode(src)
    b = src.size(0)
    max_lens = (src != model.cfg.pad_id).sum(1) + extra_len  # (B,) input length + 50, per sentence
    out = torch.full((b, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    done = torch.zeros(b, dtype=torch.bool, device=src.device)
    cache = model.new_cache() if use_cache else None
    for step in range(1, int(max_lens.max()) + 1):
        if use_cache:
            logits = model.decode_step(out[:, -1:], memory, src, cache)[:, -1]  # (B, V)
        else:
            hidden, _, _ = model.decode(out, memory, src)
            logits = model.logits(hidden[:, -1])  # (B, V)
        nxt = logits.argmax(-1).masked_fill(done, model.cfg.pad_id)  # (B,)
        out = torch.cat([out, nxt[:, None]], dim=1)  # (B, T+1)
        done |= (nxt == eos_id) | (max_lens <= step)
        if bool(done.all()):
            break
    return [_strip(row[1:].tolist(), eos_id, model.cfg.pad_id) for row in out]


def _strip(tokens: list[int], eos_id: int, pad_id: int) -> list[int]:
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
    return [t for t in tokens if t != pad_id]


def beam_search(
    model: Transformer,
    src: Tensor,
    bos_id: int,
    eos_id: int,
    beam: int = 4,
    alpha: float = 0.6,
    extra_len: int = 50,
) -> list[list[int]]:
    """The best hypothesis per sentence of :func:`beam_search_hypotheses` (without BOS/EOS/padding)."""
    finished = beam_search_hypotheses(model, src, bos_id, eos_id, beam, alpha, extra_len)
    best = [max(hyps, key=lambda h: h.score) for hyps in finished]
    return [_strip(h.tokens, eos_id, model.cfg.pad_id) for h in best]


@torch.no_grad()
def beam_search_hypotheses(
    model: Transformer,
    src: Tensor,
    bos_id: int,
    eos_id: int,
    beam: int = 4,
    alpha: float = 0.6,
    extra_len: int = 50,
) -> list[list[Hypothesis]]:
    """Batched beam search with the GNMT length penalty and early stopping — §6.1.

    Each step scores the N·V extensions of the N live hypotheses and keeps the top 2N: an EOS
    among the N best ranks ends a hypothesis (scored logprob / lp(|Y|)), the N best non-EOS
    candidates stay alive. A sentence stops once it has N finished hypotheses ("terminate early
    when possible") or reaches input length + ``extra_len``. With N = 1 this is greedy decoding.
    Returns every finished hypothesis per sentence.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    model.eval()
    pad = model.cfg.pad_id
    b, n = src.size(0), beam
    src_lens = (src != pad).sum(1)  # (B,)
    max_lens = (src_lens + extra_len).tolist()
    src_n = src.repeat_interleave(n, dim=0)  # (B·N, S)
    memory, _ = model.encode(src)
    memory = memory.repeat_interleave(n, dim=0)  # (B·N, S, D)
    cache = model.new_cache()
    tokens = torch.full((b * n, 1), bos_id, dtype=torch.long, device=src.device)  # (B·N, 1)
    scores = torch.full((b, n), float("-inf"), device=src.device)  # (B, N) cumulative log-probs
    scores[:, 0] = 0.0  # only one live hypothesis at the start
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    done = [False] * b
    offsets = (torch.arange(b, device=src.device) * n)[:, None]  # (B, 1)
    for step in range(1, max(max_lens) + 1):
        logp = model.decode_step(tokens[:, -1:], memory, src_n, cache)[:, -1].log_softmax(-1)  # (B·N, V)
        v = logp.size(-1)
        cand = (scores[:, :, None] + logp.view(b, n, v)).view(b, n * v)  # (B, N·V)
        top_scores, top_idx = cand.topk(2 * n, dim=1)  # (B, 2N)
        top_beam, top_tok = top_idx // v, top_idx % v  # (B, 2N)
        is_eos = top_tok == eos_id
        # finish hypotheses: EOS among the N best ranks
        rank = torch.arange(2 * n, device=src.device)[None, :]  # (1, 2N)
        for bi, ri in (is_eos & (rank < n) & torch.isfinite(top_scores)).nonzero().tolist():
            if not done[bi]:
                row = tokens[bi * n + top_beam[bi, ri]].tolist()[1:] + [eos_id]
                lp = top_scores[bi, ri].item()
                finished[bi].append(Hypothesis(row, lp, lp / length_penalty(step, alpha)))
        # keep the N best non-EOS candidates alive (stable sort puts EOS candidates last)
        order = (rank + 2 * n * is_eos.long()).argsort(dim=1, stable=True)[:, :n]  # (B, N)
        alive_beam = top_beam.gather(1, order)  # (B, N)
        alive_tok = top_tok.gather(1, order)
        scores = top_scores.gather(1, order)
        index = (offsets + alive_beam).view(-1)  # (B·N,)
        tokens = torch.cat([tokens.index_select(0, index), alive_tok.view(-1, 1)], dim=1)  # (B·N, T+1)
        cache.reorder(index)
        for bi in range(b):
            if done[bi]:
                continue
            if len(finished[bi]) >= n:
                done[bi] = True
            elif step >= max_lens[bi]:  # out of length: live hypotheses end here
                for j in range(n):
                    lp = scores[bi, j].item()
                    if lp > float("-inf"):
                        row = tokens[bi * n + j].tolist()[1:]
                        finished[bi].append(Hypothesis(row, lp, lp / length_penalty(step, alpha)))
                done[bi] = True
        if all(done):
            break
    return finished


def average_checkpoints(state_dicts: Iterable[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of several checkpoints' parameters — §6.1 ("averaging the last 5 checkpoints")."""
    state_dicts = list(state_dicts)
    if not state_dicts:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    keys = state_dicts[0].keys()
    for i, sd in enumerate(state_dicts[1:], 1):
        if sd.keys() != keys:
            raise ValueError(f"checkpoint {i} has different parameter names than checkpoint 0")
    out = {}
    for k in keys:
        first = state_dicts[0][k]
        if first.is_floating_point():
            out[k] = torch.stack([sd[k].float() for sd in state_dicts]).mean(0).to(first.dtype)
        else:
            out[k] = first.clone()
    return out
