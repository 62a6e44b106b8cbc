"""RetNet recurrent decoding vs a Transformer with transformers' KV caches: per-token latency at 256...4096 tokens.

The notebook's Figure 6 measurement (``reproduce.retnet.costs.decode_cost``) as a script:
prints, for each context length, the median per-token latency of RetNet (recurrent state, eq. 6)
and of the same-size LLaMA-style Transformer (SDPA) decoding with ``StaticCache`` (preallocated,
written in place: the strongest baseline) and with ``DynamicCache`` (transformers' default, which
concatenates the whole cache every step), the ratios Transformer / RetNet against both, and the
decoding memory. All points are measured in this one run, their steps interleaved round by round.

It also times RetNet's recurrent step as it was before issue #26 (``RetNet before``: the rotation's
frequencies rebuilt on every call, and the state update ``gamma S + k^T v`` through three full-size
temporaries and an einsum). That implementation is kept below, verbatim, as the reference
(:func:`_rotate_before`, :func:`_retention_recurrent_before`), and swapped into the same model for
its own rows only (:func:`_step_before`), so the before/after comparison shares the run, the weights,
the machine's load and the interleaving with the Transformer rows.

    .venv/bin/python benchmarks/retnet_decode.py --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reproduce import runtime  # noqa: E402
from reproduce.retnet import costs  # noqa: E402
from reproduce.retnet import retention  # noqa: E402
from reproduce.retnet.baselines import LMShape  # noqa: E402


# ------------------------------------------------------------------------------------------------
# The recurrent step before issue #26 (reproduce/retnet/retention.py at acbfcbb), kept as the reference
# ------------------------------------------------------------------------------------------------
def _rotate_before(x: Tensor, positions: Tensor, base: float = 10000.0) -> Tensor:
    dim, exact = x.shape[-1], torch.promote_types(x.dtype, torch.float32)
    theta = base ** (-torch.arange(0, dim, 2, device=x.device, dtype=exact) / dim)  # (K/2,), every call
    angle = positions.to(device=x.device, dtype=exact)[:, None] * theta[None, :]  # (T, K/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # (B, H, T, K/2) each
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)  # (B, H, T, K/2, 2)
    return rotated.flatten(-2)  # (B, H, T, K)


def _retention_recurrent_before(q, k, v, gamma, state, offset, normalize=True, in_place=False):
    del in_place  # the step before #26 always allocated a new state
    g = gamma.to(q.dtype)
    kv, key_sum = state.kv, state.key_sum
    outs, score_sums = [], []
    for t in range(q.shape[-2]):
        q_t, k_t, v_t = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, K), (B, H, K), (B, H, V)
        kv = g[None, :, None, None] * kv + k_t[..., :, None] * v_t[..., None, :]  # (B, H, K, V)
        key_sum = g[None, :, None] * key_sum + k_t  # (B, H, K)
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, kv))  # (B, H, V)
        score_sums.append((q_t * key_sum).sum(-1))  # (B, H)
    out = torch.stack(outs, dim=2)  # (B, H, T, V)
    if normalize:
        positions = torch.arange(offset, offset + q.shape[-2], device=q.device)
        out = retention._normalise(out, torch.stack(score_sums, dim=2), g, positions, q.shape[-1])
    return out, retention.RetentionState(kv, key_sum)


@contextlib.contextmanager
def _step_before():
    """The same model, decoding with the step as it was: the module's functions swapped for the call."""
    now = retention.rotate, retention.retention_recurrent
    retention.rotate, retention.retention_recurrent = _rotate_before, _retention_recurrent_before
    try:
        yield
    finally:
        retention.rotate, retention.retention_recurrent = now


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
    parser.add_argument("--no-before", action="store_true", help="skip the pre-#26 reference step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = LMShape(vocab_size=1024, hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads)
    variants = {} if args.no_before else {"retnet_before": _step_before}
    rows, load = runtime.timed(lambda: costs.decode_cost(shape, args.lengths, args.batch, args.steps,
                                                         device=args.device, retnet_variants=variants))
    by = {(r["model"], r["length"]): r for r in rows}
    print(f"decode, d={args.hidden}, layers={args.layers}, heads={args.heads}, batch={args.batch}, "
          f"threads={args.threads}, device={args.device}, median of {args.steps} interleaved steps; "
          f"{runtime.load_note(load)} (1-min load {load['before'].get('loadavg_1m')} -> {load['after'].get('loadavg_1m')})")
    before = "RetNet before" if variants else ""
    print(f"{'length':>7} {before:>14} {'RetNet ms':>10} {'Static ms':>10} {'Dynamic ms':>11} {'Static/RetNet':>14} "
          f"{'Dynamic/RetNet':>15} {'state MiB':>10} {'KV MiB':>8}")
    for n in args.lengths:
        r, s, d = by["retnet", n], by["transformer_static", n], by["transformer_dynamic", n]
        old = f"{by['retnet_before', n]['latency_ms']:>14.2f}" if variants else f"{'':>14}"
        print(f"{n:>7} {old} {r['latency_ms']:>10.2f} {s['latency_ms']:>10.2f} {d['latency_ms']:>11.2f} "
              f"{s['latency_ms'] / r['latency_ms']:>14.2f} {d['latency_ms'] / r['latency_ms']:>15.2f} "
              f"{r['memory_bytes'] / 2**20:>10.2f} {d['memory_bytes'] / 2**20:>8.2f}")
    s = costs.decode_summary(rows)
    long = s["longest"]
    static_long = by["transformer_static", long]["latency_ms"]
    if variants:
        b, a = by["retnet_before", long]["latency_ms"], by["retnet", long]["latency_ms"]
        print(f"RetNet step at {long} tokens: before {b:.2f} ms -> now {a:.2f} ms ({b / a:.2f}x faster); "
              f"Static/RetNet at {long}: before {static_long / b:.2f}x -> now {static_long / a:.2f}x")
    print(f"strongest baseline at {long} tokens: {s['strongest_baseline']}; RetNet latency growth "
          f"{s['shortest']}->{long}: {s['retnet_latency_growth']:.2f}x; StaticCache: "
          f"{s['transformer_static']['latency_growth']:.2f}x; DynamicCache: {s['transformer_dynamic']['latency_growth']:.2f}x")


if __name__ == "__main__":
    main()
