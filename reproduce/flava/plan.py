"""``python -m reproduce plan flava --profile gpu``: parameters, peak memory, FLOPs, GPU-hours and download per section.

The training step is measured with ``reproduce.plan.step_cost`` on the *meta* device at the real
shapes (ViT-B/16, ``micro_batch`` rows): FLOPs by ``FlopCounterMode``, activations as the bytes
autograd saves. The meta device cannot run data-dependent shapes (boolean indexing of the masked
positions, ALBEF's multinomial draw of mined negatives), so :func:`paired_step`, :func:`image_step` and
:func:`text_step` run the same passes as ``objectives.losses`` with the heads applied to *every* patch and
token (the real step applies them to the masked ~40 % of patches and ~15 % of tokens) and the mined
negatives re-paired by a fixed permutation: an upper bound of the real step's memory and FLOPs
(tested against ``objectives.losses`` on CPU at small size, and meta against real CPU tensors).

Evaluation (linear probes, language fine-tuning, ITM, retrieval) is counted as forward passes of
2 x 12 + 6 layers per example (a documented formula: 2 FLOPs per weight per token, 3x for the
fine-tuning's forward and backward); the VQ fit and tokenisation run on the CPU (``other_hours``).
"""

from __future__ import annotations

import torch

from reproduce import plan as P
from reproduce.flava.model import FlavaSizes, build_model
from reproduce.flava.objectives import contrastive_embeddings, global_contrastive_loss
from reproduce.flava.pretraining import row_steps

FLICKR30K_BYTES = 4.4e9  # lmms-lab/flickr30k: 9 parquet files of 471-528 MB (the hub's file listing)
FLICKR30K_ROWS = 31_783
FLAVA_FULL_BYTES = 1.4e9  # facebook/flava-full: ~350M fp32 weights
FLAVA_FULL_PARAMETERS = 350_000_000
SHUFFLE_BUFFER = 10_000  # reproduce.data.pmd.hub_pairs' default


def sizes_of(params) -> FlavaSizes:
    from reproduce.flava.experiments import sizes_from

    return sizes_from(params)


def _zeros(*shape, dtype=torch.float32, device="meta"):
    return torch.zeros(*shape, dtype=dtype, device=device)


def paired_step(model, sizes: FlavaSizes, b: int, device="meta", mined: bool = True) -> torch.Tensor:
    """GC + ITM (+ B mined negatives) + MMM on one paired micro-batch of ``b`` rows, heads on every position."""
    import torch.nn.functional as F

    L, P_ = sizes.max_text_len, sizes.num_patches
    ids, mask = _zeros(b, L, dtype=torch.long, device=device), None  # no padding: HF's mask check reads values
    pixels = _zeros(b, 3, sizes.image_size, sizes.image_size, device=device)
    masked_pos = torch.ones(b, P_, dtype=torch.bool, device=device)
    out = model.flava(input_ids=ids, attention_mask=mask, pixel_values=pixels, skip_multimodal_encoder=True)
    image, text = contrastive_embeddings(model, out.image_embeddings, out.text_embeddings)
    loss = global_contrastive_loss(image, text, model.flava.logit_scale, gather=False)
    out = model.flava(input_ids=ids, attention_mask=mask, pixel_values=pixels, bool_masked_pos=masked_pos)
    mm = out.multimodal_embeddings  # (B, 1 + 1 + P + L, D)
    logits = model.itm_head(mm)
    if mined:  # ALBEF's B negatives: the multimodal encoder once more on re-paired states
        perm = torch.arange(b, device=device).roll(1)
        states = torch.cat([model.flava.image_to_mm_projection(out.image_output.hidden_states[-1][perm]),
                            model.flava.text_to_mm_projection(out.text_output.hidden_states[-1])], dim=1)
        neg = model.flava.multimodal_model(states, attention_mask=None, return_dict=True).last_hidden_state
        logits = torch.cat([logits, model.itm_head(neg)])
    loss = loss + F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=device))
    codes = _zeros(b * P_, dtype=torch.long, device=device)
    loss = loss + F.cross_entropy(model.mmm_image_head(mm[:, 2 : 2 + P_]).flatten(0, 1), codes)
    words = _zeros(b * L, dtype=torch.long, device=device)
    return loss + F.cross_entropy(model.mmm_text_head(mm[:, -L:]).flatten(0, 1), words)


def image_step(model, sizes: FlavaSizes, b: int, device="meta") -> torch.Tensor:
    """MIM on one image micro-batch, the head on every patch."""
    import torch.nn.functional as F

    pixels = _zeros(b, 3, sizes.image_size, sizes.image_size, device=device)
    masked_pos = torch.ones(b, sizes.num_patches, dtype=torch.bool, device=device)
    out = model.flava(pixel_values=pixels, bool_masked_pos=masked_pos)
    logits = model.mim_head(out.image_embeddings[:, 1:]).flatten(0, 1)
    return F.cross_entropy(logits, _zeros(len(logits), dtype=torch.long, device=device))


def text_step(model, sizes: FlavaSizes, b: int, device="meta") -> torch.Tensor:
    """MLM on one text micro-batch, the head on every token."""
    import torch.nn.functional as F

    L = sizes.max_text_len
    out = model.flava(input_ids=_zeros(b, L, dtype=torch.long, device=device), attention_mask=None)
    logits = model.mlm_head(out.text_embeddings).flatten(0, 1)
    return F.cross_entropy(logits, _zeros(len(logits), dtype=torch.long, device=device))


STEPS = {"paired": paired_step, "images": image_step, "text": text_step}


def source_costs(sizes: FlavaSizes, micro: int, mined: bool = True) -> dict[str, P.StepCost]:
    """One measured micro-batch step of each source (meta device)."""
    build = lambda: build_model(sizes, 0)  # noqa: E731
    out = {}
    for name, fn in STEPS.items():
        kwargs = {"mined": mined} if name == "paired" else {}
        out[name] = P.step_cost(build, lambda m, fn=fn, kw=kwargs: fn(m, sizes, micro, **kw))
    return out


def _forward_flops(parameters: int, tokens: int) -> float:
    return 2.0 * parameters * tokens


def sections(params) -> list[P.SectionPlan]:
    sizes = sizes_of(params)
    b = params.batch_size
    micro = params.micro_batch or b
    accum = b // micro
    mined = params.itm_negatives == "mined"
    costs = source_costs(sizes, micro, mined)
    paired = costs["paired"]
    n_params = paired.parameters
    fix = "micro_batch (a divisor of batch_size: fewer rows per forward, gradient accumulation keeps the batch)"

    # 1. data: stream the pairs, fit the VQ k-means and tokenise on the CPU
    hub = params.pairs_source == "hub"
    download = 0.0
    if hub and params.pairs_dataset == "lmms-lab/flickr30k":
        download = FLICKR30K_BYTES * min(1.0, (params.n_pairs + SHUFFLE_BUFFER) / FLICKR30K_ROWS)
    s, n_img = sizes.image_size, params.n_pairs + params.n_images
    host = n_img * s * s * 3 + (params.vq_fit_images or params.n_pairs) * 3 * s * s * 4
    vq_flops = 2.0 * n_img * sizes.num_patches * 3 * sizes.patch_size**2 * params.codebook_size  # nearest codes (CPU)
    plans = [P.SectionPlan(
        "1. Architecture and objectives", f"{params.n_pairs:,} pairs ({params.pairs_dataset if hub else 'scenes'}) + "
        f"{params.n_images:,} images at {s} px; VQ k-means ({params.codebook_size} codes) on the CPU",
        parameters=0, peak_bytes=0.0, flops=0.0, download_bytes=download,
        other_hours=0.25 + vq_flops / 50e9 / 3600,  # ours: streaming + decoding ~30k images, k-means, CPU matmuls at ~50 GFLOP/s
        notes=f"CPU only; host memory ~{P.human_bytes(host)} (uint8 images + the VQ fit's float subsample, vq_fit_images)")]

    # 1b. HF path: one AdamW step at batch 8 on the device (+ the released checkpoint, inference)
    hf = P.step_cost(lambda: build_model(sizes, 0), lambda m: paired_step(m, sizes, 8, mined=False))
    tokens = 1 + sizes.num_patches + sizes.max_text_len
    full_flops = _forward_flops(FLAVA_FULL_PARAMETERS, params.n_retrieval * (1 + 196 + 77)) if params.try_flava_full else 0.0
    plans.append(P.SectionPlan(
        "1b. The Hugging Face path", "our losses vs FlavaForPreTraining's on 3 batches of 8, one AdamW step"
        + (f"; {params.flava_model} zero-shot on {params.n_retrieval} pairs" if params.try_flava_full else ""),
        parameters=max(n_params, FLAVA_FULL_PARAMETERS if params.try_flava_full else 0),
        peak_bytes=max(hf.train_peak(), FLAVA_FULL_PARAMETERS * 4.0 * 1.5 if params.try_flava_full else 0.0),
        flops=3 * hf.flops + full_flops, download_bytes=FLAVA_FULL_BYTES if params.try_flava_full else 0.0,
        fix="try_flava_full=False", notes="fp32, TF32 off (a round-off check)"))

    # 2. Table 3: every row x seed, updates of batch_size rows (accum micro-batches), plus its evaluation
    from reproduce.flava.experiments import rows_from

    rows = rows_from(params)
    train_flops = 0.0
    for row in rows.values():
        per_update = sum(p * costs[src].flops for src, p in row.sources.items() if p > 0) * accum
        train_flops += row_steps(row, params.steps) * per_update * len(params.seeds)
    evals = len(params.seeds) * (len(rows) + 1)
    eval_examples = 2 * params.n_probe * 2 + 2 * params.n_probe * 3 + params.n_probe * 2 + params.n_retrieval
    qa_tokens = params.qa_finetune_steps * 32 * tokens + 3 * params.n_probe * tokens  # scene QA: whole model, batch 32
    eval_flops = evals * (_forward_flops(n_params, eval_examples * tokens)
                          + 3 * _forward_flops(n_params // 3, 3 * params.finetune_steps * 32 * sizes.max_text_len)
                          + 3 * _forward_flops(n_params, qa_tokens))
    peak = max(c.train_peak() for c in costs.values())
    # the fp32 logits of the widest head (MLM over the vocabulary, or MIM/MMM over the codebook, on every
    # position as the meta step), what cross-entropy reads beside the saved log-softmax (bf16 autocast: its copy)
    logits = micro * max(sizes.max_text_len * sizes.vocab_size, sizes.num_patches * sizes.codebook_size) * 4
    plans.append(P.SectionPlan(
        "2. Table 3: objective ablation", f"{len(rows)} rows x {len(params.seeds)} seeds x {params.steps:,} updates of "
        f"{b} ({accum} x {micro}), + untrained row; evaluation per row and seed",
        parameters=n_params, peak_bytes=peak, flops=train_flops + eval_flops, fix=fix,
        overheads=P.training_overheads(paired.trained_parameters, P.gpu_autocast(params), logits),
        notes=f"activations {P.human_bytes(paired.saved_bytes)} per paired micro-batch of {micro} "
              f"({P.human_bytes(paired.saved_bytes / micro)}/row, fp32 upper bound of bf16 autocast)"))

    # 3. retrieval: figures from recorded embeddings (no compute on the device)
    plans.append(P.SectionPlan("3. Zero-shot retrieval", "figures from the recorded similarities", parameters=0,
                               peak_bytes=0.0, flops=0.0))
    return plans
