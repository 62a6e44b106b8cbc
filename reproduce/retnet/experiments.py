"""The RetNet notebook's measurements: forms agree, inference cost, training cost, small LMs.

Each function returns plain data (lists of row dicts) that :mod:`reproduce.retnet.sections` records with
``run.record`` and the figure functions in :mod:`reproduce.retnet.plots` read back. Nothing here
plots or writes files.

Sections (notebook section -> paper artifact):
1. :func:`forms_agree` — §2.1 eqs. (5)-(7): parallel == recurrent == chunkwise.
2. :func:`decode_cost` — Figure 6: per-token latency and memory of decoding vs length.
3. :func:`training_cost` — Table 4: training throughput and peak memory vs length.
4./5. :func:`train_language_models` — Tables 5 and 6: validation perplexity of small LMs.

Deviations from the paper (scale): models of a few hundred thousand parameters trained for a few
hundred steps on seven public-domain novels instead of 200M-6.7B models on 100B tokens; CPU
instead of A100 GPUs; training cost is measured on one block of equal weights (RetNet block vs
Transformer block) rather than whole models, with peak memory read from a fresh process per point.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import statistics
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from reproduce.configs.retnet import VARIANTS as _ROWS

from .retention import MSR_FIELDS, MultiScaleRetention, RetentionState, RetNetBlock, rotate

# --------------------------------------------------------------------------------------------------
# The compared models
# --------------------------------------------------------------------------------------------------
# Table 5/6 rows, from their one declaration (reproduce.configs.retnet.VARIANTS).
VARIANTS: dict[str, dict | None] = {name: overrides for name, (_, _, overrides) in _ROWS.items()}
LABELS: dict[str, str] = {name: label for name, (_, label, _) in _ROWS.items()}
TABLE5 = tuple(name for name, (table, _, _) in _ROWS.items() if table == "Table 5")
ABLATIONS = tuple(name for name, (table, _, _) in _ROWS.items() if table == "Table 6")


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


def _retnet_cache_at(model, batch: int, length: int, device: torch.device):
    """A RetNetCache as after ``length`` tokens (random state: the cost of a step does not depend on it)."""
    from .model import RetNetCache

    c = model.config
    cache = RetNetCache(c.num_hidden_layers)
    for i in range(c.num_hidden_layers):
        cache.layers[i] = RetentionState(torch.randn(batch, c.num_heads, c.key_dim, c.value_dim, device=device),
                                         torch.randn(batch, c.num_heads, c.key_dim, device=device))
    cache.seen_tokens = length
    return cache


def _kv_cache_at(model, batch: int, length: int, device: torch.device):
    """A transformers DynamicCache holding ``length`` random keys/values per layer."""
    from transformers import DynamicCache

    c = model.config
    cache = DynamicCache(config=c)
    head_dim = c.hidden_size // c.num_attention_heads
    for i in range(c.num_hidden_layers):
        shape = (batch, c.num_key_value_heads, length, head_dim)  # (B, H, S, K)
        cache.update(torch.randn(shape, device=device), torch.randn(shape, device=device), i)
    return cache


def _kv_bytes(cache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def decode_cost(shape: LMShape, lengths: Sequence[int], batch: int, steps: int, warmup: int = 2,
                device: torch.device | str = "cpu") -> list[dict]:
    """Per-token decode latency (median of ``steps``; every step's time in ``step_ms``, in round order)
    and state/cache bytes after ``length`` tokens.

    RetNet decodes with its recurrent state (eq. 6); the Transformer with transformers' KV cache
    (SDPA). Both are untrained (cost does not depend on the weights) and see random context.
    The steps are interleaved: each round times one step of every (model, length) point, so a busy
    neighbour on a shared machine slows all points alike instead of whichever was running.
    """
    device = torch.device(device)
    models = {"retnet": (build_model(shape, "retnet", seed=0).to(device).eval(), _retnet_cache_at),
              "transformer": (build_model(shape, "transformer", seed=0).to(device).eval(), _kv_cache_at)}
    points = [(name, length) for length in lengths for name in models]
    caches, tokens, memory = {}, {}, {}
    for name, length in points:
        model, make = models[name]
        caches[name, length] = make(model, batch, length, device)
        cache = caches[name, length]
        memory[name, length] = cache.nbytes if name == "retnet" else _kv_bytes(cache)  # before decoding
        tokens[name, length] = torch.randint(0, shape.vocab_size, (batch, 1), device=device)
    times = {point: [] for point in points}
    with torch.inference_mode():
        for step in range(warmup + steps):
            for name, length in points:
                model, cache, token = models[name][0], caches[name, length], tokens[name, length]
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
    return [{"model": name, "length": length, "batch": batch, "latency_ms": 1000 * statistics.median(times[name, length]),
             "step_ms": [1000 * t for t in times[name, length]], "memory_bytes": memory[name, length]}
            for name, length in points]


def decode_summary(rows: list[dict]) -> dict:
    """Ratios the Figure 6 claims read: RetNet flatness, Transformer/RetNet at the longest length."""
    by = {(r["model"], r["length"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    short, long = lengths[0], lengths[-1]
    return {
        "shortest": short,
        "longest": long,
        "retnet_latency_growth": by["retnet", long]["latency_ms"] / by["retnet", short]["latency_ms"],
        "transformer_latency_growth": by["transformer", long]["latency_ms"] / by["transformer", short]["latency_ms"],
        "speedup_at_longest": by["transformer", long]["latency_ms"] / by["retnet", long]["latency_ms"],
        "retnet_memory_growth": by["retnet", long]["memory_bytes"] / by["retnet", short]["memory_bytes"],
        "transformer_memory_growth": by["transformer", long]["memory_bytes"] / by["transformer", short]["memory_bytes"],
        "memory_saving_at_longest": 1 - by["retnet", long]["memory_bytes"] / by["transformer", long]["memory_bytes"],
    }


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
    """Causal multi-head softmax attention with rotation, via ``scaled_dot_product_attention`` (4 d^2)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=False)
        self.out = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, K)
        positions = torch.arange(t, device=x.device)
        q, k = rotate(q, positions), rotate(k, positions)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, K)
        return self.out(y.transpose(1, 2).reshape(b, t, d))  # (B, T, D)


class TransformerBlock(nn.Module):
    """Pre-LN Transformer block of 12 d^2 weights (attention 4 d^2 + GELU FFN of 4d): RetNet's budget (§2.3)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.attention = SoftmaxAttention(hidden_size, num_heads)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(nn.Linear(hidden_size, 4 * hidden_size, bias=False), nn.GELU(),
                                 nn.Linear(4 * hidden_size, hidden_size, bias=False))

    def forward(self, x):
        y = self.attention(self.attention_norm(x)) + x
        return self.ffn(self.ffn_norm(y)) + y


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _training_point(kind: str, length: int, block: dict, batch: int, reps: int, threads: int, seed: int,
                    device: str = "cpu") -> dict:
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
    if kind == "attention":
        layer = TransformerBlock(hidden, block["num_heads"])
        run = layer
    else:
        layer = RetNetBlock(types.SimpleNamespace(**block))
        mode = kind  # "parallel" or "chunkwise"

        def run(x):
            return layer(x, mode, None, 0)[0]

    layer.to(device)
    x = torch.randn(batch, length, hidden, device=device, requires_grad=True)
    if device.type == "cuda":  # GPU: the allocator's own peak, in this process
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
                  threads: int, kinds: Sequence[str] = ("parallel", "chunkwise", "attention"), seed: int = 0,
                  device: torch.device | str = "cpu") -> list[dict]:
    """Throughput and peak memory of one training step of one block (12 d^2 weights) vs sequence length.

    On CPU each point runs in a fresh process (spawned), so one point's allocations cannot hide
    another's peak; on GPU ``torch.cuda.max_memory_allocated`` measures it in this process.
    ``kinds``: a RetNet block with ``parallel`` / ``chunkwise`` retention (eqs. 5 and 7), and a
    Transformer block with softmax ``attention`` (SDPA); both blocks have 12 d^2 weights.
    """
    rows = []
    device = torch.device(device)
    block = block_fields(hidden, heads, chunk)
    context = multiprocessing.get_context("spawn")
    for length in lengths:
        for kind in kinds:
            if device.type == "cuda":  # max_memory_allocated is per process already
                rows.append(_training_point(kind, length, block, batch, reps, 0, seed, str(device)))
                continue
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                rows.append(pool.submit(_training_point, kind, length, block, batch, reps, threads, seed).result())
    return rows


def training_summary(rows: list[dict]) -> dict:
    """Ratios the Table 4 claims read, at the longest length and between the shortest and longest."""
    by = {(r["kind"], r["length"]): r for r in rows}
    lengths = sorted({r["length"] for r in rows})
    short, long = lengths[0], lengths[-1]
    growth = {k: by[k, long]["peak_mib"] / max(by[k, short]["peak_mib"], 1e-9) for k in ("parallel", "chunkwise", "attention")}
    return {
        "shortest": short,
        "longest": long,
        "memory_growth": growth,
        "memory_at_longest": {k: by[k, long]["peak_mib"] for k in ("parallel", "chunkwise", "attention")},
        "throughput_at_longest": {k: by[k, long]["tokens_per_s"] for k in ("parallel", "chunkwise", "attention")},
    }


# --------------------------------------------------------------------------------------------------
# 4./5. Small language models (Tables 5 and 6)
# --------------------------------------------------------------------------------------------------
@dataclass
class Corpus:
    """Token ids of the training text (one stream) and the validation text, with the tokenizer."""

    tokenizer: object
    train_ids: np.ndarray
    valid_ids: np.ndarray
    source: str

    def describe(self) -> dict:
        return {"source": self.source, "vocab_size": self.tokenizer.get_vocab_size(),
                "train_tokens": int(self.train_ids.size), "valid_tokens": int(self.valid_ids.size)}


HUB_DATASETS = {"wikitext-103": ("Salesforce/wikitext", "wikitext-103-raw-v1")}  # gpu profile (needs the hub)


def load_corpus(vocab_size: int, source: str = "novels", fraction: float = 1.0, hub_docs: int = 200_000) -> Corpus:
    """The packaged novels (document-level split: reproduce.data.novels) or a hub text dataset, with a
    BPE tokenizer trained on the training split only (``tokenizers`` library).

    ``fraction`` < 1 keeps the first part of each training book (the smoke profile's short cut).
    """
    from reproduce.data import text

    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if source == "novels":
        from reproduce.data import novels

        split = novels.splits()
        train_texts = [b.text[: max(1, int(len(b.text) * fraction))] for b in split.train]
        valid_texts = [b.text for b in split.valid]
        keys = [f"novels-{b.key}-{fraction:g}" for b in split.train], [f"novels-{b.key}" for b in split.valid]
    elif source in HUB_DATASETS:  # the first 1% of the documents validate, the rest train
        import itertools

        dataset_id, name = HUB_DATASETS[source]
        docs = [d for d in itertools.islice(text.hub_dataset(dataset_id, name), hub_docs) if d.strip()]
        docs = docs[: max(2, int(len(docs) * fraction))]
        cut = max(1, len(docs) // 100)
        train_texts, valid_texts = ["\n".join(docs[cut:])], ["\n".join(docs[:cut])]
        keys = [f"{source}-train"], [f"{source}-valid"]
    else:
        raise ValueError(f"unknown text source {source!r}; expected 'novels' or one of {sorted(HUB_DATASETS)}")
    tokenizer = text.train_bpe_tokenizer(train_texts, vocab_size, cache_key=f"retnet-{source}-{fraction:g}")
    eot = tokenizer.token_to_id(text.END_OF_TEXT)

    def stream(texts, cache_keys):
        parts = []
        for t, key in zip(texts, cache_keys):
            parts += [text.encode_cached(tokenizer, t, cache_key=key), np.array([eot])]
        return np.concatenate(parts)

    return Corpus(tokenizer, stream(train_texts, keys[0]), stream(valid_texts, keys[1]), source)


def batches(ids: np.ndarray, batch: int, length: int, seed: int) -> Iterator[dict]:
    """Endless global batches of random windows of ``length`` tokens (same seed, same batches)."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, ids.size - length, size=batch)
        window = np.stack([ids[s:s + length] for s in starts])  # (B, T)
        yield {"input_ids": torch.from_numpy(window).long()}


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy (both model families shift the labels inside)."""
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


def perplexity(model, ids: np.ndarray, length: int, windows: int, batch: int = 8) -> float:
    """exp(mean next-token loss) over the first ``windows`` non-overlapping windows of ``ids``."""
    n = min(windows, (ids.size - 1) // length)
    if n < 1:
        raise ValueError(f"validation text has {ids.size} tokens, fewer than one window of {length}")
    rows = torch.from_numpy(ids[: n * length].reshape(n, length)).long()  # (N, T)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            chunk = rows[i:i + batch]
            loss = lm_loss(model, {"input_ids": chunk})
            total += loss.item() * chunk.shape[0] * (length - 1)
            count += chunk.shape[0] * (length - 1)
    return math.exp(total / count)


def train_language_model(corpus: Corpus, shape: LMShape, variant: str, seed: int, steps: int, batch: int,
                         length: int, lr: float, eval_windows: int, device: str = "auto", warmup: float = 0.1) -> dict:
    """Train one Table 5/6 row with the shared accelerate loop; returns its curve and validation PPL.

    Same budget for every row: ``steps`` x ``batch`` x ``length`` tokens, AdamW (beta2 0.98, weight
    decay 0.01, as in §3.1's setup), linear warm-up then linear decay to 0.
    """
    from reproduce import train as trainer

    from .model import count_parameters

    model = build_model(shape, variant, seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, int(warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    cfg = trainer.TrainConfig(steps=steps, log_every=max(1, steps // 20), desc=f"{variant} seed {seed}")
    result = trainer.train(model, optimizer, batches(corpus.train_ids, batch, length, seed), lm_loss, cfg,
                           scheduler=scheduler, accelerator=trainer.make_accelerator(device), tokens_in="input_ids")
    model = model.cpu().float()
    ppl = perplexity(model, corpus.valid_ids, length, eval_windows)
    return {"variant": variant, "seed": seed, "params": count_parameters(model), "valid_ppl": ppl,
            "final_train_loss": result.final_loss, "tokens": steps * batch * length,
            "curve": [{"step": h["step"], "loss": h["loss"]} for h in result.history]}


def train_language_models(corpus: Corpus, shape: LMShape, variants: Sequence[str], seeds: Sequence[int], **kwargs) -> list[dict]:
    """Every (variant, seed) run, same data order per seed, same budget."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    return [train_language_model(corpus, shape, v, s, **kwargs) for v in variants for s in seeds]


def lm_table(runs: list[dict]) -> list[dict]:
    """One row per variant: mean and spread of validation PPL over seeds (the paper's: ``sections.PAPER``)."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        ppl = [r["valid_ppl"] for r in runs if r["variant"] == variant]
        rows.append({"variant": variant, "label": LABELS[variant],
                     "ppl_mean": statistics.fmean(ppl), "ppl_min": min(ppl), "ppl_max": max(ppl), "seeds": len(ppl),
                     "params": next(r["params"] for r in runs if r["variant"] == variant)})
    return rows
