"""``python -m reproduce plan retnet --profile gpu``: parameters, peak memory, FLOPs, GPU-hours per section.

- **Training steps** (Table 4's blocks, Tables 5/6's LMs) are measured with
  :func:`reproduce.plan.step_cost` on the *meta* device at the real shapes: FLOPs by
  ``FlopCounterMode`` (forward + backward), activations as the bytes autograd saves, in fp32 (an
  upper bound for bf16 autocast; SDPA counts the math kernel's ``T x T`` weights, an upper bound for
  the fused kernels of a GPU).
- **Activation checkpointing** (``lm_checkpointing``) is a formula on those measurements
  (:func:`lm_activation_bytes`): the whole model's saved bytes, less every block's, plus each
  block's input (what the checkpoint keeps), plus one block's saved bytes (its recomputation in the
  backward pass). Recomputation adds one forward of the blocks to the FLOPs (x 4/3).
- **Peak of an LM step** = fp32 weights, gradients and AdamW moments of the trained parameters
  (16 bytes each) + the activations of one micro-batch (``lm_micro_batch``) + the logits' gradient
  (micro x T x vocab x 4 bytes), and ``reproduce.plan``'s memory terms: the fp32 copy of the logits
  (micro x T x vocab x 4 bytes), autocast's bf16 weight copies, DDP's buckets, the CUDA context.
- **Decoding** (Figure 6) is a formula: both models' weights and every (length, cache) point's cache
  at once (``decode_cost`` holds them all to interleave the timings), in the dtype of ``precision``
  (bf16 on a GPU); its FLOPs are 2 per weight per token plus attention over the cache; its time is
  launch-bound (``DECODE_STEP_S`` per step and point).

``tests/test_gpu_retnet.py`` checks meta against real CPU tensors, and the checkpointing formula
against a CPU measurement of the bytes a checkpointed step keeps.
"""

from __future__ import annotations

import dataclasses

import torch

from reproduce import plan as P
from reproduce import runtime

from . import baselines
from .costs import DECODERS, TRAINING_KINDS
from .retention import RetentionConfig, RetNetBlock

WIKITEXT103_BYTES = 0.32e9  # Salesforce/wikitext wikitext-103-raw-v1 parquet: train 2 files ~ 310 MB, valid/test ~ 0.7 MB each
DECODE_STEP_S = 0.03  # ours: one launch-bound decode step of a 24-layer model (tens of kernels per layer)
DECODE_WARMUP = 2  # costs.decode_cost's warm-up steps


def _zeros(*shape, dtype=torch.long):
    return torch.zeros(*shape, dtype=dtype, device="meta")


def lm_shape(params) -> baselines.LMShape:
    return baselines.LMShape(vocab_size=params.lm_vocab, hidden_size=params.lm_hidden, num_layers=params.lm_layers,
                      num_heads=params.lm_heads, gamma_schedule=params.gamma_schedule, head_norm=params.head_norm)


def _build(shape: baselines.LMShape, variant: str):
    from transformers import LlamaForCausalLM

    from .model import RetNetForCausalLM

    if baselines.ARCHITECTURE[variant] == "transformer":
        return LlamaForCausalLM._from_config(baselines.transformer_config(shape), attn_implementation="sdpa")
    if baselines.ARCHITECTURE[variant] == "linear_transformer":
        return baselines.LinearTransformerForCausalLM(shape)
    return RetNetForCausalLM(baselines.retnet_config(shape, variant))  # the control's out_proj frozen by its MSR


def _lm_step(batch: int, length: int):
    def run(model):
        ids = _zeros(batch, length)
        return model(input_ids=ids, labels=ids).loss

    return run


def _block(shape: baselines.LMShape, variant: str):
    """One block of the variant (what a checkpoint recomputes), with its run at (micro, T, D)."""
    if baselines.ARCHITECTURE[variant] == "linear_transformer":
        def build_linear():
            return baselines.linear_transformer_block(shape.hidden_size, shape.num_heads)

        def run_linear_at(batch, length):
            def run(m):
                x = torch.zeros(batch, length, shape.hidden_size, device="meta", requires_grad=True)
                return m(x).square().mean()
            return run
        return build_linear, run_linear_at
    if baselines.ARCHITECTURE[variant] == "transformer":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        cfg = baselines.transformer_config(shape)
        cfg._attn_implementation = "sdpa"

        def build():
            return torch.nn.ModuleDict({"layer": LlamaDecoderLayer(cfg, 0), "rope": LlamaRotaryEmbedding(cfg)})

        def run_at(batch, length):
            def run(m):
                x = torch.zeros(batch, length, shape.hidden_size, device="meta", requires_grad=True)
                pos = torch.arange(length, device="meta")[None]
                out = m["layer"](x, position_embeddings=m["rope"](x, pos), attention_mask=None, position_ids=pos)
                out = out[0] if isinstance(out, tuple) else out
                return out.float().square().mean()
            return run
        return build, run_at
    config = baselines.retnet_config(shape, variant)

    def build():
        return RetNetBlock(config.retention)

    def run_at(batch, length):
        def run(m):
            x = torch.zeros(batch, length, shape.hidden_size, device="meta", requires_grad=True)
            return m(x, config.forward_mode, None, 0)[0].square().mean()
        return run
    return build, run_at


def lm_activation_bytes(shape: baselines.LMShape, variant: str, micro: int, length: int, checkpointing: bool) -> tuple[float, P.StepCost]:
    """Bytes one micro-batch's step keeps for backward (with checkpointing: at the peak, while one block is
    recomputed), and the whole model's meta step cost."""
    full = P.step_cost(lambda: _build(shape, variant), _lm_step(micro, length))
    if not checkpointing:
        return full.saved_bytes, full
    build, run_at = _block(shape, variant)
    block = P.step_cost(build, run_at(micro, length))
    stream = micro * length * shape.hidden_size * 4  # one (micro, T, D) fp32 tensor
    # the block's run saves its output once more (for .square()), which the model's step does not
    per_block = block.saved_bytes - stream
    # each checkpoint keeps its block's input; one block is recomputed (its saved bytes) in backward
    kept = full.saved_bytes - shape.num_layers * per_block + shape.num_layers * stream + per_block
    return kept, full


def lm_step(params, variant: str) -> tuple[float, P.StepCost, P.Overheads]:
    """One micro-batch step of ``variant``'s LM: its peak before ``reproduce.plan``'s memory terms, its meta
    cost (FLOPs without the recomputation) and its overheads."""
    micro = params.lm_micro_batch or params.lm_batch
    logits = micro * params.lm_seq * params.lm_vocab * 4  # fp32 (micro, T, V)
    kept, full = lm_activation_bytes(lm_shape(params), variant, micro, params.lm_seq, params.lm_checkpointing)
    peak = dataclasses.replace(full, saved_bytes=kept).train_peak(logits)  # + the logits' gradient
    return peak, full, P.training_overheads(full.trained_parameters, P.gpu_autocast(params), logits)


def lm_sections(params) -> P.SectionPlan:
    micro = params.lm_micro_batch or params.lm_batch
    T = params.lm_seq
    worst_peak, worst_params, worst_variant, flops = 0.0, 0, "", 0.0
    worst_overheads = P.Overheads()
    runs = {v: 0 for v in params.variants}
    for v in params.variants:  # every row's sweep (its grid on the sweep seed; none for a grid of one rate) and seeds
        grid = len(params[f"lm_lrs_{baselines.FAMILY[v]}"])
        runs[v] = len(params.seeds) + (grid if grid > 1 else 0)
    for v in params.variants:
        peak, full, overheads = lm_step(params, v)
        if peak + sum(P.memory_terms(overheads).values()) > worst_peak + sum(P.memory_terms(worst_overheads).values()):
            worst_peak, worst_variant, worst_overheads = peak, v, overheads
        worst_params = max(worst_params, full.parameters)
        recompute = 4 / 3 if params.lm_checkpointing else 1.0
        steps_flops = full.flops * recompute * (params.lm_batch // micro) * params.lm_steps
        eval_flops = full.flops / 3 * (params.lm_eval_windows + params.lm_select_windows) / micro
        flops += runs[v] * (steps_flops + eval_flops)
    n_runs = sum(runs.values())
    download = WIKITEXT103_BYTES if params.data != "novels" else 0.0
    return P.SectionPlan(
        section="4./5. Language modelling (Tables 5, 6)",
        what=(f"{n_runs} LM runs ({', '.join(params.variants)}) x {params.lm_steps:,} steps of {params.lm_batch} x {T} "
              f"tokens (micro-batch {micro}{', checkpointed' if params.lm_checkpointing else ''})"),
        parameters=worst_params, peak_bytes=worst_peak, flops=flops, download_bytes=download,
        fix="lower lm_micro_batch (gradient accumulation keeps lm_batch), or set lm_checkpointing=True",
        notes=f"largest step: {worst_variant}; activations per micro-batch at lm_seq {T}", overheads=worst_overheads)


def _dtype_bytes(params) -> int:
    dtype = runtime.autocast_dtype(params.precision, torch.device("cuda")) or torch.float32
    return torch.finfo(dtype).bits // 8


def decode_section(params) -> P.SectionPlan:
    """Figure 6: weights of both models and every point's cache at once, in the precision's dtype."""
    shape = baselines.LMShape(vocab_size=1024, hidden_size=params.cost_hidden, num_layers=params.cost_layers,
                       num_heads=params.cost_heads, gamma_schedule=params.gamma_schedule, head_norm=params.head_norm)
    b = _dtype_bytes(params)
    with torch.device("meta"):
        sizes = {v: sum(p.numel() for p in _build(shape, v).parameters()) for v in ("retnet", "transformer")}
    L, H, D, B = params.cost_layers, params.cost_heads, params.cost_hidden, params.decode_batch
    K = D // H
    steps = DECODE_WARMUP + params.decode_steps
    lengths = params.decode_lengths
    kv = sum(2 * L * H * K * n * B * b for n in lengths)  # DynamicCache: n tokens (it grows by `steps` while decoding)
    kv += sum(2 * L * H * K * (n + steps) * B * b for n in lengths)  # StaticCache: preallocated n + steps
    kv += 2 * L * H * K * steps * B * b * len(lengths)  # the dynamic caches' growth
    state = len(lengths) * L * B * H * K * (K + 1) * b
    transient = 2 * 2 * H * K * (max(lengths) + steps) * B * b  # a DynamicCache's concatenation: one layer copied
    peak = sum(sizes.values()) * b + kv + state + transient
    points = len(lengths) * len(DECODERS)
    flops = steps * B * sum(2 * sizes["transformer"] + 4 * L * D * n for n in lengths) * 2  # two Transformer caches
    flops += steps * B * len(lengths) * 2 * sizes["retnet"]
    return P.SectionPlan(
        section="2. Inference cost (Figure 6)",
        what=f"{points} decode points ({', '.join(DECODERS)}) x lengths {lengths} x batch {B}, {steps} steps each",
        parameters=max(sizes.values()), peak_bytes=peak, flops=flops, other_hours=points * steps * DECODE_STEP_S / 3600,
        fix="lower decode_batch or the longest decode_lengths (every point's cache is held at once)",
        notes=f"weights and caches in {b * 8}-bit floats (precision={params.precision})")


def training_cost_section(params) -> P.SectionPlan:
    """Table 4: one block per (kind, length), a step on the meta device; the largest peak and all FLOPs."""
    cfg = RetentionConfig(hidden_size=params.train_hidden, num_heads=params.train_heads, chunk_size=params.train_chunk)
    d, B = params.train_hidden, params.train_batch
    worst, worst_kind, worst_params, flops, n = 0.0, "", 0, 0.0, 0
    for length in params.train_lengths:
        for kind in TRAINING_KINDS:
            if kind.startswith("attention"):
                def build(kind=kind):
                    return baselines.TransformerBlock(d, params.train_heads, fused=kind == "attention")

                def run(m):
                    return m(torch.zeros(B, length, d, device="meta", requires_grad=True)).square().mean()
            else:
                def build():
                    return RetNetBlock(cfg)

                def run(m, kind=kind):
                    return m(torch.zeros(B, length, d, device="meta", requires_grad=True), kind, None, 0)[0].square().mean()
            cost = P.step_cost(build, run)
            # weights and their gradients (no optimizer), the step's activations, the input and its gradient,
            # and in the backward pass the gradients of two B x H x T x T tensors (not for chunkwise: L x L)
            square = 0 if kind == "chunkwise" else 2 * B * params.train_heads * length * length * 4
            peak = cost.parameters * 8 + cost.saved_bytes + 2 * B * length * d * 4 + square
            if peak > worst:
                worst, worst_kind, worst_params = peak, f"{kind} at {length}", cost.parameters
            flops += cost.flops * (1 + params.train_reps)
            n += 1
    return P.SectionPlan(
        section="3. Training cost (Table 4)",
        what=f"{n} points ({', '.join(TRAINING_KINDS)}) x lengths {params.train_lengths}, batch {B}, "
             f"{1 + params.train_reps} steps each",
        parameters=12 * d * d, peak_bytes=worst, flops=flops,
        fix="lower train_batch or the longest train_lengths",
        notes=f"largest: {worst_kind} (fp32 upper bound: the math kernels' T x T tensors)",
        # one process times each point (no DDP); its matmuls run under autocast (sections.run_training_cost)
        overheads=P.Overheads(autocast_parameters=worst_params if P.gpu_autocast(params) else 0))


def forms_section(params) -> P.SectionPlan:
    return P.SectionPlan(section="1. Forms agree (§2.1)",
                         what=f"a 2-layer float64 LM on {params.forms_length} tokens, chunks {params.forms_chunks}",
                         parameters=0, peak_bytes=0.1e9, flops=0.0, notes="negligible: a CPU-sized check")


def sections(params) -> list[P.SectionPlan]:
    return [forms_section(params), decode_section(params), training_cost_section(params), lm_sections(params)]
