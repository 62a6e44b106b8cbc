"""RetNet recurrent decoding vs a Transformer with transformers' KV caches: per-token latency at 256...4096 tokens.

The notebook's Figure 6 measurement (``reproduce.retnet.costs.decode_cost``) as a script:
prints, for each context length, the median per-token latency of RetNet (recurrent state, eq. 6)
and of the same-size LLaMA-style Transformer (SDPA) decoding with ``StaticCache`` (preallocated,
written in place: the strongest baseline) and with ``DynamicCache`` (transformers' default, which
concatenates the whole cache every step), the ratios Transformer / RetNet against both, and the
decoding memory. All points are measured in this one run, their steps interleaved round by round.

    .venv/bin/python benchmarks/retnet_decode.py --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.retnet import costs  # noqa: E402
from reproduce.retnet.baselines import LMShape  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = LMShape(vocab_size=1024, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads)
    rows = costs.decode_cost(shape, args.lengths, args.batch, args.steps, device=args.device)
    by = {(r["model"], r["length"]): r for r in rows}
    print(f"decode, d={args.hidden}, layers={args.layers}, heads={args.heads}, batch={args.batch}, "
          f"threads={args.threads}, device={args.device}, median of {args.steps} steps")
    print(f"{'length':>7} {'RetNet ms':>10} {'Static ms':>10} {'Dynamic ms':>11} {'Static/RetNet':>14} "
          f"{'Dynamic/RetNet':>15} {'state MiB':>10} {'KV MiB':>8}")
    for n in args.lengths:
        r, s, d = by["retnet", n], by["transformer_static", n], by["transformer_dynamic", n]
        print(f"{n:>7} {r['latency_ms']:>10.2f} {s['latency_ms']:>10.2f} {d['latency_ms']:>11.2f} "
              f"{s['latency_ms'] / r['latency_ms']:>14.2f} {d['latency_ms'] / r['latency_ms']:>15.2f} "
              f"{r['memory_bytes'] / 2**20:>10.2f} {d['memory_bytes'] / 2**20:>8.2f}")
    s = costs.decode_summary(rows)
    print(f"strongest baseline at {s['longest']} tokens: {s['strongest_baseline']}; RetNet latency growth "
          f"{s['shortest']}->{s['longest']}: {s['retnet_latency_growth']:.2f}x; StaticCache: "
          f"{s['transformer_static']['latency_growth']:.2f}x; DynamicCache: {s['transformer_dynamic']['latency_growth']:.2f}x")


if __name__ == "__main__":
    main()
