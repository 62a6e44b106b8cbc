"""Streaming evaluation (token by token through a TOVA cache) vs the App. E masked pass: tokens/s.

One passage of a novel, TOVA at C, scored both ways on SmolLM2-135M; prints tokens/s of each, the
ratio App. E / streaming, the largest NLL difference, and the top operators of a short profiled
stretch of streaming (torch.profiler, self CPU time), where the hot spots of a decode step show.

    python benchmarks/tova_streaming.py [--tokens 320 --budget 64 --batch 1 --threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from reproduce.tova import appendix_e, experiments as ex
from reproduce.tova.policies import EvictionSpec, make_cache


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=320)
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile-steps", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = ex.load_model("smollm2")
    model = loaded.model
    ids, _ = ex.load_passages("novels", loaded.tokenizer, args.tokens, args.batch, seed=0)
    spec = EvictionSpec("tova", args.budget)

    start = time.perf_counter()
    streamed = ex.streaming_nll(model, ids, make_cache(spec), prefill=args.budget)
    stream_s = time.perf_counter() - start
    start = time.perf_counter()
    masked = appendix_e.nll(model, ids, spec)
    masked_s = time.perf_counter() - start
    streamed_tokens = args.batch * (args.tokens - args.budget)
    print(f"{spec}, {args.batch} x {args.tokens} tokens, {args.threads} thread(s)")
    print(f"streaming: {streamed_tokens / stream_s:8.1f} tokens/s (token-by-token part, after a {args.budget}-token prefill)")
    print(f"App. E   : {ids.numel() / masked_s:8.1f} tokens/s (whole passages)")
    print(f"ratio App. E / streaming: {(ids.numel() / masked_s) / (streamed_tokens / stream_s):.1f}x; "
          f"max |NLL difference| {(streamed - masked).abs().max().item():.2e}")

    cache = make_cache(spec)
    model(ids[:, : args.budget], use_cache=True, past_key_values=cache)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in range(args.budget, args.budget + args.profile_steps):
            model(ids[:, t : t + 1], use_cache=True, past_key_values=cache)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
