"""What the Transformer notebook costs on a GPU (``python -m reproduce plan transformer``).

One training step of each model is measured on the meta device at the profile's shape (a batch
of ``batch_tokens / grad_accum`` tokens per side: ``B`` sentences of ``T`` tokens, ``T`` =
``PLAN_LENGTH``, WMT14's typical padded length in a length-bucketed batch), then multiplied by the
steps. Memory: weights + gradients + Adam state + saved activations + the logits' gradient, and
``reproduce.plan``'s memory terms: the fp32 logits the label-smoothed cross-entropy reads (under bf16
autocast its upcast copy), autocast's bf16 weight copies, DDP's buckets, the CUDA context.
Decoding (BLEU) is counted as 2 x parameters FLOPs per generated token and beam entry.
"""

from __future__ import annotations

import torch

from reproduce import plan
from reproduce.configs.transformer import SPEC

from .data import PAD_ID
from .model import Transformer, TransformerConfig, label_smoothed_loss
from .variations import row_seeds, table3_config

CORPUS_PAIRS = {"beolingus": 17_000, "bible": 28_742}  # training pairs (< 100 tokens a side) of the packaged corpora
PLAN_LENGTH = 32  # tokens per padded sentence in a length-bucketed batch (WMT14 averages ~27-30 BPE tokens)
WMT14_DOWNLOAD = 0.82e9  # bytes of wmt/wmt14 de-en parquet files (the measurement)
WMT14_TRAIN_PAIRS = 4_508_785  # the de-en train split


def _step(cfg: TransformerConfig, tokens: int) -> plan.StepCost:
    rows = max(1, tokens // PLAN_LENGTH)

    def run(model):
        src = torch.zeros(rows, PLAN_LENGTH, dtype=torch.long, device="meta")
        tgt = torch.zeros(rows, PLAN_LENGTH + 1, dtype=torch.long, device="meta")
        return label_smoothed_loss(model(src, tgt[:, :-1]), tgt[:, 1:], cfg.label_smoothing, PAD_ID)

    return plan.step_cost(lambda: Transformer(cfg), run)


def _training(name: str, cfg: TransformerConfig, steps: int, tokens: int, grad_accum: int, runs: int = 1,
              autocast: bool = True) -> plan.SectionPlan:
    micro = _step(cfg, tokens // grad_accum)
    logits = (tokens // grad_accum) * cfg.vocab_size * 4  # fp32 (B*T, V): the logits' gradient, and what cross-entropy reads
    return plan.SectionPlan(name, f"{runs} x {steps:,} steps of {tokens:,} tokens per side (micro-batches of "
                                  f"{tokens // grad_accum:,})", micro.parameters, micro.train_peak(logits),
                            micro.flops * grad_accum * steps * runs, fix="grad_accum (more micro-batches per step)",
                            overheads=plan.training_overheads(micro.trained_parameters, autocast, logits))


def sections(params) -> list[plan.SectionPlan]:
    vocab = params.vocab_size
    base = TransformerConfig(vocab_size=vocab, n_layers=params.n_layers, d_model=params.d_model, d_ff=params.d_ff,
                             n_heads=params.n_heads, p_drop=params.p_drop, label_smoothing=params.label_smoothing, max_len=512)
    wmt = params.corpus == "wmt14"
    autocast = plan.gpu_autocast(params)  # bf16 autocast with fp32 weights (sections._precision on a GPU)
    out = [plan.SectionPlan(SPEC.section("Table 1"), f"one layer of width {params.t1_width} at n up to {max(params.t1_lengths)}",
                            0, 4 * params.t1_width * max(params.t1_lengths) * 8, 0.0,
                            other_hours=len(params.t1_lengths) * 5 / 3600)]
    table2 = _training(SPEC.section("Table 2"), base, params.steps, params.batch_tokens, params.grad_accum, autocast=autocast)
    table2.download_bytes = WMT14_DOWNLOAD if wmt else 0.0
    out.append(table2)
    # Table 2's source-blind control: the same recipe and steps without an encoder, in Table 3's worker
    blind = _training("3c. source-blind control (Table 2)", base.replace(source_blind=True), params.steps,
                      params.batch_tokens, params.grad_accum, autocast=autocast)
    t3_base = TransformerConfig(vocab_size=vocab if not params.t3_train_pairs else params.t3_vocab_size,
                                n_layers=params.t3_n_layers, d_model=params.t3_d_model, d_ff=params.t3_d_ff, n_heads=8,
                                p_drop=params.p_drop, label_smoothing=params.label_smoothing, max_len=512)
    pairs = (params.t3_train_pairs or (WMT14_TRAIN_PAIRS if wmt else params.train_pairs or CORPUS_PAIRS[params.corpus]))
    t3_tokens = params.t3_batch_tokens or params.batch_tokens
    steps = params.t3_epochs * max(1, pairs * PLAN_LENGTH // t3_tokens)
    seeds = {row: len(row_seeds(row, params.t3_seeds, params.t3_bigger_seeds)) for row in params.t3_rows}
    rows = [_training(f"4. Table 3 row {row}", table3_config(t3_base, row), steps, t3_tokens, params.grad_accum,
                      runs=seeds[row], autocast=autocast) for row in params.t3_rows]
    biggest = max([*rows, blind], key=lambda r: r.peak_bytes)
    # Table 3's worker process trains beside Table 2 on the same GPU (one process): their peaks add up.
    beside = table2.peak_bytes if params.t3_workers else 0.0
    out.append(plan.SectionPlan(
        SPEC.section("Table 3"), f"{len(params.t3_rows)} rows, {sum(seeds.values())} runs of {steps:,} steps "
        f"({params.t3_epochs} epochs of {pairs:,} pairs, {t3_tokens:,} tokens per side)", biggest.parameters,
        biggest.peak_bytes + beside, sum(r.flops for r in rows), fix=biggest.fix,
        overheads=biggest.overheads + table2.overheads if beside else biggest.overheads,
        notes=f"largest job of the worker: {biggest.section.removeprefix('4. Table 3 row ')}"
              + ("; peak includes the Table 2 training beside it (t3_workers >= 1)" if beside else "")))
    # Decoding (§6.1): Table 2 test BLEU for last + averaged checkpoints x beam + greedy, Table 3 dev BLEU per
    # row and seed (beam). FLOPs: 2 x parameters per generated token and beam entry (outputs ~ PLAN_LENGTH
    # tokens); time: launch-bound, ~ 2 ms per decoder step of a 64-sentence batch (ours: an estimate) for
    # up to input + 50 steps.
    t2_tokens = params.test_size * PLAN_LENGTH
    t3_tokens_dev = params.t3_dev_size * PLAN_LENGTH
    flops = 2 * table2.parameters * t2_tokens * (2 * (params.beam + 1) + params.beam) + sum(
        2 * r.parameters * t3_tokens_dev * params.beam * seeds[row] for r, row in zip(rows, params.t3_rows))
    batches = (2 * 2 + 1) * -(-params.test_size // 64) + sum(seeds.values()) * -(-params.t3_dev_size // 64)
    kv_cache = 2 * 64 * params.beam * (PLAN_LENGTH + 50) * base.d_model * base.n_layers * 4 * 2  # self + cross, fp32
    out.append(plan.SectionPlan(
        "3b. decoding / BLEU", f"test BLEU of {params.test_size:,} sentences x 4 + the source-blind control (Table 2), dev BLEU of "
        f"{params.t3_dev_size:,} x {sum(seeds.values())} runs (Table 3), beam {params.beam}",
        table2.parameters, table2.parameters * 4 * (params.average_last + 2) + kv_cache, flops,
        other_hours=batches * (PLAN_LENGTH + 50) * 2e-3 / 3600, fix="average_last (checkpoints kept in memory)"))
    out.insert(2, out.pop())  # in notebook order: Table 2's decoding follows its training, then its control
    out.insert(3, blind)
    return out
