"""TOVA's decode step vs the Window cache's at the same C (issue #7: TOVA <= 1.15x Window).

SmolLM2-135M (eager attention for every cache, so only the policy differs), a state of C tokens
from a novel, then decode steps timed one by one, the caches interleaved step by step so that both
see the same machine load; the median per cache. Also timed: transformers' own bounded cache
(``DynamicSlidingWindowLayer`` with window C + 1: it stores the last C tokens and attends over C + 1,
the same computation as our Window) as the library reference. Prints ms/step and the ratios
TOVA / Window and Window / transformers, measured in this run.

    python benchmarks/tova_decode.py [--budgets 64 256 1024 --steps 24 --batch 1 --threads 1]
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from reproduce.tova import experiments as ex
from reproduce.tova.policies import EvictionSpec, make_cache


def library_window(model, budget: int) -> Cache:
    n = model.config.num_hidden_layers
    return Cache(layers=[DynamicSlidingWindowLayer(sliding_window=budget + 1) for _ in range(n)])


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = ex.load_model("smollm2")
    model = loaded.model
    kw = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    ids, _ = ex.load_passages("novels", loaded.tokenizer, max(args.budgets) + args.steps + 4, 1, seed=0)
    print(f"SmolLM2-135M, eager attention, batch {args.batch}, {args.threads} thread(s), median of {args.steps} steps")
    print(f"{'C':>6} {'Window ms':>10} {'TOVA ms':>10} {'HF window ms':>13} {'TOVA/Window':>12} {'Window/HF':>10}")
    for C in args.budgets:
        caches = {"window": make_cache(EvictionSpec("window", C)), "tova": make_cache(EvictionSpec("tova", C)),
                  "hf": library_window(model, C)}
        for cache in caches.values():
            model(ids[:, :C], use_cache=True, **{kw: cache})
            cache.batch_repeat_interleave(args.batch)
        times = {name: [] for name in caches}
        for step in range(args.steps + 2):
            token = ids[:, C + step : C + step + 1].expand(args.batch, 1)
            for name, cache in caches.items():
                start = time.perf_counter()
                model(token, use_cache=True, **{kw: cache})
                if step >= 2:  # two warm-up steps
                    times[name].append(time.perf_counter() - start)
        ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
        assert max(caches["tova"].stored_lengths()) == C == max(caches["window"].stored_lengths())
        print(f"{C:>6} {ms['window']:>10.2f} {ms['tova']:>10.2f} {ms['hf']:>13.2f} "
              f"{ms['tova'] / ms['window']:>12.3f} {ms['window'] / ms['hf']:>10.3f}")


if __name__ == "__main__":
    main()
