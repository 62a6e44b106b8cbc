"""Incremental decoding with a KV cache vs recomputing the whole prefix at every step.

Greedy decoding of ``--tokens`` target tokens (EOS disabled so both decode exactly that many) for a
batch of source sentences; both paths produce the same tokens (checked), the speed-up is printed.

    python benchmarks/transformer_kv_cache.py [--tokens 128 --d-model 256 --layers 3 --batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from reproduce.transformer.decoding import greedy_decode
from reproduce.transformer.model import Transformer, TransformerConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--src-len", type=int, default=24)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=args.vocab, n_layers=args.layers, d_model=args.d_model, d_ff=4 * args.d_model)
    model = Transformer(cfg).eval()
    src = torch.randint(4, args.vocab, (args.batch, args.src_len))
    extra = args.tokens - args.src_len  # max length = input + extra = --tokens
    no_eos = -1
    results, times = {}, {}
    for use_cache in (True, False, True):  # cached twice: the first call warms up
        t = time.perf_counter()
        results[use_cache] = greedy_decode(model, src, 1, no_eos, extra_len=extra, use_cache=use_cache)
        times[use_cache] = time.perf_counter() - t
    assert results[True] == results[False], "cached and recomputed decoding disagree"
    assert all(len(r) == args.tokens for r in results[True])
    print(f"greedy decoding of {args.tokens} tokens, batch {args.batch}, N={args.layers}, d_model={args.d_model}, "
          f"threads={torch.get_num_threads()}")
    print(f"  KV cache     {times[True]:7.2f} s  ({args.batch * args.tokens / times[True]:7.0f} tokens/s)")
    print(f"  recompute    {times[False]:7.2f} s  ({args.batch * args.tokens / times[False]:7.0f} tokens/s)")
    print(f"speed-up of the KV cache: {times[False] / times[True]:.2f}x (same tokens: yes)")


if __name__ == "__main__":
    main()
