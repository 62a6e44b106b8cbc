"""FLAVA measurements: the Table 3 ablation (train and evaluate every row and seed) and the HF path.

Table 3 of the paper (objective ablation, same budget: rows MIM, MLM, FLAVA_C, FLAVA_MM, FLAVA, and
FLAVA+init = row 6, full FLAVA started from the MIM and MLM rows' trained encoders) is reproduced as
real runs on the offline data of ``reproduce.flava.data``, trained by ``reproduce.flava.pretraining``
and scored per domain by ``reproduce.flava.evaluation`` (Table 4's layout).

Everything here returns plain data; the claims are made in ``reproduce.flava.sections``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reproduce import distributed, runtime
from reproduce.data import pmd
from reproduce.flava import objectives
from reproduce.flava.ablation import INIT_ROW, AblationRow, encoder_state, missing_init_sources, table3_rows
from reproduce.flava.data import BatchSampler, EvalData, PretrainData, TextSources, build_eval_data, build_pretrain_data, text_sources
from reproduce.flava.evaluation import (CLOZE, DOMAINS, SCENE_QA, FinetuneConfig, contrastive_embeddings, evaluate, itm_accuracy,  # noqa: F401
                                        macro_average, png_base64, retrieval_examples, retrieval_recalls,
                                        similarity_matrix)
from reproduce.flava.model import FLAVA_FULL, FlavaSizes, build_model, load_flava_full
from reproduce.flava.pretraining import FlavaTrainConfig, build_row_model, loss_windows, pretrain, row_steps, training_order  # noqa: F401
from reproduce.rundir import MemoryRows, Rows


def sizes_from(params) -> FlavaSizes:
    return FlavaSizes(**{f.name: params[f.name] for f in fields(FlavaSizes)})


def rows_from(params) -> dict[str, AblationRow]:
    """The requested Table 3 rows, full FLAVA with the sampling probabilities of the parameters."""
    total = params.p_paired + params.p_images + params.p_text
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"p_paired + p_images + p_text must be 1, got {total:g}")
    rows = table3_rows(params.p_paired, params.p_images, params.p_text)
    chosen = {name: rows[name] for name in params.rows}
    missing = missing_init_sources(chosen)
    if missing:  # config.resolve refuses this already; this guards callers that build rows by hand
        row, names = next(iter(missing.items()))
        raise ValueError(f"row {row!r} is initialised from rows {names}, which are not in rows {list(params.rows)}; "
                         f"add them")
    return chosen


def prepare(params, texts: TextSources | None = None) -> tuple[PretrainData, EvalData]:
    """Pretraining sources and held-out evaluation sets, built once for all rows and seeds.

    With ``pairs_source='hub'`` the pairs are streamed from the hub or a local parquet folder
    (``reproduce.data.pmd``: ``pairs_dataset``, Flickr30K by default); the evaluation stays on held-out
    scenes, MNIST and novels either way.
    """
    sizes = sizes_from(params)
    pairs = None
    if params.pairs_source == "hub":  # first: offline, this fails at once, before any other work
        pairs = pmd.hub_pairs(params.pairs_dataset, params.pairs_configs, params.n_pairs, sizes.image_size,
                              split=params.pairs_split, image_column=params.pairs_image_column,
                              caption_column=params.pairs_caption_column, seed=params.seed)
    texts = texts or text_sources()
    data = build_pretrain_data(sizes, params.n_pairs, params.n_images, params.n_text, params.emoji_prob, params.seed,
                               texts, pairs, vq_fit_images=params.vq_fit_images)
    return data, build_eval_data(data, sizes, params.n_probe, params.n_retrieval, params.seed, texts)


def illustration(data: PretrainData, sizes: FlavaSizes, seed: int, n: int = 4) -> dict:
    """One paired batch as the objectives see it: images, block masks, masked captions, ITM texts."""
    sampler = BatchSampler(data, sizes, batch_size=max(n, 8), seed=seed)
    batch = sampler.paired()
    tok = data.tokenizer
    images = ((batch.pixel_values[:n].permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).byte()  # (n, S, S, 3)

    def words(ids, mask):
        return [t for t, m in zip(tok.convert_ids_to_tokens(ids.tolist()), mask.tolist()) if m and t not in ("[CLS]", "[SEP]")]

    return {
        "images": [png_base64(im) for im in images.numpy()],
        "grid": sizes.grid,
        "masks": batch.bool_masked_pos[:n].int().tolist(),
        "captions": [tok.decode(ids, skip_special_tokens=True) for ids in batch.input_ids[:n]],
        "masked_text": [" ".join(words(ids, m)) for ids, m in zip(batch.itm_ids_masked[:n], batch.itm_attention_mask[:n])],
        "itm_labels": batch.itm_labels[:n].tolist(),
    }


UNTRAINED = "untrained"  # the reference row: every row's own random initialisation, evaluated as the rows are


@dataclass
class RowRun:
    row: str
    seed: int
    scores: dict[str, dict[str, float]]
    macro: float
    losses: dict[str, list[float]]  # per objective, mean over windows of the run (NaN-free)
    train_s: float
    itm: dict[str, float] | None = None  # held-out ITM accuracy with its Wilson interval (rows with pairs)


def finetune_from(params) -> FinetuneConfig:
    return FinetuneConfig(steps=params.finetune_steps, lr=params.finetune_lr, warmup=params.finetune_steps // 10)


def qa_finetune_from(params) -> FinetuneConfig:
    return FinetuneConfig(steps=params.qa_finetune_steps, lr=params.finetune_lr, warmup=params.qa_finetune_steps // 10)


@dataclass(frozen=True, eq=False)
class AblationJob:
    """One (Table 3 row, seed) of the ablation, or the seed's untrained reference: a job of
    ``reproduce.pool.Pool``. ``shared`` is ``(PretrainData, EvalData)``, handed to each worker once;
    ``parts`` holds the trained encoders row 6 starts from (``encoder_state`` of its source rows)."""

    key: str
    row: str
    seed: int
    params: Any
    device: str
    show: bool  # this row and seed draw the figures' extras (similarities, retrieval examples)
    keep: tuple[str, ...] = ()  # parts later rows copy from this one (``INIT_PARTS`` names)
    parts: dict = field(default_factory=dict)  # (row, part, seed) -> encoder_state, for row 6
    log_dir: str | None = None

    def run(self, shared, checkpoint_dir: str | None) -> dict:
        data, ev = shared
        if self.row == UNTRAINED:
            return _untrained(self, ev)
        return _trained_row(self, data, ev, checkpoint_dir)


def _untrained(job: AblationJob, ev: EvalData) -> dict:
    params = job.params
    model = build_model(sizes_from(params), job.seed).to(runtime.pick_device(job.device)).eval()
    scores, itm = distributed.on_main(lambda: (evaluate(model, None, ev, job.seed, finetune=finetune_from(params),
                                                        qa_finetune=qa_finetune_from(params)), itm_accuracy(model, ev)))
    return {"run": RowRun(UNTRAINED, job.seed, scores, macro_average(scores), {}, 0.0, itm)}


def _trained_row(job: AblationJob, data: PretrainData, ev: EvalData, checkpoint_dir: str | None) -> dict:
    import time

    params, name, seed = job.params, job.row, job.seed
    sizes, row = sizes_from(params), rows_from(params)[job.row]
    dev = runtime.pick_device(job.device)
    out = {"extras": {}, "parts": {}}
    model = build_row_model(sizes, row, seed, job.parts).to(dev)
    if job.show:
        out["extras"]["similarity_before"] = similarity_matrix(model, ev)
    mined = params.itm_negatives == "mined"
    sampler = BatchSampler(data, sizes, params.batch_size, seed, 0.0 if mined else params.itm_negative_prob,
                           params.itm_hard_fraction)
    every = params.get("checkpoint_every", 0) if checkpoint_dir is not None else 0
    cfg = FlavaTrainConfig(steps=row_steps(row, params.steps), batch_size=params.batch_size,
                           micro_batch=params.get("micro_batch", 0), lr=params.lr, warmup=params.warmup,
                           weight_decay=params.weight_decay, itm_negatives=params.itm_negatives, seed=seed,
                           itm_pair=params.itm_pair, multimodal_lr=params.multimodal_lr,
                           mixed_precision=runtime.mixed_precision(params.get("precision", "auto"), dev),
                           checkpoint_every=every, checkpoint_dir=checkpoint_dir if every else None, log_dir=job.log_dir)
    t0 = time.perf_counter()
    history = pretrain(model, row, sampler, cfg, job.device)
    train_s = time.perf_counter() - t0
    out["parts"] = {part: encoder_state(model, part) for part in job.keep}
    # the probes and fine-tuned heads run once, on the main process; every process gets the scores
    scores, itm = distributed.on_main(lambda: (evaluate(model, row, ev, seed, finetune=finetune_from(params),
                                                        qa_finetune=qa_finetune_from(params)),
                                               itm_accuracy(model, ev) if row.objectives.paired else None))
    losses = {k: loss_windows(v) for k, v in history.items() if not all(math.isnan(x) for x in v)}
    out["run"] = RowRun(name, seed, scores, macro_average(scores), losses, train_s, itm)
    if job.show:
        out["extras"].update(row=name, similarity_after=similarity_matrix(model, ev),
                             similarity_captions=ev.retrieval_captions[: len(out["extras"]["similarity_before"])],
                             retrieval_examples=retrieval_examples(model, ev, seed=params.seed))
    return out


def run_ablation(params, data: PretrainData, ev: EvalData, device: str = "auto", rows: Rows = MemoryRows(),
                 log_dir: str | Path | None = None) -> tuple[list[RowRun], dict]:
    """Train and evaluate every requested row for every seed (the same budget: ``steps`` draws of the
    row's main source, see ``row_steps``). Rows that initialise from others (row 6) train after them,
    from their trained encoders of the same seed. The untrained reference (``UNTRAINED``: the seed's
    random initialisation, every domain, the same tasks) is evaluated as the rows are.

    Each (row, seed) is one job of ``reproduce.pool.Pool`` (``AblationJob``): with ``params.workers``
    > 1 (CPU, one process) they run in that many spawned single-threaded processes, otherwise here,
    one after the other; each job seeds itself, so where it runs changes no number. Row 6 of a seed is
    submitted once its MIM and MLM rows are done.

    ``rows`` (``reproduce.rundir.Rows``; the sections pass ``run.state``): each (Table 3 row, seed) is
    one of its rows, computed once and read back by a rerun; where ``rows`` gives it a
    ``checkpoint_dir``, its pretraining checkpoints there every ``params.checkpoint_every`` updates and
    continues from there (the default ``MemoryRows`` keeps nothing: no checkpoints). A stored row keeps
    what later rows need: its run, the encoders row 6 starts from (``encoder_state``, on the CPU) and
    the figures' extras, so a rerun after row 5 trains row 6 from the same MIM and MLM encoders.
    ``log_dir``: where the pretrainings write their curves (``reproduce.train``), or nowhere.

    Returns the runs and, from full FLAVA (or the last paired row) of the first seed, the similarity
    matrix of held-out pairs before and after pretraining and a few zero-shot retrieval examples.
    """
    from reproduce.pool import Pool

    table = rows_from(params)
    shown = next((n for n in ("FLAVA", "FLAVA_MM", "FLAVA_C", INIT_ROW) if n in table), None)
    wanted = {(src, part) for row in table.values() for part, src in row.init.items()}  # parts later rows copy
    workers = params.workers
    where = device if workers <= 1 or distributed.world_size() > 1 else "cpu"  # workers: single-threaded CPU processes
    log = str(log_dir) if log_dir is not None else None

    def job(name: str, seed: int, parts: dict | None = None) -> AblationJob:
        keep = tuple(sorted(part for src, part in wanted if src == name))
        return AblationJob(rows.key("table3", name, seed), name, seed, params, where,
                           name == shown and seed == params.seeds[0], keep, parts or {}, log)

    order = training_order(table)
    waiting = [n for n in order if table[n].init]  # row 6: after its sources
    trained: dict[tuple[str, str, int], dict] = {}
    got: dict[tuple[str, int], dict] = {}
    worker_log = Path(log_dir) / "workers.log" if log_dir is not None else None
    with Pool(rows, workers, shared=(data, ev), log_path=worker_log, fmt="pickle", desc="Table 3 rows x seeds") as pool:
        # the row-6 sources first (row 6 waits for them), then the longest rows, the untrained reference last
        first = [n for n in order if n not in waiting and any(src == n for src, _ in wanted)]
        rest = sorted((n for n in order if n not in waiting and n not in first), key=lambda n: -row_steps(table[n], 1000) *
                      len(table[n].objectives.names()))
        for name in [*first, *rest, UNTRAINED]:
            for seed in params.seeds:
                pool.submit(job(name, seed))
        for done, result in pool.as_completed():
            got[(done.row, done.seed)] = result
            for part, value in result.get("parts", {}).items():
                trained[(done.row, part, done.seed)] = value
            for name in waiting:
                sources = set(table[name].init.values())
                if done.row in sources and all((src, done.seed) in got for src in sources):
                    parts = {k: v for k, v in trained.items() if k[2] == done.seed and k[0] in sources}
                    pool.submit(job(name, done.seed, parts))
    runs, extras = [], {}
    for name in [UNTRAINED, *table]:  # the table in the requested order, seeds in order within a row
        for seed in params.seeds:
            runs.append(got[(name, seed)]["run"])
            extras.update(got[(name, seed)].get("extras", {}))
    return runs, extras


def table3(runs: list[RowRun]) -> dict[str, dict[str, float]]:
    """Mean over seeds of each row's domain averages and macro average (a missing domain counts 0)."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.row for r in runs):
        mine = [r for r in runs if r.row == name]
        entry = {d: float(np.mean([r.scores.get(d, {}).get("average", 0.0) for r in mine])) for d in DOMAINS}
        entry["macro"] = float(np.mean([r.macro for r in mine]))
        entry["macro_std"] = float(np.std([r.macro for r in mine]))
        entry["seeds"] = len(mine)
        out[name] = entry
    return out


def tasks_table(runs: list[RowRun]) -> dict[str, dict[str, float]]:
    """Mean over seeds of every task score (Table 4's layout): row -> "domain/task" -> %."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r.row for r in runs):
        mine = [r for r in runs if r.row == name]
        keys = {f"{d}/{t}" for r in mine for d, tasks in r.scores.items() for t in tasks}
        out[name] = {k: float(np.mean([r.scores[k.split("/")[0]][k.split("/")[1]] for r in mine])) for k in sorted(keys)}
    return out


def _on(batch, dev: torch.device):
    return type(batch)(**{f.name: getattr(batch, f.name).to(dev) for f in fields(batch)})


def hf_path_check(data: PretrainData, sizes: FlavaSizes, seed: int, device: str = "auto") -> dict:
    """Hugging Face's ``FlavaForPreTraining`` (our sizes, via config overrides): one AdamW step on one
    batch of each source, and the gap between its losses and ours on the same batches without negatives.

    On ``device`` (the gpu profile's ViT-B/16 on the GPU), in float32 with TF32 off: the gap is a
    float32 round-off check (``sections.HF_GAP_TOL``), which TF32's 10-bit mantissa would exceed."""
    dev = runtime.pick_device(device)
    model = build_model(sizes, seed).to(dev).train()
    sampler = BatchSampler(data, sizes, batch_size=8, seed=seed)
    batches = {"paired": sampler.paired(), "images": sampler.images(), "text": sampler.text()}
    batches = {k: _on(v, dev) for k, v in batches.items()}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return _hf_path_check(model, batches)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _hf_path_check(model, batches) -> dict:
    everything = objectives.Objectives(mim=True, mlm=True, gc=True, mmm=True, itm=True)
    gap = 0.0
    for name, batch in batches.items():
        check = batch
        if name == "paired":  # HF feeds one text to both passes: compare on a batch whose ITM texts all match
            ids = batch.itm_ids_masked.where(batch.mlm_labels.eq(objectives.CE_IGNORE), batch.mlm_labels)
            check = objectives.PairedBatch(batch.pixel_values, ids, batch.itm_attention_mask, batch.image_tokens,
                                           batch.bool_masked_pos, batch.itm_ids_masked, batch.itm_attention_mask,
                                           batch.mlm_labels, torch.ones_like(batch.itm_labels))
        with torch.no_grad():
            ours = dict(objectives.losses(model, check, everything, gather=False).items())
            theirs = objectives.hf_pretraining_losses(model, check)
        gap = max([gap] + [abs(ours[k].item() - theirs[k].item()) for k in theirs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_losses = {}
    for batch in batches.values():
        got = objectives.hf_pretraining_losses(model, batch)
        opt.zero_grad()
        sum(got.values()).backward()
        opt.step()
        step_losses.update({k: float(v.detach()) for k, v in got.items()})
    return {"losses": step_losses, "max_abs_gap": gap, "parameters": sum(p.numel() for p in model.parameters())}


def released_zero_shot(model, image_processor, tokenizer, ev: EvalData, max_length: int = 77) -> dict[str, float]:
    """Zero-shot retrieval R@1/R@5 of a pretrained FLAVA on our held-out scenes, its inputs prepared by
    its own image processor (resize, crop, normalise) and tokenizer — the released model as a reference
    row beside our ablation (Table 4's "released" columns do the same for CLIP)."""
    from PIL import Image

    model.eval()
    pixels = image_processor(images=[Image.fromarray(x) for x in ev.retrieval_images], return_tensors="pt")["pixel_values"]
    text = tokenizer(list(ev.retrieval_captions), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    img, txt = contrastive_embeddings(model, pixels, text["input_ids"], text["attention_mask"])
    return retrieval_recalls(img, txt, ev.retrieval_captions)


def try_flava_full(ev: EvalData | None = None, model_id: str = FLAVA_FULL, device: str = "auto") -> dict:
    """Start from ``facebook/flava-full`` (gpu profile; ``model_id``: it or a local ``save_pretrained``
    folder): load it and, with ``ev``, score its zero-shot retrieval on our held-out scenes on ``device``.
    Offline, record the error the loader gives (within ~2 s)."""
    from reproduce.hub import HubError

    try:
        model, report = load_flava_full(model_id=model_id)
    except HubError as error:
        return {"loaded": False, "error": str(error)}
    out = {"loaded": True, "report": str(report), "parameters": sum(p.numel() for p in model.parameters())}
    if ev is not None:
        from transformers import FlavaProcessor

        # the processor lives beside the model: from the hub, or from the cache it was fetched into
        processor = FlavaProcessor.from_pretrained(model_id, local_files_only=runtime.hub_offline())
        model.to(runtime.pick_device(device))
        with torch.no_grad():
            out["zero_shot_heldout_scenes"] = released_zero_shot(model, processor.image_processor, processor.tokenizer, ev)
    return out



NEW_TASKS = (("language", CLOZE), ("multimodal", SCENE_QA))  # issue #28's tasks, claimed one by one


def per_seed(runs: list[RowRun]) -> list[dict]:
    """Each run's domain averages and macro average (the spread over seeds behind ``table3``)."""
    return [{"row": r.row, "seed": r.seed, **{d: r.scores.get(d, {}).get("average", 0.0) for d in DOMAINS}, "macro": r.macro,
             **({"itm": r.itm["accuracy"]} if r.itm else {}),
             **{task: r.scores[d][task] for d, task in NEW_TASKS if task in r.scores.get(d, {})}} for r in runs]


def itm_table(runs: list[RowRun]) -> dict[str, list[dict[str, float]]]:
    """Held-out ITM accuracy per row and seed, each with its Wilson 95 % interval over the pairs."""
    return {name: [{"seed": r.seed, **r.itm} for r in runs if r.row == name and r.itm]
            for name in dict.fromkeys(r.row for r in runs if r.itm)}
