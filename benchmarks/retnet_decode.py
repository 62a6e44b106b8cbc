"""RetNet recurrent decoding vs a Transformer with a KV cache: per-token latency at 256...4096 tokens.

The notebook's Figure 6 measurement (``reproduce.retnet.experiments.decode_cost``) as a script:
prints, for each context length, the median per-token latency of both models, the ratio
Transformer / RetNet, and the decoding memory (RetNet state vs KV cache), all measured in this run.

    .venv/bin/python benchmarks/retnet_decode.py --lengths 256 1024 4096 --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce.retnet import experiments as ex  # noqa: E402


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
    shape = ex.LMShape(vocab_size=1024, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads)
    rows = ex.decode_cost(shape, args.lengths, args.batch, args.steps, device=args.device)
    by = {(r["model"], r["length"]): r for r in rows}
    print(f"decode, d={args.hidden}, layers={args.layers}, heads={args.heads}, batch={args.batch}, "
          f"threads={args.threads}, device={args.device}")
    print(f"{'length':>7} {'RetNet ms':>10} {'Transformer ms':>15} {'ratio T/R':>10} {'state MiB':>10} {'KV MiB':>8}")
    for n in args.lengths:
        r, t = by["retnet", n], by["transformer", n]
        print(f"{n:>7} {r['latency_ms']:>10.2f} {t['latency_ms']:>15.2f} {t['latency_ms'] / r['latency_ms']:>10.2f} "
              f"{r['memory_bytes'] / 2**20:>10.2f} {t['memory_bytes'] / 2**20:>8.2f}")
    s = ex.decode_summary(rows)
    print(f"RetNet latency growth {s['shortest']}->{s['longest']}: {s['retnet_latency_growth']:.2f}x; "
          f"Transformer: {s['transformer_latency_growth']:.2f}x; speed-up at {s['longest']}: {s['speedup_at_longest']:.2f}x")


if __name__ == "__main__":
    main()
