"""The RetNet notebook's measurements of sections 1-3 (arXiv:2307.08621): the forms agree, inference
cost, training cost.

Each function returns plain data (lists of row dicts) that :mod:`reproduce.retnet.sections` records
with ``run.record`` and the figure functions in :mod:`reproduce.retnet.plots` read back. Nothing
here plots, writes files or claims.

1. :func:`forms_agree` — §2.1 eqs. (5)-(7): parallel == recurrent == chunkwise.
2. :func:`decode_cost` — Figure 6: per-token latency and memory of decoding vs length (RetNet's
   state vs transformers' StaticCache and DynamicCache); :func:`decode_summary`; the bytes a step
   moves (:func:`decode_bytes_per_step`), the model the Figure 6 bars are derived from.
3. :func:`training_cost` — Table 4: training throughput and peak memory vs length (parallel and
   chunkwise retention, fused and unfused softmax attention); :func:`training_summary`.

Deviations from the paper (scale): small models on a CPU (cpu profile: width 512, 2 layers for
decoding; one width-256 block for training) instead of 1.3B-6.7B models on A100 GPUs; training cost
is measured on one block of equal weights (RetNet block vs Transformer block) rather than whole
models, with peak memory read from a fresh process per point.

Imports torch only at the top (transformers inside the functions that need it): the fresh process
of a training-cost point imports this module, :mod:`.baselines` and :mod:`.retention`, not transformers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from .baselines import LMShape, TransformerBlock, build_model, retnet_config
from .retention import MultiScaleRetention, RetentionConfig, RetentionState, RetNetBlock


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
                if isinstance(m, MultiScaleRetention):  # the chunk size the chunkwise form reads (eq. 7)
                    m.config = dataclasses.replace(m.config, chunk_size=chunk)
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
                dtype: torch.dtype = torch.float32,
                retnet_variants: Mapping[str, Callable[[], contextlib.AbstractContextManager]] | None = None) -> list[dict]:
    """Per-token decode latency (median of ``steps``; every step's time in ``step_ms``, in round order)
    and state/cache bytes after ``length`` tokens.

    RetNet decodes with its recurrent state (eq. 6); the Transformer (SDPA attention) with
    transformers' ``StaticCache`` (preallocated, updated in place: its fastest cache on CPU, see
    ``benchmarks/retnet_decode.py``) and with ``DynamicCache`` (its default). All are untrained
    (cost does not depend on the weights) and see random context. The steps are interleaved: each
    round times one step of every (decoder, length) point, so a busy neighbour on a shared machine
    slows all points alike instead of whichever was running. ``dtype``: of the weights, states and
    caches (bf16 on a GPU under ``precision='auto'``; the byte counts scale with it).
    ``retnet_variants``: further RetNet rows, name -> a context entered around each of their steps
    (outside the timed region), interleaved with the others: ``benchmarks/retnet_decode.py`` times the
    previous implementation of the recurrent step this way, in the same run as the current one.
    """
    variants = dict(retnet_variants or {})
    clash = [v for v in variants if v in DECODERS]
    if clash:
        raise ValueError(f"retnet_variants {clash} reuse decoder names; known decoders: {', '.join(DECODERS)}")
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown:
        raise ValueError(f"unknown decoder(s) {unknown}; known: {', '.join(DECODERS)}")
    device = torch.device(device)
    models = {row: build_model(shape, row, seed=0, dtype=dtype).to(device).eval() for row in dict.fromkeys(DECODERS[d][0] for d in decoders)}
    if variants and "retnet" not in models:
        models["retnet"] = build_model(shape, "retnet", seed=0, dtype=dtype).to(device).eval()
    kinds = {**{d: DECODERS[d] for d in decoders}, **{v: ("retnet", "recurrent state") for v in variants}}
    points = [(name, length) for length in lengths for name in kinds]
    caches, tokens, memory = {}, {}, {}
    for name, length in points:
        model = models[kinds[name][0]]
        if kinds[name][0] == "retnet":
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
                model, cache, token = models[kinds[name][0]], caches[name, length], tokens[name, length]
                with variants.get(name, contextlib.nullcontext)():
                    _sync(device)
                    begin = time.perf_counter()
                    if kinds[name][0] == "retnet":
                        out = model(token, cache=cache, use_cache=True, mode="recurrent")
                    else:
                        out = model(input_ids=token, cache=cache, use_cache=True)
                    tokens[name, length] = out.logits[:, -1:].argmax(-1)  # (B, 1)
                    _sync(device)
                    elapsed = time.perf_counter() - begin
                if step >= warmup:
                    times[name, length].append(elapsed)
    return [{"model": name, "cache": kinds[name][1], "length": length, "batch": batch,
             "latency_ms": 1000 * statistics.median(times[name, length]),
             "step_ms": [1000 * t for t in times[name, length]], "memory_bytes": memory[name, length]}
            for name, length in points]


def decode_bytes_per_step(shape: LMShape, batch: int, length: int, decoder: str, room: int = 0,
                          element_bytes: int = 4) -> int:
    """Bytes one decode step must move through memory: the bytes model of the Figure 6 bars.

    Compulsory traffic only, each byte counted once (caches, fixed per-op costs and arithmetic left out):
    - weights, read once by every decoder: ``12 d^2`` per block (§2.3; the Transformer rows have the
      same, ``baselines``) and the tied output projection ``vocabulary x d`` (one embedding row: negligible);
    - ``retnet``: its state (``S``: ``H x K x V`` and ``z``: ``H x K`` per layer and sequence, eq. 6) read
      once and written once, whatever ``length``;
    - ``transformer_static``: every key and value slot of the StaticCache read once (SDPA reads all
      ``length + room`` preallocated slots under a mask; writing one token's key/value is negligible);
    - ``transformer_dynamic``: the keys and values read once, plus the copy ``torch.cat`` makes of them
      every step (read and written): three times the cache.
    """
    d, layers = shape.hidden_size, shape.num_layers
    weights = layers * 12 * d * d + shape.vocab_size * d
    if decoder == "retnet":
        key_dim = d // shape.num_heads
        value_dim = 2 * key_dim  # value_factor 2 (§2.3), as retnet_config builds it
        moved = 2 * layers * batch * shape.num_heads * key_dim * (value_dim + 1)
    elif decoder == "transformer_static":
        moved = layers * 2 * batch * (length + room) * d  # keys and values, (B, H, S, K) each per layer
    elif decoder == "transformer_dynamic":
        moved = 3 * layers * 2 * batch * length * d
    else:
        raise ValueError(f"unknown decoder {decoder!r}; known: {', '.join(DECODERS)}")
    return element_bytes * (weights + moved)


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
# Table 4's columns: a RetNet block with parallel / chunkwise retention, a Transformer block with
# fused (SDPA) or unfused (math) softmax attention.
TRAINING_KINDS = ("parallel", "chunkwise", "attention", "attention_unfused")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _training_point(kind: str, length: int, block: RetentionConfig, batch: int, reps: int, threads: int, seed: int,
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
    hidden = block.hidden_size
    if kind not in TRAINING_KINDS:
        raise ValueError(f"unknown training-cost kind {kind!r}; known: {', '.join(TRAINING_KINDS)}")
    if kind in ("attention", "attention_unfused"):
        layer = TransformerBlock(hidden, block.num_heads, fused=kind == "attention")
        run = layer
    else:
        layer = RetNetBlock(block)
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
    if not reps:  # the memory only: training_cost times the points interleaved, in another process
        return {"kind": kind, "length": length, "peak_mib": max(peak - before, 0) / 1024, "hwm_reset": hwm_reset}
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

    On CPU each point's peak memory is measured in a fresh process (:func:`_in_fresh_process`), so one
    point's allocations cannot hide another's peak; the timing then runs in one further process,
    ``reps`` rounds interleaved over every point (:func:`_interleaved_steps`: a machine that slows down
    for a while slows every kernel's same round, so the rounds pair the kernels). On GPU
    ``torch.cuda.max_memory_allocated`` measures the peak in this process and the steps are timed there.
    ``kinds``: a RetNet block with ``parallel`` / ``chunkwise`` retention (eqs. 5 and 7; its
    :class:`RetentionConfig` is the paper's at this width, heads and chunk), and a Transformer block
    with softmax ``attention`` (fused SDPA) or ``attention_unfused`` (math); all blocks have 12 d^2 weights.
    """
    unknown = [k for k in kinds if k not in TRAINING_KINDS]
    if unknown:
        raise ValueError(f"unknown training-cost kind(s) {unknown}; known: {', '.join(TRAINING_KINDS)}")
    rows = []
    device = torch.device(device)
    block = RetentionConfig(hidden_size=hidden, num_heads=heads, chunk_size=chunk)
    for length in lengths:
        for kind in kinds:
            if device.type == "cuda":  # max_memory_allocated is per process already
                rows.append(_training_point(kind, length, block, batch, reps, 0, seed, str(device), autocast))
            else:
                rows.append(_in_fresh_process(_training_point, kind, length, block, batch, 0, threads, seed))
    if device.type != "cuda":
        points = [(r["kind"], r["length"]) for r in rows]
        timed = _in_fresh_process(_interleaved_steps, points, block, batch, reps, threads, seed)
        for r, step_s in zip(rows, timed):
            r.update(step_s=step_s, tokens_per_s=batch * r["length"] / statistics.fmean(step_s), timing="interleaved")
    return rows


def _training_step(kind: str, length: int, block: RetentionConfig, batch: int, device: torch.device):
    """One forward+backward of one block of ``kind`` on a fixed random input (a closure)."""
    hidden = block.hidden_size
    if kind not in TRAINING_KINDS:
        raise ValueError(f"unknown training-cost kind {kind!r}; known: {', '.join(TRAINING_KINDS)}")
    if kind in ("attention", "attention_unfused"):
        layer = TransformerBlock(hidden, block.num_heads, fused=kind == "attention").to(device)
        run = layer
    else:
        layer = RetNetBlock(block).to(device)

        def run(x, mode=kind):  # "parallel" or "chunkwise"
            return layer(x, mode, None, 0)[0]

    x = torch.randn(batch, length, hidden, device=device, requires_grad=True)
    return lambda: run(x).square().mean().backward()


def _interleaved_steps(points: Sequence[tuple[str, int]], block: RetentionConfig, batch: int, reps: int,
                       threads: int, seed: int) -> list[list[float]]:
    """Seconds of ``reps`` steps of every (kind, length) point, in rounds: round r times one step of each
    point in turn (after one untimed warm-up step each), so rounds pair the points (design.md: >= 5
    interleaved repetitions). Run in a fresh process on the CPU."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    device = torch.device("cpu")
    steps = [_training_step(kind, length, block, batch, device) for kind, length in points]
    for step in steps:
        step()  # warm-up: allocator and kernels
    out: list[list[float]] = [[] for _ in points]
    for _ in range(reps):
        for i, step in enumerate(steps):
            out[i] += _timed_steps(step, 1, device)
    return out


def _in_fresh_process(fn, *args):
    """``fn(*args)`` in a process of its own, spawned for this call and ended after it.

    Not :class:`reproduce.pool.Pool`: a pool's workers run job after job (and with one worker it runs
    them here), but a peak-RSS reading is only the point's own in a process that no earlier point
    has allocated in. The process imports this module and ``retention`` (torch, no transformers).
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as process:
        return process.submit(fn, *args).result()


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


