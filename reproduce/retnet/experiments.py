"""The RetNet notebook's measurements: forms agree, inference cost, training cost, small LMs.

Each function returns plain data (lists of row dicts) that :mod:`reproduce.retnet.sections` records with
``run.record`` and the figure functions in :mod:`reproduce.retnet.plots` read back. Nothing here
plots or writes files.

Sections (notebook section -> paper artifact):
1. :func:`forms_agree` — §2.1 eqs. (5)-(7): parallel == recurrent == chunkwise.
2. :func:`decode_cost` — Figure 6: per-token latency and memory of decoding vs length (RetNet's
   state vs transformers' StaticCache and DynamicCache).
3. :func:`training_cost` — Table 4: training throughput and peak memory vs length (parallel and
   chunkwise retention, fused and unfused softmax attention).
4./5. :func:`train_language_models` — Tables 5 and 6: validation perplexity of small LMs, after a
   learning-rate sweep per model family, beside a no-mixer control.

Deviations from the paper (scale): models of a few hundred thousand parameters trained for 1000
steps on seven public-domain novels instead of 200M-6.7B models on 100B tokens; CPU instead of
A100 GPUs; training cost is measured on one block of equal weights (RetNet block vs Transformer
block) rather than whole models, with peak memory read from a fresh process per point.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import multiprocessing
import os
import statistics
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reproduce.configs.retnet import VARIANTS as _ROWS

from .retention import MSR_FIELDS, MultiScaleRetention, RetentionState, RetNetBlock, rotate

# --------------------------------------------------------------------------------------------------
# The compared models
# --------------------------------------------------------------------------------------------------
# Table 5/6 rows, from their one declaration (reproduce.configs.retnet.VARIANTS).
VARIANTS: dict[str, dict | None] = {name: overrides for name, (_, _, _, overrides) in _ROWS.items()}
LABELS: dict[str, str] = {name: label for name, (_, label, _, _) in _ROWS.items()}
FAMILY: dict[str, str] = {name: family for name, (_, _, family, _) in _ROWS.items()}  # whose swept lr a row uses
TABLE5 = tuple(name for name, (table, _, _, _) in _ROWS.items() if table == "Table 5")
ABLATIONS = tuple(name for name, (table, _, _, _) in _ROWS.items() if table == "Table 6")
CONTROL = "no_mixer"  # embeddings + FFN only: what a model learns without mixing tokens
MIXERS = tuple(name for name in _ROWS if name != CONTROL)


@dataclass(frozen=True)
class LMShape:
    """Width, depth and heads shared by every compared model, plus the vocabulary."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    gamma_schedule: str = "paper"
    head_norm: str = "groupnorm"
    chunk_size: int = 64


def retnet_config(shape: LMShape, variant: str = "retnet", **extra):
    """The RetNetConfig of one Table 5/6 row."""
    from .model import RetNetConfig

    overrides = dict(VARIANTS[variant] or {})
    if variant == "small_heads":
        overrides["num_heads"] = shape.num_heads * overrides["num_heads"]
    base = dict(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_heads=shape.num_heads, decay=shape.gamma_schedule, head_norm=shape.head_norm, chunk_size=shape.chunk_size,
    )
    return RetNetConfig(**{**base, **overrides, **extra})


def transformer_config(shape: LMShape, max_positions: int = 8192):
    """A LLaMA-style Transformer of the same width, depth and heads (transformers' own model).

    Its SwiGLU FFN has 3 d x I weights; I = 8d/3 gives 12 d^2 per block, RetNet's allocation (§2.3).
    Pre-RMSNorm and RoPE (the paper's Transformer baseline is not otherwise specified).
    """
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=round(8 * shape.hidden_size / 3),
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )


def build_model(shape: LMShape, variant: str, seed: int, dtype=torch.float32):
    """A freshly initialised model of one row, seeded."""
    from transformers import LlamaForCausalLM

    from .model import RetNetForCausalLM

    torch.manual_seed(seed)
    if VARIANTS[variant] is None:
        model = LlamaForCausalLM._from_config(transformer_config(shape), attn_implementation="sdpa")
    else:
        model = RetNetForCausalLM(retnet_config(shape, variant))
    return model.to(dtype)


# --------------------------------------------------------------------------------------------------
# 1. The three forms agree
# --------------------------------------------------------------------------------------------------
def forms_agree(length: int, chunks: Sequence[int], seed: int = 0, batch: int = 2) -> list[dict]:
    """Max |difference| of a whole 2-layer LM's logits: parallel vs recurrent vs chunkwise (float64).

    Norm eps is set negligible (1e-12) so the comparison sees the forms, not the eps (§2.2).
    """
    from .model import RetNetForCausalLM

    shape = LMShape(vocab_size=101, hidden_size=64, num_layers=2, num_heads=4)
    torch.manual_seed(seed)
    model = RetNetForCausalLM(retnet_config(shape, norm_eps=1e-12)).double().eval()
    ids = torch.randint(0, shape.vocab_size, (batch, length))
    rows = []
    with torch.no_grad():
        parallel = model(ids, mode="parallel").logits
        recurrent = model(ids, mode="recurrent").logits
        rows.append({"compared": "parallel vs recurrent", "chunk": None,
                     "max_abs_diff": (parallel - recurrent).abs().max().item()})
        for chunk in chunks:
            model.config.chunk_size = chunk
            for m in model.modules():
                if isinstance(m, MultiScaleRetention):
                    m.config.chunk_size = chunk
            chunkwise = model(ids, mode="chunkwise").logits
            rows.append({"compared": "parallel vs chunkwise", "chunk": chunk,
                         "max_abs_diff": (parallel - chunkwise).abs().max().item()})
    return rows


# --------------------------------------------------------------------------------------------------
# 2. Inference cost (Figure 6)
# --------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _retnet_cache_at(model, batch: int, length: int, device: torch.device, dtype=torch.float32):
    """A RetNetCache as after ``length`` tokens (random state: the cost of a step does not depend on it)."""
    from .model import RetNetCache

    c = model.config
    cache = RetNetCache(c.num_hidden_layers)
    for i in range(c.num_hidden_layers):
        cache.layers[i] = RetentionState(torch.randn(batch, c.num_heads, c.key_dim, c.value_dim, device=device, dtype=dtype),
                                         torch.randn(batch, c.num_heads, c.key_dim, device=device, dtype=dtype))
    cache.seen_tokens = length
    return cache


def _kv_cache_at(model, batch: int, length: int, device: torch.device, cache: str = "dynamic", room: int = 0,
                 dtype=torch.float32):
    """A transformers KV cache holding ``length`` random keys/values per layer.

    ``dynamic``: ``DynamicCache``, which concatenates each step's key/value onto its tensors (a copy
    of the whole cache per step); ``static``: ``StaticCache``, preallocated for ``length + room``
    tokens and written in place (attention then reads all ``length + room`` slots under a mask, so
    ``room`` is kept to the decode steps that follow).
    """
    from transformers import DynamicCache, StaticCache

    c = model.config
    kv = DynamicCache(config=c) if cache == "dynamic" else StaticCache(config=c, max_cache_len=length + room)
    head_dim = c.hidden_size // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        shape = (batch, c.num_key_value_heads, length, head_dim)  # (B, H, S, K)
        kv.update(torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype), i)
    return kv


def _kv_bytes(cache) -> int:
    """Bytes the cache holds (a StaticCache: its whole preallocated buffer)."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


DECODERS = {  # name -> (model row, cache); the Transformer decodes with transformers' own caches, SDPA
    "retnet": ("retnet", "recurrent state"),
    "transformer_static": ("transformer", "StaticCache"),
    "transformer_dynamic": ("transformer", "DynamicCache"),
}
BASELINES = ("transformer_static", "transformer_dynamic")


def decode_cost(shape: LMShape, lengths: Sequence[int], batch: int, steps: int, warmup: int = 2,
                device: torch.device | str = "cpu", decoders: Sequence[str] = tuple(DECODERS),
                dtype: torch.dtype = torch.float32) -> list[dict]:
    """Per-token decode latency (median of ``steps``; every step's time in ``step_ms``, in round order)
    and state/cache bytes after ``length`` tokens.

    RetNet decodes with its recurrent state (eq. 6); the Transformer (SDPA attention) with
    transformers' ``StaticCache`` (preallocated, updated in place: its fastest cache on CPU, see
    ``benchmarks/retnet_decode.py``) and with ``DynamicCache`` (its default). All are untrained
    (cost does not depend on the weights) and see random context. The steps are interleaved: each
    round times one step of every (decoder, length) point, so a busy neighbour on a shared machine
    slows all points alike instead of whichever was running. ``dtype``: of the weights, states and
    caches (bf16 on a GPU under ``precision='auto'``; the byte counts scale with it).
    """
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise ValueError(f"unknown decoder(s) {unknown}; known: {', '.join(DECODERS)}")
    device = torch.device(device)
    models = {row: build_model(shape, row, seed=0, dtype=dtype).to(device).eval() for row in dict.fromkeys(DECODERS[d][0] for d in decoders)}
    points = [(name, length) for length in lengths for name in decoders]
    caches, tokens, memory = {}, {}, {}
    for name, length in points:
        model = models[DECODERS[name][0]]
        if name == "retnet":
            caches[name, length] = _retnet_cache_at(model, batch, length, device, dtype)
            memory[name, length] = caches[name, length].nbytes
        else:
            caches[name, length] = _kv_cache_at(model, batch, length, device, name.split("_")[1], room=warmup + steps,
                                                dtype=dtype)
            memory[name, length] = _kv_bytes(caches[name, length])  # before decoding
        tokens[name, length] = torch.randint(0, shape.vocab_size, (batch, 1), device=device)
    times = {point: [] for point in points}
    with torch.inference_mode():
        for step in range(warmup + steps):
            for name, length in points:
                model, cache, token = models[DECODERS[name][0]], caches[name, length], tokens[name, length]
                _sync(device)
                begin = time.perf_counter()
                if name == "retnet":
                    out = model(token, cache=cache, use_cache=True, mode="recurrent")
                else:
                    out = model(input_ids=token, cache=cache, use_cache=True)
                tokens[name, length] = out.logits[:, -1:].argmax(-1)  # (B, 1)
                _sync(device)
                if step >= warmup:
                    times[name, length].append(time.perf_counter() - begin)
    return [{"model": name, "cache": DECODERS[name][1], "length": length, "batch": batch,
             "latency_ms": 1000 * statistics.median(times[name, length]),
             "step_ms": [1000 * t for t in times[name, length]], "memory_bytes": memory[name, length]}
            for name, length in points]


def strongest_baseline(rows: list[dict]) -> str:
    """The Transformer decoder with the lowest median latency at the longest length (the claims' baseline)."""
    long = max(r["length"] for r in rows)
    lat = {r["model"]: r["latency_ms"] for r in rows if r["length"] == long and r["model"] in BASELINES}
    return min(lat, key=lat.get)


def decode_summary(rows: list[dict]) -> dict:
    """Ratios the Figure 6 claims read: RetNet flatness, baseline / RetNet at the longest length."""
    by = {(r["model"], r["length"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    short, long = lengths[0], lengths[-1]
    baselines = [b for b in BASELINES if (b, long) in by]
    out = {
        "shortest": short,
        "longest": long,
        "retnet_latency_growth": by["retnet", long]["latency_ms"] / by["retnet", short]["latency_ms"],
        "retnet_memory_growth": by["retnet", long]["memory_bytes"] / by["retnet", short]["memory_bytes"],
        "strongest_baseline": strongest_baseline(rows) if baselines else None,
    }
    for b in baselines:
        out[b] = {
            "latency_growth": by[b, long]["latency_ms"] / by[b, short]["latency_ms"],
            "speedup_by_length": {n: by[b, n]["latency_ms"] / by["retnet", n]["latency_ms"] for n in lengths},
            "memory_growth": by[b, long]["memory_bytes"] / by[b, short]["memory_bytes"],
            "memory_saving_at_longest": 1 - by["retnet", long]["memory_bytes"] / by[b, long]["memory_bytes"],
        }
    return out


# --------------------------------------------------------------------------------------------------
# 3. Training cost (Table 4)
# --------------------------------------------------------------------------------------------------
def block_fields(hidden: int, heads: int, chunk: int) -> dict:
    """What a RetNetBlock reads (``retention.MSR_FIELDS``), taken from a RetNetConfig of that shape.

    Plain values, so that a fresh torch-only process (a training-cost point) can build the block
    without importing transformers.
    """
    from .model import RetNetConfig

    config = RetNetConfig(hidden_size=hidden, num_heads=heads, chunk_size=chunk)
    return {name: getattr(config, name) for name in MSR_FIELDS}


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention with rotation (4 d^2 weights).

    ``fused=True``: ``scaled_dot_product_attention`` (on CPU a fused kernel that never holds the
    T x T probabilities for the backward pass; FlashAttention's role on a GPU). ``fused=False``: the
    unfused (math) form softmax(Q K^T / sqrt(d_k) + causal mask) V, which keeps the T x T scores
    and probabilities for the backward pass: the paper's "Transformer" column of Table 4.
    """

    def __init__(self, hidden_size: int, num_heads: int, fused: bool = True):
        super().__init__()
        self.num_heads, self.fused = num_heads, fused
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, K)
        positions = torch.arange(t, device=x.device)
        q, k = rotate(q, positions), rotate(k, positions)
        if self.fused:
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, K)
        else:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
            causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()  # (T, T)
            y = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # (B, H, T, K)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class TransformerBlock(nn.Module):
    """Pre-LN Transformer block of 12 d^2 weights (attention 4 d^2 + GELU FFN of 4d): RetNet's budget (§2.3)."""

    def __init__(self, hidden_size: int, num_heads: int, fused: bool = True):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.attention = SoftmaxAttention(hidden_size, num_heads, fused)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size, bias=False), nn.GELU(),
                                 nn.Linear(4 * hidden_size, hidden_size, bias=False))

    def forward(self, x):
        y = self.attention(self.attention_norm(x)) + x
        return self.ffn(self.ffn_norm(y)) + y


# Table 4's columns: a RetNet block with parallel / chunkwise retention, a Transformer block with
# fused (SDPA) or unfused (math) softmax attention.
TRAINING_KINDS = ("parallel", "chunkwise", "attention", "attention_unfused")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _training_point(kind: str, length: int, block: dict, batch: int, reps: int, threads: int, seed: int,
                    device: str = "cpu", autocast: torch.dtype | None = None) -> dict:
    """One forward+backward of one block, run in a fresh process: tokens/s and peak extra RSS.

    Peak memory: the kernel's resident high-water mark (VmHWM) is reset (``5`` into
    ``/proc/self/clear_refs``) just before the process's first training step and read after it,
    minus the resident size before it: the step's activations, temporaries and gradients. Throughput
    is timed over ``reps`` further steps.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device(device)
    hidden = block["hidden_size"]
    if kind not in TRAINING_KINDS:
        raise ValueError(f"unknown training-cost kind {kind!r}; known: {', '.join(TRAINING_KINDS)}")
    if kind in ("attention", "attention_unfused"):
        layer = TransformerBlock(hidden, block["num_heads"], fused=kind == "attention")
        run = layer
    else:
        layer = RetNetBlock(types.SimpleNamespace(**block))
        mode = kind  # "parallel" or "chunkwise"

        def run(x):
            return layer(x, mode, None, 0)[0]

    layer.to(device)
    x = torch.randn(batch, length, hidden, device=device, requires_grad=True)
    if device.type == "cuda":  # GPU: the allocator's own peak, in this process
        if autocast is not None:  # the block's matmuls in bf16 (fp32 weights), as the LMs train
            plain, run = run, lambda x: torch.autocast("cuda", dtype=autocast)(plain)(x).float()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run(x).square().mean().backward()
        peak_mib = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        _sync(device)
        step_s = _timed_steps(lambda: run(x).square().mean().backward(), reps, device)
        return {"kind": kind, "length": length, "tokens_per_s": batch * length / statistics.fmean(step_s),
                "peak_mib": peak_mib, "hwm_reset": True, "step_s": step_s}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS counter (Linux >= 4.0)
        hwm_reset = True
    except OSError:
        hwm_reset = False
    before = _rss_kib("VmRSS")
    run(x).square().mean().backward()  # the measured step: the process's first, so nothing is cached yet
    peak = _rss_kib("VmHWM")
    step_s = _timed_steps(lambda: run(x).square().mean().backward(), reps, device)  # after the first, warm, step
    return {"kind": kind, "length": length, "tokens_per_s": batch * length / statistics.fmean(step_s),
            "peak_mib": max(peak - before, 0) / 1024, "hwm_reset": hwm_reset, "step_s": step_s}


def _timed_steps(step, reps: int, device: torch.device) -> list[float]:
    """Seconds of each of ``reps`` calls of ``step`` (each synchronised on GPU)."""
    out = []
    for _ in range(reps):
        begin = time.perf_counter()
        step()
        _sync(device)
        out.append(time.perf_counter() - begin)
    return out


def training_cost(lengths: Sequence[int], hidden: int, heads: int, batch: int, chunk: int, reps: int,
                  threads: int, kinds: Sequence[str] = TRAINING_KINDS, seed: int = 0,
                  device: torch.device | str = "cpu", autocast: torch.dtype | None = None) -> list[dict]:
    """Throughput and peak memory of one training step of one block (12 d^2 weights) vs sequence length.

    On CPU each point runs in a fresh process (spawned), so one point's allocations cannot hide
    another's peak; on GPU ``torch.cuda.max_memory_allocated`` measures it in this process.
    ``kinds``: a RetNet block with ``parallel`` / ``chunkwise`` retention (eqs. 5 and 7), and a
    Transformer block with softmax ``attention`` (fused SDPA) or ``attention_unfused`` (math); all
    blocks have 12 d^2 weights.
    """
    unknown = [k for k in kinds if k not in TRAINING_KINDS]
    if unknown:
        raise ValueError(f"unknown training-cost kind(s) {unknown}; known: {', '.join(TRAINING_KINDS)}")
    rows = []
    device = torch.device(device)
    block = block_fields(hidden, heads, chunk)
    context = multiprocessing.get_context("spawn")
    for length in lengths:
        for kind in kinds:
            if device.type == "cuda":  # max_memory_allocated is per process already
                rows.append(_training_point(kind, length, block, batch, reps, 0, seed, str(device), autocast))
                continue
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                rows.append(pool.submit(_training_point, kind, length, block, batch, reps, threads, seed).result())
    return rows


def log_slope(x0: float, y0: float, x1: float, y1: float) -> float:
    """d log y / d log x between two points: 1 for linear growth, 2 for quadratic."""
    return math.log(y1 / y0) / math.log(x1 / x0)


def training_summary(rows: list[dict]) -> dict:
    """What the Table 4 claims read: memory and throughput at the longest length, memory ratios,
    and each kind's log-log memory slope between the two longest lengths."""
    by = {(r["kind"], r["length"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    short, long = lengths[0], lengths[-1]
    prev = lengths[-2] if len(lengths) > 1 else short
    peak = {k: {n: max(by[k, n]["peak_mib"], 1e-9) for n in lengths} for k in kinds}
    return {
        "shortest": short,
        "longest": long,
        "memory_growth": {k: peak[k][long] / peak[k][short] for k in kinds},
        "memory_at_longest": {k: by[k, long]["peak_mib"] for k in kinds},
        "memory_slope": {k: log_slope(prev, peak[k][prev], long, peak[k][long]) if prev != long else None
                                       for k in kinds},
        "throughput_at_longest": {k: by[k, long]["tokens_per_s"] for k in kinds},
    }


# --------------------------------------------------------------------------------------------------
# 4./5. Small language models (Tables 5 and 6)
# --------------------------------------------------------------------------------------------------
# The text (Corpus, load_corpus, batches) lives in reproduce.retnet.data; re-exported here.
from .data import HUB_SOURCES, Corpus, HubText, batches, load_corpus  # noqa: E402,F401


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy (both model families shift the labels inside)."""
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


@dataclass(frozen=True)
class LMBudget:
    """What every LM run gets: steps x batch x length tokens, warm-up, and the validation windows.

    Validation windows are the non-overlapping ``length``-token windows of the validation text:
    the first ``eval_windows`` give the reported perplexity, the next ``select_windows`` (disjoint)
    choose the learning rate, so the reported number is not the one the choice was made on.
    """

    steps: int
    batch: int
    length: int
    warmup: int
    eval_windows: int
    select_windows: int

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "length", "eval_windows", "select_windows"):
            if getattr(self, name) < 1:
                raise ValueError(f"LMBudget.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup <= self.steps:
            raise ValueError(f"LMBudget.warmup must be in [0, steps={self.steps}], got {self.warmup}")

    def windows_needed(self) -> int:
        return self.eval_windows + self.select_windows


def window_nll(model, ids: np.ndarray, length: int, first: int, count: int, batch: int = 16,
               autocast: torch.dtype | None = None) -> list[float]:
    """Mean next-token NLL (nats) of each of ``count`` non-overlapping windows, from window ``first``.

    Window w covers ``ids[w * length:(w + 1) * length]`` and scores its ``length - 1`` next tokens.
    Runs on the model's device (``autocast``: the dtype of ``torch.autocast`` there, None = fp32);
    the loss is taken in fp32.
    """
    if first < 0 or count < 1:
        raise ValueError(f"need first >= 0 and count >= 1, got first={first}, count={count}")
    available = (ids.size - 1) // length
    if first + count > available:
        raise ValueError(f"validation text has {ids.size} tokens: {available} windows of {length}, "
                         f"fewer than the {first + count} asked for (lower lm_eval_windows/lm_select_windows)")
    device = next(model.parameters()).device
    rows = torch.from_numpy(ids[first * length:(first + count) * length].reshape(count, length)).long()  # (N, T)
    out: list[float] = []
    model.eval()
    amp = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
    with torch.no_grad(), amp:
        for i in range(0, count, batch):
            chunk = rows[i:i + batch].to(device)  # (b, T)
            logits = model(input_ids=chunk).logits[:, :-1].float()  # (b, T-1, vocab)
            nll = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")  # (b, T-1)
            out += nll.mean(-1).tolist()
    return out


def perplexity(model, ids: np.ndarray, length: int, windows: int, batch: int = 8) -> float:
    """exp(mean next-token loss) over the first ``windows`` non-overlapping windows of ``ids``."""
    return math.exp(statistics.fmean(window_nll(model, ids, length, 0, windows, batch)))


@dataclass(frozen=True)
class LMRunOptions:
    """How (not what) an LM run trains: memory, precision, checkpoints. The defaults are the cpu
    profile's (one batch per step, fp32 on CPU, no checkpoints), which give the same numbers.

    - ``micro_batch``: windows per forward/backward on each process (0: its whole share); the
      micro-batches are accumulated into each optimizer step (the same windows: the same gradient;
      ``reproduce.train.accumulation``);
    - ``checkpointing``: activation checkpointing per block (each block's activations are recomputed
      in the backward pass; only the block inputs are kept);
    - ``precision``: the ``precision`` parameter (``auto``: bf16 autocast on a GPU, fp32 on the CPU);
    - ``checkpoint_every``: steps between training checkpoints (0: none) in the row's checkpoint folder;
    - ``log_dir``: training curves (accelerate trackers); ``eval_batch``: windows per validation forward.
    """

    micro_batch: int = 0
    checkpointing: bool = False
    precision: str = "auto"
    checkpoint_every: int = 0
    log_dir: str | None = None
    eval_batch: int = 16


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def enable_checkpointing(model) -> None:
    """Activation checkpointing per block, for either family (transformers' own mechanism)."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False


def train_language_model(train_ids: np.ndarray, valid_ids: np.ndarray, shape: LMShape, variant: str, seed: int,
                         lr: float, budget: LMBudget, device: str = "auto", options: LMRunOptions = LMRunOptions(),
                         checkpoint_dir: str | None = None) -> dict:
    """Train one Table 5/6 row (or the control) with the shared accelerate loop.

    Same budget for every row: ``steps`` x ``batch`` x ``length`` tokens, AdamW (beta2 0.98, weight
    decay 0.01, as in §3.1's setup), linear warm-up over ``budget.warmup`` steps, then linear decay
    to 0. Returns the curve, the per-window validation NLLs and perplexity, and the selection
    windows' perplexity (evaluated once, on the main process, on the model's device).
    ``checkpoint_dir``: where this run checkpoints (every ``options.checkpoint_every`` steps) and
    resumes from.
    """
    from reproduce import distributed, runtime
    from reproduce import train as trainer

    from .model import count_parameters

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    micro, accumulate = trainer.accumulation(budget.batch, options.micro_batch)  # rows per forward over all processes
    where = _resolve_device(device)
    mixed = runtime.mixed_precision(options.precision, where)
    model = build_model(shape, variant, seed)
    if options.checkpointing:
        enable_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm, steps = budget.warmup, budget.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / max(1, warm), max(0.0, (steps - s) / max(1, steps - warm))))
    every = options.checkpoint_every if checkpoint_dir else 0
    cfg = trainer.TrainConfig(steps=steps, grad_accum=accumulate, log_every=max(1, steps // 50),
                              desc=f"{variant} seed {seed} lr {lr:g}", mixed_precision=mixed,
                              checkpoint_every=every, checkpoint_dir=checkpoint_dir if every else None,
                              keep_checkpoints=1, log_dir=options.log_dir)
    accelerator = trainer.make_accelerator(device, mixed_precision=mixed, grad_accum=cfg.grad_accum)
    result = trainer.train(model, optimizer, batches(train_ids, budget.batch, budget.length, seed, micro), lm_loss, cfg,
                           scheduler=scheduler, accelerator=accelerator, tokens_in="input_ids")
    accelerator.free_memory()  # drop the optimizer's state (2 x the weights): evaluation does not need it
    del optimizer
    amp = runtime.autocast_dtype(options.precision, where)

    def evaluate() -> tuple[list[float], list[float]]:
        return (window_nll(model, valid_ids, budget.length, 0, budget.eval_windows, options.eval_batch, amp),
                window_nll(model, valid_ids, budget.length, budget.eval_windows, budget.select_windows,
                           options.eval_batch, amp))

    nll, select = distributed.on_main(evaluate)
    return {"variant": variant, "family": FAMILY[variant], "seed": seed, "lr": lr, "params": count_parameters(model),
            "trainable_params": count_parameters_trainable(model),
            "valid_ppl": math.exp(statistics.fmean(nll)), "select_ppl": math.exp(statistics.fmean(select)),
            "window_nll": [round(x, 5) for x in nll], "final_train_loss": result.final_loss,
            "tokens": steps * budget.batch * budget.length,
            "curve": [{"step": h["step"], "loss": h["loss"]} for h in result.history]}


def count_parameters_trainable(model: nn.Module) -> int:
    """Unique parameters that the optimizer updates (the control's frozen zero projections left out)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


# Worker processes (spawned): each trains one run at a time on one thread, with the token arrays
# handed over once when the worker starts. Their progress bars go to a log file (``log_path``), not
# to the notebook; a failure still reaches the parent through the future.
_WORKER: dict = {}


def _worker_start(train_ids: np.ndarray, valid_ids: np.ndarray, threads: int, log_path: str | None = None) -> None:
    torch.set_num_threads(threads)
    if log_path:
        import sys

        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the worker
        os.dup2(log.fileno(), 2)
        sys.stderr = log
    _WORKER.update(train_ids=train_ids, valid_ids=valid_ids)


def _worker_run(shape: LMShape, variant: str, seed: int, lr: float, budget: LMBudget, options: LMRunOptions,
                checkpoint_dir: str | None) -> dict:
    return train_language_model(_WORKER["train_ids"], _WORKER["valid_ids"], shape, variant, seed, lr, budget, "cpu",
                                options, checkpoint_dir)


def choose_lr(sweep: Sequence[dict]) -> dict[str, float]:
    """Per family: the swept lr whose run has the lowest perplexity on the selection windows (a run
    that diverged, with a non-finite perplexity, never wins)."""
    def score(r: dict) -> float:
        return r["select_ppl"] if math.isfinite(r["select_ppl"]) else math.inf

    best: dict[str, dict] = {}
    for r in sweep:
        if r["family"] not in best or score(r) < score(best[r["family"]]):
            best[r["family"]] = r
    return {family: r["lr"] for family, r in best.items()}


class _NoState:
    """Rows computed and forgotten (no run folder): what a direct call without ``state`` gets."""

    def has_row(self, key: str) -> bool:
        return False

    def row(self, key: str, compute):
        return compute()

    def checkpoint_dir(self, key: str) -> None:
        return None

    def key(self, *parts) -> str:
        return "-".join(map(str, parts))


def run_key(state, variant: str, seed: int, lr: float) -> str:
    """The row key of one (variant, seed, lr) training."""
    return state.key("lm", variant, seed, f"{lr:g}")


def train_language_models(corpus: Corpus, shape: LMShape, variants: Sequence[str], seeds: Sequence[int],
                          lrs: dict[str, Sequence[float]], budget: LMBudget, workers: int = 1,
                          device: str = "auto", options: LMRunOptions = LMRunOptions(), state=None) -> dict:
    """Sweep the lr per family, then train every (variant, seed) at its family's chosen lr.

    The sweep trains each family's own row (Transformer, RetNet, linear attention) on the first seed
    at every lr of ``lrs[family]``; the lowest selection-window perplexity chooses (:func:`choose_lr`). The
    sweep's run at the chosen lr is that row's first-seed run (same seed, same lr: the same run).
    Every row sees the same windows in the same order for a given seed. ``workers`` > 1 trains in
    that many spawned single-threaded processes (CPU; never under several processes: then in this
    one); a family's remaining runs start as soon as its sweep is done. Returns ``{"sweep",
    "chosen_lr", "runs"}``; runs in (variant, seed) order.

    ``state`` (a :class:`reproduce.rundir.RunDir`): each (variant, seed, lr) training is one of its
    rows (:func:`run_key`), checkpointing into the row's checkpoint folder; a rerun reads the finished
    rows back and continues an unfinished one from its last checkpoint. Workers are given the folder's
    path; their results are stored by this process.
    """
    from reproduce import distributed

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    families = list(dict.fromkeys(FAMILY[v] for v in variants))  # each family's own row is its namesake
    if not seeds or any(not lrs.get(f) for f in families):
        raise ValueError(f"train_language_models needs at least one seed and one learning rate per family "
                         f"({', '.join(families)}); got seeds {list(seeds)}, lrs {dict(lrs)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    available = (corpus.valid_ids.size - 1) // budget.length
    if budget.windows_needed() > available:
        raise ValueError(f"validation text has {available} windows of {budget.length} tokens, fewer than "
                         f"lm_eval_windows + lm_select_windows = {budget.windows_needed()}")
    if distributed.world_size() > 1:
        workers = 1  # every process trains its share of each batch in process
    state = state if state is not None else _NoState()
    first = seeds[0]
    sweep_jobs = [(family, first, lr) for family in families for lr in lrs[family]]
    rest_jobs = {family: [(v, s) for v in variants if FAMILY[v] == family for s in seeds
                          if not (v == family and s == first)] for family in families}
    done: dict[tuple[str, int, float], dict] = {}
    chosen: dict[str, float] = {}
    from tqdm.auto import tqdm

    total = len(sweep_jobs) + sum(len(j) for j in rest_jobs.values())
    progress = tqdm(total=total, desc="language models")

    def in_process(job):
        key = run_key(state, *job)
        directory = state.checkpoint_dir(key)
        return state.row(key, lambda: train_language_model(corpus.train_ids, corpus.valid_ids, shape, *job, budget,
                                                           device, options, str(directory) if directory else None))

    if workers == 1:
        for job in sweep_jobs:
            done[job] = in_process(job)
            progress.update(1)
        chosen = choose_lr([done[j] for j in sweep_jobs])
        for family in families:
            for v, s in rest_jobs[family]:
                done[v, s, chosen[family]] = in_process((v, s, chosen[family]))
                progress.update(1)
    else:
        context = multiprocessing.get_context("spawn")
        log_path = str(Path(options.log_dir) / "workers.log") if options.log_dir else os.devnull
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                                                    initargs=(corpus.train_ids, corpus.valid_ids, 1, log_path)) as pool:
            pending: dict = {}
            left = {family: len(lrs[family]) for family in families}

            def finished(job, result):
                done[job] = state.row(run_key(state, *job), lambda: result)  # stored by this process
                progress.update(1)
                if job in sweep_jobs:  # (family's own row, first seed, lr)
                    family = job[0]
                    left[family] -= 1
                    if not left[family]:  # this family's sweep is complete: choose, start its runs
                        chosen[family] = choose_lr([done[j] for j in sweep_jobs if j[0] == family])[family]
                        for v, s in rest_jobs[family]:
                            start((v, s, chosen[family]))

            def start(job):
                key = run_key(state, *job)
                if state.has_row(key):  # finished by an earlier, interrupted run
                    finished(job, None)
                    return
                directory = state.checkpoint_dir(key)
                pending[pool.submit(_worker_run, shape, *job, budget, options,
                                    str(directory) if directory else None)] = job

            # the family with the most runs waiting on its sweep goes first, so the short ones fill the tail
            for job in sorted(sweep_jobs, key=lambda job: -len(rest_jobs[job[0]])):
                start(job)
            while pending:
                ready, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in ready:
                    finished(pending.pop(future), future.result())
    progress.close()
    sweep = [done[j] for j in sweep_jobs]
    runs = [done[v, s, chosen[FAMILY[v]]] for v in variants for s in seeds]
    return {"sweep": sweep, "chosen_lr": chosen, "runs": runs}


def lm_table(runs: list[dict]) -> list[dict]:
    """One row per variant: mean validation PPL over seeds with its t interval (unpaired: a row on
    its own), min and max, the lr it trained at (the paper's numbers: ``sections.PAPER``)."""
    from reproduce import claims

    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        ppl = [r["valid_ppl"] for r in mine]
        mean = claims.t_interval(ppl)
        rows.append({"variant": variant, "label": LABELS[variant], "lr": mine[0]["lr"],
                     "ppl_mean": mean.value, "ppl_low": mean.low, "ppl_high": mean.high,
                     "ppl_min": min(ppl), "ppl_max": max(ppl), "seeds": len(ppl), "params": mine[0]["params"]})
    return rows
