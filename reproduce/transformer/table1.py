"""Table 1 measured (§4 "Why Self-Attention"): cost per layer, sequential operations and maximum
path length of self-attention, recurrent and convolutional layers on real layers.

- FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` while the layer runs:
  self-attention through the explicit eq. (1) path (the fused kernel is not counted), the recurrent
  layer as an unrolled ``nn.LSTMCell`` (``nn.LSTM``'s fused kernel is not counted either), the
  convolution as ``nn.Conv1d``. The attention core (QK^T and the weighted sum: the O(n²·d) term)
  is kept apart from the four projections (O(n·d²)).
- Wall time: median forward time of the fast layers (fused attention, ``nn.LSTM``, ``nn.Conv1d``).
- Sequential operations: the matrix-multiply kernels one forward issues (counted by the same
  FlopCounterMode). Attention and convolution issue a fixed number whatever n is; the recurrence
  issues two per position, one after the other.
- Maximum path length, from the Jacobian's sparsity: the smallest number of stacked layers
  (attention, convolution) or recurrent steps after which output position n depends on input
  position 1 (a nonzero ∂y_n/∂x_1). Recurrent "steps" are truncated recurrences: the LSTM run over
  the last w positions from a zero state, for w = 1, 2, ...; dependence is monotone in the depth,
  so a binary search finds the smallest one.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .model import MultiHeadAttention

_MATMULS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "_scaled_dot_product")


class _LSTMUnrolled(nn.Module):
    """An LSTM layer stepped position by position with ``nn.LSTMCell`` (FLOPs and kernel calls are visible)."""

    def __init__(self, d: int):
        super().__init__()
        self.cell = nn.LSTMCell(d, d)

    def forward(self, x: Tensor) -> Tensor:  # (B, N, D) -> (B, N, D)
        b, n, d = x.shape
        h = c = x.new_zeros(b, d)
        out = []
        for t in range(n):
            h, c = self.cell(x[:, t], (h, c))
            out.append(h)
        return torch.stack(out, dim=1)  # (B, N, D)


def _count(fn: Callable[[], Tensor]) -> tuple[int, int, int]:
    """(total FLOPs, attention-core FLOPs (bmm), matrix-multiply kernel calls) of one call of ``fn``."""
    calls = 0

    class _Calls(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal calls
            if any(func.__name__.startswith(m) for m in _MATMULS):
                calls += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), FlopCounterMode(display=False) as counter, _Calls():
        fn()
    per_op = counter.get_flop_counts().get("Global", {})
    core = sum(v for k, v in per_op.items() if str(k).startswith("aten.bmm"))
    return counter.get_total_flops(), core, calls


def _times(fn: Callable[[], Tensor], repeats: int) -> list[float]:
    """Wall time of each of ``repeats`` calls, after one warm-up call."""
    with torch.no_grad():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def layer_costs(
    lengths: Sequence[int], d: int, kernel: int = 3, heads: int = 8, batch: int = 4, repeats: int = 5, seed: int = 0
) -> dict[str, dict[str, list[float]]]:
    """FLOPs, attention-core FLOPs, matmul kernel calls and median wall time per layer type, per n
    (``seconds_repeats``: every timed call, for an interval)."""
    torch.manual_seed(seed)
    attn = MultiHeadAttention(d, heads, d // heads, d // heads).eval()
    lstm = nn.LSTM(d, d, batch_first=True).eval()
    unrolled = _LSTMUnrolled(d).eval()
    conv = nn.Conv1d(d, d, kernel, padding=kernel // 2).eval()
    out: dict[str, dict[str, list[float]]] = {
        name: {"flops": [], "core_flops": [], "matmul_calls": [], "seconds": [], "seconds_repeats": []}
        for name in ("attention", "recurrent", "convolution")
    }
    for n in lengths:
        x = torch.randn(batch, n, d)
        xc = x.transpose(1, 2).contiguous()  # (B, D, N) for Conv1d
        cases = {
            "attention": (lambda: attn(x, need_weights=True)[0], lambda: attn(x)[0]),
            "recurrent": (lambda: unrolled(x), lambda: lstm(x)[0]),
            "convolution": (lambda: conv(xc), lambda: conv(xc)),
        }
        for name, (counted, fast) in cases.items():
            flops, core, calls = _count(counted)
            rec = out[name]
            rec["flops"].append(flops / batch)
            rec["core_flops"].append(core / batch)
            rec["matmul_calls"].append(calls)
            times = _times(fast, repeats)
            rec["seconds"].append(statistics.median(times))
            rec["seconds_repeats"].append(times)
    return out


def flops_vs_width(widths: Sequence[int], n: int, kernel: int = 3, heads: int = 8) -> dict[str, list[float]]:
    """FLOPs per sequence at fixed n for each layer width d (the d-exponents of Table 1)."""
    out = {"attention_core": [], "attention": [], "recurrent": [], "convolution": []}
    for d in widths:
        h = heads if d % heads == 0 else 1
        attn, cell, conv = MultiHeadAttention(d, h, d // h, d // h), _LSTMUnrolled(d), nn.Conv1d(d, d, kernel, padding=kernel // 2)
        x = torch.randn(1, n, d)
        total, core, _ = _count(lambda: attn(x, need_weights=True)[0])
        out["attention"].append(total)
        out["attention_core"].append(core)
        out["recurrent"].append(_count(lambda: cell(x))[0])
        out["convolution"].append(_count(lambda: conv(x.transpose(1, 2)))[0])
    return out


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (the exponent of a power law)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def crossover(lengths: Sequence[int], a: Sequence[float], b: Sequence[float]) -> float | None:
    """The n where curve ``a`` overtakes ``b`` (log-linear interpolation); None if it never does."""
    for i in range(1, len(lengths)):
        r0, r1 = math.log(a[i - 1] / b[i - 1]), math.log(a[i] / b[i])
        if r0 < 0 <= r1:
            f = -r0 / (r1 - r0)
            return math.exp(math.log(lengths[i - 1]) + f * (math.log(lengths[i]) - math.log(lengths[i - 1])))
    return None


# -- maximum path length (Jacobian sparsity) ------------------------------------------------------


def _depends_on_first(y_fn: Callable[[Tensor], Tensor], x: Tensor) -> bool:
    x = x.clone().requires_grad_(True)
    y = y_fn(x)  # (1, N', D): the last position is output position n
    (grad,) = torch.autograd.grad(y[0, -1].sum(), x)
    return bool(grad[0, 0].abs().sum() > 0)


def _smallest_depth(max_depth: int, depends: Callable[[int], bool]) -> int | None:
    lo, hi = 1, max_depth
    if not depends(hi):
        return None
    while lo < hi:  # dependence is monotone in depth
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if depends(mid) else (mid + 1, hi)
    return lo


def path_lengths(lengths: Sequence[int], d: int = 16, kernel: int = 3, heads: int = 2, seed: int = 0) -> dict[str, list[int]]:
    """Smallest depth (layers or recurrent steps) at which y_n depends on x_1, per n and layer type."""
    torch.manual_seed(seed)
    out = {"attention": [], "recurrent": [], "convolution": [], "dilated_convolution": []}
    for n in lengths:
        x = torch.randn(1, n, d)
        max_layers = n  # contiguous convolutions need up to n-1 layers
        attn = [MultiHeadAttention(d, heads, d // heads, d // heads) for _ in range(2)]
        lstm = nn.LSTM(d, d, batch_first=True)
        convs = [nn.Conv1d(d, d, kernel) for _ in range(max_layers)]
        n_dil = max(1, math.ceil(math.log(n, kernel)) + 1)
        dilated = [nn.Conv1d(d, d, kernel, dilation=kernel**i) for i in range(n_dil)]

        def attention(depth: int) -> bool:
            def f(x):
                for layer in attn[:depth]:
                    x = layer(x)[0]
                return x

            return _depends_on_first(f, x)

        def recurrent(window: int) -> bool:  # the recurrence over the last `window` positions
            return _depends_on_first(lambda x: lstm(x[:, n - window :])[0], x)

        def stack(layers: list[nn.Conv1d], dil: bool) -> Callable[[int], bool]:
            def depends(depth: int) -> bool:
                def f(x):
                    h = x.transpose(1, 2)  # (1, D, N)
                    for i, layer in enumerate(layers[:depth]):
                        pad = (kernel - 1) * (kernel**i if dil else 1)
                        h = layer(nn.functional.pad(h, (pad, 0)))  # causal: position t sees t-pad..t
                    return h.transpose(1, 2)  # (1, N, D)

                return _depends_on_first(f, x)

            return depends

        out["attention"].append(_smallest_depth(2, attention))
        out["recurrent"].append(_smallest_depth(n, recurrent))
        out["convolution"].append(_smallest_depth(max_layers, stack(convs, False)))
        out["dilated_convolution"].append(_smallest_depth(n_dil, stack(dilated, True)))
    return out
