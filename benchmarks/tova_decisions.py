"""TOVA/H2O keep/evict decisions of the App. E pass: the fast form vs the step-by-step definition.

Real queries and keys: one layer of SmolLM2-135M over passages of a novel (the full-cache pass).
For each policy and C, in one run and on the same tensors:

- old: what the pass did before (``(B, H, T, T)`` logits, then the Python loop of
  ``appendix_e.tova_mask`` / ``h2o_mask``), and that loop alone on precomputed logits (both in
  float64 now: the tie rule of ``appendix_e``);
- new: ``appendix_e.evictions`` (blocked logits over the candidates, compiled replay).

Prints the seconds of each (median of ``--repeats``), the ratios old / new, and whether the kept
sets are identical (the number of (query, key) mask entries and of decisions that differ).

    python benchmarks/tova_decisions.py [--length 2048 --batch 4 --budgets 256 512 --layer 15 --threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reproduce.tova import appendix_e, experiments as ex
from reproduce.tova.policies import EvictionSpec

def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--budgets", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = ex.load_model("smollm2")
    model = loaded.model
    ids, _ = ex.load_passages("novels", loaded.tokenizer, args.length, args.batch, seed=0)
    q, k, scaling = ex.layer_queries_keys(model, ids, args.layer)
    B, H, T, _ = q.shape
    Hk = k.shape[1]
    appendix_e.evictions(q[:1, :, :80], k[:1, :, :80], EvictionSpec("tova", 8), scaling)  # compile (or load) once
    appendix_e.evictions(q[:1, :, :80], k[:1, :, :80], EvictionSpec("h2o", 8), scaling)
    print(f"layer {args.layer} of SmolLM2-135M: B={B}, H={H}, Hk={Hk}, T={T}; {torch.get_num_threads()} thread(s)")
    print(f"{'policy':<12}{'old s':>8}{'loop s':>8}{'new s':>8}{'old/new':>9}{'loop/new':>10}  kept sets")
    for policy in ("tova", "h2o"):
        for C in args.budgets:
            spec = EvictionSpec(policy, C)

            def old():
                return appendix_e.policy_mask(appendix_e.decision_logits(q, k, scaling), spec, Hk)

            logits = appendix_e.decision_logits(q, k, scaling)
            old_s, ref = timed(old, args.repeats)
            loop_s, _ = timed(lambda: appendix_e.policy_mask(logits, spec, Hk), args.repeats)
            new_s, last = timed(lambda: appendix_e.evictions(q, k, spec, scaling), args.repeats)
            mask = appendix_e.mask_from_last(last).expand_as(ref)
            differ = (mask != ref).sum().item()
            # last step at which each token is visible, from the reference mask: differs where a decision differs
            ref_last = torch.where(ref, torch.arange(T)[:, None], -1).amax(dim=-2)  # B, Hm, T
            decisions = (ref_last != last.expand_as(ref_last)).sum().item()
            total = B * ref.shape[1] * (T - C - 1)
            verdict = "identical" if differ == 0 else f"{differ} mask entries differ: {decisions} of {total} decisions"
            print(f"{str(spec):<12}{old_s:8.3f}{loop_s:8.3f}{new_s:8.3f}{old_s / new_s:8.1f}x{loop_s / new_s:9.1f}x  {verdict}")
            del logits


if __name__ == "__main__":
    main()
