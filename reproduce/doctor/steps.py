"""Each paper's gpu-profile step for ``python -m reproduce doctor``: at tiny sizes, and at real shapes
measured against the plan (peak memory, tokens/s, MFU, GPU-hours).

A :class:`Step` is one optimizer step of the code path a paper's gpu profile runs, built the way its
sections build it (``reproduce.<paper>.sections`` / ``experiments`` / ``pretraining``), on random
inputs. :data:`TINY` gives the gpu profile tiny widths, depths and lengths; everything else stays the
profile's. The real-shape step is the one the plan's largest section is made of.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reproduce import config

from .check import gb, sync

WARMUP_STEPS, TIMED_STEPS = 2, 3  # real steps: the first ones allocate the optimizer state and tune kernels

# The gpu profile at tiny sizes (HF-style tiny configs: hidden 32, 1-2 layers); everything else stays
# the gpu profile's (architecture options, precision, micro-batching, checkpointing, mined negatives).
TINY: dict[str, dict[str, Any]] = {
    "transformer": {"vocab_size": 128, "n_layers": 2, "d_model": 32, "d_ff": 64, "n_heads": 4, "batch_tokens": 256,
                    "t3_rows": ["base"], "t3_n_layers": 1, "t3_d_model": 32, "t3_d_ff": 64},  # Table 3: its plan only
    "flava": {"image_size": 32, "patch_size": 8, "hidden": 32, "heads": 2, "mlp": 64, "image_layers": 1,
              "text_layers": 1, "multimodal_layers": 1, "projection_dim": 16, "codebook_size": 16, "vocab_size": 100,
              "max_text_len": 12, "batch_size": 8, "micro_batch": 4},
    "retnet": {"lm_vocab": 300, "lm_hidden": 32, "lm_layers": 2, "lm_heads": 2, "lm_seq": 64, "lm_batch": 4,
               "lm_micro_batch": 2},
    "tova": {"length": 48, "budgets": [8, 16], "window_budgets": [8], "nll_block": 16, "headline_length": 48,
             "headline_budget": 8, "stream_tokens": 40, "stream_budget": 8, "analysis_budget": 8,
             "throughput_budgets": [8, 16], "gen_budget": 8, "gen_prompt_tokens": 32, "sensitivity_budgets": [8]},
}
TOVA_TINY_LLAMA = {"vocab_size": 99, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                   "num_attention_heads": 6, "num_key_value_heads": 2}  # tests/test_tova.py's tiny model


@dataclass
class Step:
    """One optimizer step of a paper's gpu-profile code path, built on the device.

    ``micro()`` runs one micro-batch's forward and returns its loss (training) or a tensor whose
    values must be finite (inference, ``optimizer`` None); ``accum`` micro-batches make one step.
    """

    name: str  # short: the table's label
    what: str
    micro: Callable[[], Any]
    optimizer: Any  # torch.optim.Optimizer, or None: nothing is trained
    accum: int
    tokens: int  # tokens of one step (how the paper counts them: ``unit``)
    unit: str
    flops: Callable[[], float]  # the plan's FLOPs of one step (a meta-device count: only asked for on real shapes)
    section: str  # the plan's section this step is the largest step of
    autocast: bool = True  # under torch.autocast (bf16); False: the weights are in their compute dtype already
    extra: Callable[[], dict[str, Any]] | None = None  # run once after the timed steps (TOVA: the eviction path)


def _autocast(device, on: bool):
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16) if on else contextlib.nullcontext()


def run_steps(step: Step, device, steps: int) -> tuple[list[float], float]:
    """``steps`` optimizer steps; returns the seconds of each and the last loss (or mean output)."""
    import torch

    times, last = [], float("nan")
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(step.accum):
            if step.optimizer is None:
                with torch.no_grad(), _autocast(device, step.autocast):
                    out = step.micro()
            else:
                with _autocast(device, step.autocast):
                    out = step.micro()
                (out / step.accum).backward()
            last = float(out.detach().float().mean())
        if step.optimizer is not None:
            step.optimizer.step()
            step.optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t0)
        if not math.isfinite(last):
            raise FloatingPointError(f"{step.what}: the loss is {last}")
    return times, last


def _randint(high: int, *shape: int, device, low: int = 0):
    import torch

    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(0)).to(device)


def transformer_steps(params, device, real: bool) -> list[Step]:
    """Table 2's model and Adam (§5.3) as ``sections.run_table2`` trains it, on one batch of ``batch_tokens``."""
    import torch

    from reproduce.transformer import experiments as ex
    from reproduce.transformer import plan as tplan
    from reproduce.transformer import sections
    from reproduce.transformer.model import Transformer, label_smoothed_loss

    cfg = sections.table2_config(params, params.vocab_size)
    T = tplan.PLAN_LENGTH
    rows = max(1, params.batch_tokens // params.grad_accum // T)
    torch.manual_seed(params.seed)
    model = Transformer(cfg).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)  # train_translation's
    src = _randint(cfg.vocab_size, rows, T, device=device, low=1)  # no padding (PAD_ID 0): a full bucket
    tgt = _randint(cfg.vocab_size, rows, T + 1, device=device, low=1)

    def micro():
        return label_smoothed_loss(model(src, tgt[:, :-1]), tgt[:, 1:], cfg.label_smoothing, ex.PAD_ID)

    what = f"Table 2 model ({cfg.n_layers} layers, d_model {cfg.d_model}), {params.grad_accum} x {rows} x {T} tokens per side"
    return [Step("Table 2 model", what, micro, optimizer, params.grad_accum, params.grad_accum * rows * T, "target tokens",
                 lambda: tplan._step(cfg, rows * T).flops * params.grad_accum, "3. Table 2 recipe")]


def _paired_batch(sizes, rows: int, device) -> dict[str, Any]:
    """A random paired micro-batch as ``reproduce.flava.pretraining.batch_stream`` yields it (matched pairs:
    mined negatives), masked as the sampler masks (BEiT's patch ratio, BERT's 15 % of tokens)."""
    import torch

    from reproduce.flava.masking import BEIT_MASK_RATIO, TEXT_MASK_PROB
    from reproduce.flava.objectives import CE_IGNORE
    from reproduce.flava.tokenisers import SPECIAL_TOKENS

    g = torch.Generator().manual_seed(0)
    P, L = sizes.num_patches, sizes.max_text_len
    ids = torch.randint(len(SPECIAL_TOKENS), sizes.vocab_size, (rows, L), generator=g)  # B, L
    text_masked = torch.rand(rows, L, generator=g) < TEXT_MASK_PROB
    text_masked[:, 0] = True  # at least one MLM label per row
    patch_masked = torch.rand(rows, P, generator=g) < BEIT_MASK_RATIO
    patch_masked[:, 0] = True
    batch = {"pixel_values": torch.randn(rows, 3, sizes.image_size, sizes.image_size, generator=g),
             "input_ids": ids, "attention_mask": torch.ones(rows, L, dtype=torch.long),
             "image_tokens": torch.randint(0, sizes.codebook_size, (rows, P), generator=g),
             "bool_masked_pos": patch_masked,
             "itm_ids_masked": ids.masked_fill(text_masked, SPECIAL_TOKENS.index("[MASK]")),
             "itm_attention_mask": torch.ones(rows, L, dtype=torch.long),
             "mlm_labels": ids.masked_fill(~text_masked, CE_IGNORE),
             "itm_labels": torch.ones(rows, dtype=torch.long)}
    return {k: v.to(device) for k, v in batch.items()}


def flava_steps(params, device, real: bool) -> list[Step]:
    """Full FLAVA (Table 3's row "FLAVA": every objective) on a paired micro-batch, through the
    ``FlavaPretrainer`` module and AdamW of ``reproduce.flava.pretraining`` (the largest step of Table 3)."""
    from reproduce import plan as P
    from reproduce.flava import plan as fplan
    from reproduce.flava.ablation import table3_rows
    from reproduce.flava.experiments import sizes_from
    from reproduce.flava.model import build_model
    from reproduce.flava.pretraining import FlavaPretrainer, FlavaTrainConfig, optimizer

    sizes = sizes_from(params)
    cfg = FlavaTrainConfig(steps=params.steps, batch_size=params.batch_size, micro_batch=params.micro_batch,
                           lr=params.lr, warmup=params.warmup, weight_decay=params.weight_decay,
                           itm_negatives=params.itm_negatives, seed=params.seed)
    rows = params.micro_batch or params.batch_size
    accum = params.batch_size // rows
    model = build_model(sizes, params.seed).to(device).train()
    trainer = FlavaPretrainer(model, table3_rows()["FLAVA"].objectives, params.itm_negatives, params.seed)
    opt = optimizer(model, cfg)
    batch = _paired_batch(sizes, rows, device)
    mined = params.itm_negatives == "mined"

    def micro():
        return trainer("paired", **batch)

    def flops():
        return P.step_cost(lambda: build_model(sizes, 0),
                           lambda m: fplan.paired_step(m, sizes, rows, mined=mined)).flops * accum

    what = f"full FLAVA on paired batches, {accum} x {rows} rows ({params.itm_negatives} ITM negatives)"
    return [Step("full FLAVA", what, micro, opt, accum, accum * rows * (sizes.num_patches + sizes.max_text_len),
                 "patches + text tokens", flops, "2. Table 3: objective ablation")]


def retnet_steps(params, device, real: bool) -> list[Step]:
    """The LMs of Tables 5/6 as ``language_models.train_language_model`` builds them (checkpointing, AdamW
    with beta2 0.98): every variant at tiny sizes; at real shapes the variant the plan finds largest."""
    import torch

    from reproduce.retnet import language_models as lms
    from reproduce.retnet import plan as rplan
    from reproduce.retnet.baselines import FAMILY, build_model

    shape = rplan.lm_shape(params)
    micro_rows = params.lm_micro_batch or params.lm_batch
    accum = params.lm_batch // micro_rows
    T = params.lm_seq
    variants = list(params.variants)
    if real:  # the section's peak is its largest variant's: measure that one
        from reproduce import plan as P

        def total(v):
            peak, _, overheads = rplan.lm_step(params, v)
            return peak + sum(P.memory_terms(overheads).values())

        variants = [max(variants, key=total)]
    steps = []
    for variant in variants:
        model = build_model(shape, variant, params.seed).to(device).train()
        if params.lm_checkpointing:
            lms.enable_checkpointing(model)
        lr = params[f"lm_lrs_{FAMILY[variant]}"][0]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.98),
                                weight_decay=0.01)
        batch = {"input_ids": _randint(params.lm_vocab, micro_rows, T, device=device)}

        def flops(v=variant):
            recompute = 4 / 3 if params.lm_checkpointing else 1.0
            return rplan.lm_step(params, v)[1].flops * recompute * accum

        what = (f"{variant} LM ({shape.num_layers} x {shape.hidden_size}), {accum} x {micro_rows} x {T} tokens"
                + (", checkpointed" if params.lm_checkpointing else ""))
        steps.append(Step(variant, what, lambda m=model, b=batch: lms.lm_loss(m, b), opt, accum, accum * micro_rows * T,
                          "tokens", flops, "4./5. Language modelling (Tables 5, 6)"))
    return steps


def tova_steps(params, device, real: bool) -> list[Step]:
    """The App. E pass (full cache) of the gpu profile's model in its precision's dtype; afterwards one
    TOVA pass (the eviction replay on the CPU) and, at tiny sizes, streaming == App. E through a TOVA cache."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from reproduce import runtime
    from reproduce.tova import appendix_e, experiments, policies
    from reproduce.tova import plan as tvplan
    from reproduce.tova.policies import EvictionSpec

    # the weights' dtype as the gpu profile loads them on a GPU (bf16 under precision='auto'); bf16 on the CPU too
    dtype = runtime.autocast_dtype(params.precision, device) if device.type == "cuda" else torch.bfloat16
    dtype = dtype or torch.float32
    if real:
        lcfg = tvplan.shapes(params)[1]  # LLaMA-2-7B's shapes (random weights: nothing is downloaded)
        length, batch = params.length, params.batch_size
    else:
        lcfg = LlamaConfig(**TOVA_TINY_LLAMA, attn_implementation="eager")
        length, batch = params.length, 1
    torch.manual_seed(params.seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(lcfg, dtype=dtype, attn_implementation="eager")
    model = policies.attach(model.eval())
    ids = _randint(lcfg.vocab_size, batch, length, device=device)
    budget = min(params.budgets)

    def extra() -> dict[str, Any]:
        tova = EvictionSpec("tova", budget)
        nll = appendix_e.nll(model, ids, tova)
        out = {"tova_pass_nll": float(nll.float().mean())}
        if not real:  # streaming through the Cache == the App. E pass, in fp32 (bf16 round-off is not the point)
            check = experiments.streaming_check(model.float(), ids[:, :40], EvictionSpec("tova", 8))
            out["streaming_vs_appendix_e_max_abs_nll_diff"] = check["max_abs_nll_diff"]
            if not check["max_abs_nll_diff"] <= 1e-3:
                raise AssertionError(f"TOVA streaming != App. E pass: max |NLL diff| {check['max_abs_nll_diff']:.3g}")
        return out

    what = (f"App. E pass of a {lcfg.num_hidden_layers}-layer LLaMA ({str(dtype).removeprefix('torch.')}), "
            f"{batch} x {length} tokens; then TOVA at C={budget}")
    return [Step("App. E pass", what, lambda: appendix_e.nll(model, ids, EvictionSpec("full")), None, 1, batch * length,
                 "tokens",
                 lambda: tvplan.forward_flops(lcfg, length) * batch, "1. Perplexity vs C", autocast=False, extra=extra)]


STEPS: dict[str, Callable[..., list[Step]]] = {"transformer": transformer_steps, "flava": flava_steps,
                                                 "retnet": retnet_steps, "tova": tova_steps}


def _as_a_run(device) -> None:
    """The global settings ``reproduce.runtime.setup`` makes for a CUDA run: TF32 for what stays fp32."""
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def check_tiny_step(paper: str, device) -> dict[str, Any]:
    """The gpu profile's code path at tiny sizes: one optimizer step of each of the paper's steps."""
    _as_a_run(device)
    params = config.resolve(paper, "gpu", TINY[paper])
    out = {"steps": []}
    for step in STEPS[paper](params, device, real=False):
        times, loss = run_steps(step, device, 1)
        row = {"name": step.name, "what": step.what, "loss": loss, "seconds": times[0],
               "autocast": "bf16" if step.autocast else None}
        if step.extra is not None:
            row |= step.extra()
        out["steps"].append(row)
    out["summary"] = "; ".join(f"{r['name']}: loss {r['loss']:.3g}" for r in out["steps"])
    if "streaming_vs_appendix_e_max_abs_nll_diff" in out["steps"][-1]:
        out["summary"] += f"; streaming == App. E to {out['steps'][-1]['streaming_vs_appendix_e_max_abs_nll_diff']:.0e}"
    return out


def measure_step(paper: str, params, device, gpu=None, warmup: int = WARMUP_STEPS, timed: int = TIMED_STEPS
                 ) -> dict[str, Any]:
    """The largest step of ``params``' plan, measured: peak memory (CUDA) next to the plan's prediction for
    its section, tokens/s of ``timed`` steps after ``warmup``, the MFU on ``gpu`` (a ``plan.GPU``; None:
    FLOP/s only) in the plan's FLOP count, and the paper's GPU-hours with that MFU."""
    import torch

    from reproduce import plan

    _as_a_run(device)
    verdict = plan.make(paper, params, gpu.name if gpu else plan.DEFAULT_GPU)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        free, total = torch.cuda.mem_get_info(device)
        context = total - free - torch.cuda.memory_reserved(device)  # the CUDA context (+ other processes on the GPU)
        base = torch.cuda.memory_allocated(device)
    step = STEPS[paper](params, device, real=True)[0]
    section = next((s for s in verdict.sections if s.section == step.section), None)
    if section is None:
        raise LookupError(f"the plan of {paper} has no section {step.section!r}")
    times, loss = run_steps(step, device, warmup + timed)
    extra = step.extra() if step.extra is not None else {}
    step_s = statistics.median(times[warmup:])
    flops = step.flops()
    achieved = flops / step_s
    out: dict[str, Any] = {
        "section": step.section, "what": step.what, "loss": loss, **extra,
        "predicted_peak_bytes": section.peak_bytes, "predicted_memory_terms": section.memory,
        "step_times_s": times, "step_s": step_s, "tokens_per_step": step.tokens, "unit": step.unit,
        "tokens_per_s": step.tokens / step_s, "step_flops": flops, "achieved_tflops": achieved / 1e12,
        "gpu": gpu.name if gpu else None,
    }
    peak = ""
    if cuda:
        sync(device)
        reserved = torch.cuda.max_memory_reserved(device)
        out |= {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device) - base, "peak_reserved_bytes": reserved,
                "cuda_context_bytes": context, "measured_peak_bytes": reserved + context,
                "measured_over_predicted": (reserved + context) / section.peak_bytes if section.peak_bytes else None}
        peak = f"peak {gb(reserved + context)} (plan {gb(section.peak_bytes)}), "
    if gpu is None:
        out["summary"] = f"{peak}{step.tokens / step_s:,.0f} {step.unit}/s, {achieved / 1e12:.1f} TFLOP/s (no MFU: GPU not in plan.GPUS)"
        return out
    mfu = achieved / (gpu.bf16_tflops * 1e12)
    out |= {"mfu": mfu, "assumed_mfu": plan.MFU, "gpu_hours_assumed_mfu": verdict.gpu_hours,
            "gpu_hours_measured_mfu": sum(s.gpu_hours(gpu, mfu) for s in verdict.sections)}
    out["summary"] = (f"{peak}{step.tokens / step_s:,.0f} {step.unit}/s, MFU {mfu:.2f} -> "
                      f"{out['gpu_hours_measured_mfu']:.1f} GPU-h (at MFU {plan.MFU}: {verdict.gpu_hours:.1f})")
    return out


def check_real_step(paper: str, device) -> dict[str, Any]:
    """The gpu profile's largest step at its real shapes, on the GPU of ``plan.GPUS`` this one is."""
    import torch

    from reproduce import plan

    props = torch.cuda.get_device_properties(device)
    return measure_step(paper, config.resolve(paper, "gpu"), device, plan.match_gpu(props.name, props.total_memory))
