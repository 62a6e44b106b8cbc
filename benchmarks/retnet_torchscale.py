"""Our chunkwise multi-scale retention vs the reference torchscale 0.3.0, same config, one run.

Prints the throughput ratio ours / torchscale (goal >= 1.0) for forward+backward (training) and
forward only (prefill), each the median of ``--reps`` timed steps after a warm-up.

torchscale is NOT a project dependency. Install it into its own folder, without dependencies (its
retention module imports with torch alone), and point this script at it:

    .venv/bin/pip install --no-deps --target .cache/bench/torchscale torchscale==0.3.0
    .venv/bin/python benchmarks/retnet_torchscale.py --torchscale-dir .cache/bench/torchscale

Same config on both sides: width d, h heads, key dim d/h, value dim 2d/h, swish gate, decay
gamma = 1 - 2^(-5 - arange(h)) (torchscale hard-codes it; ours: ``decay="eq8"``), a per-head RMSNorm
without weights (torchscale's choice; ours: ``head_norm="rmsnorm"``), chunk size C. torchscale's
chunkwise inputs (sin/cos and decay masks) are built here following its ``RetNetRelPos`` recipe
(architecture/retnet.py), since importing that module pulls in fairscale and timm.
"""

from __future__ import annotations

import argparse
import importlib
import math
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from reproduce.retnet.retention import MultiScaleRetention, RetentionConfig  # noqa: E402


def torchscale_module(path: Path):
    if not (path / "torchscale").is_dir():
        sys.exit(f"torchscale not found in {path}; install it there first:\n"
                 f"  .venv/bin/pip install --no-deps --target {path} torchscale==0.3.0")
    sys.path.insert(0, str(path))
    return importlib.import_module("torchscale.component.multiscale_retention")


def torchscale_chunk_inputs(heads: int, key_dim: int, length: int, chunk: int):
    """((sin, cos), (inner_mask, cross_decay, query_inner_decay, value_inner_decay)) for torchscale's chunkwise form."""
    angle = (1.0 / 10000 ** torch.linspace(0, 1, key_dim // 2)).repeat_interleave(2)  # (K,)
    log_decay = torch.log(1 - 2.0 ** (-5 - torch.arange(heads, dtype=torch.float)))  # (H,)
    index = torch.arange(length, dtype=torch.float)
    sin, cos = torch.sin(index[:, None] * angle), torch.cos(index[:, None] * angle)  # (T, K)
    j = torch.arange(chunk, dtype=torch.float)
    distance = j[:, None] - j[None, :]
    mask = torch.where(distance >= 0, torch.exp(distance.clamp(min=0) * log_decay[:, None, None]), 0.0)  # (H, C, C)
    value_inner_decay = (mask[:, -1] / mask[:, -1].sum(-1, keepdim=True)).unsqueeze(-1)  # (H, C, 1)
    scale = mask.sum(-1, keepdim=True).sqrt()  # (H, C, 1)
    inner_mask = mask / scale
    cross_decay = torch.exp(log_decay * chunk)[:, None, None]  # (H, 1, 1)
    query_inner_decay = torch.exp(log_decay[:, None] * (j + 1))[:, :, None] / (scale / mask[:, -1].sum(-1)[:, None, None])
    return (sin, cos), (inner_mask, cross_decay, query_inner_decay, value_inner_decay)


def median_seconds(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torchscale-dir", type=Path, default=REPO / ".cache/bench/torchscale")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.length % args.chunk:
        sys.exit("torchscale's chunkwise form needs length to be a multiple of chunk")
    torch.set_num_threads(args.threads)
    ts = torchscale_module(args.torchscale_dir)

    d, h = args.hidden, args.heads
    torch.manual_seed(0)
    theirs = ts.MultiScaleRetention(SimpleNamespace(multiway=False, layernorm_eps=1e-6), d, 2 * d, h)
    ours = MultiScaleRetention(RetentionConfig(hidden_size=d, num_heads=h, value_factor=2, decay="eq8", head_norm="rmsnorm",
                                               norm_eps=1e-6, chunk_size=args.chunk))  # torchscale's decays and norm
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    rel_pos = torchscale_chunk_inputs(h, d // h, args.length, args.chunk)
    x = torch.randn(args.batch, args.length, d, requires_grad=True)

    def ours_train():
        ours(x, mode="chunkwise")[0].square().mean().backward()

    def theirs_train():
        theirs(x, rel_pos, chunkwise_recurrent=True).square().mean().backward()

    def ours_forward():
        with torch.no_grad():
            ours(x, mode="chunkwise")

    def theirs_forward():
        with torch.no_grad():
            theirs(x, rel_pos, chunkwise_recurrent=True)

    tokens = args.batch * args.length
    print(f"chunkwise retention, d={d}, heads={h}, length={args.length}, chunk={args.chunk}, batch={args.batch}, "
          f"threads={args.threads}, torch {torch.__version__}, torchscale 0.3.0")
    for name, a, b in (("forward+backward", ours_train, theirs_train), ("forward only", ours_forward, theirs_forward)):
        t_ours, t_theirs = median_seconds(a, args.reps), median_seconds(b, args.reps)
        print(f"{name:>17}: ours {tokens / t_ours:>10,.0f} tok/s   torchscale {tokens / t_theirs:>10,.0f} tok/s   "
              f"ratio ours/torchscale = {t_theirs / t_ours:.2f}  (goal >= 1.0)")
    if not math.isfinite(t_ours):
        sys.exit(1)


if __name__ == "__main__":
    main()
