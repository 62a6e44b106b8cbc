"""FLAVA measurements: round-robin pretraining, evaluation, the Table 3 ablation, the HF path.

Table 3 of the paper (objective ablation, same budget: rows MIM, MLM, FLAVA_C, FLAVA_MM, FLAVA, and
FLAVA+init = row 6, full FLAVA started from the MIM and MLM rows' trained encoders) is reproduced as
real runs on the offline data of ``reproduce.flava.data``, and evaluated per domain as in Table 4,
with small tasks standing in for the paper's 35:

* vision (paper: 22 linear probes): logistic-regression probes on frozen h_CLS,I, for the shape of a
  scene object (6 classes, held-out images) and MNIST 5k (10 classes);
* language (paper: 8 GLUE tasks, fine-tuned): probes on frozen h_CLS,T for word order (CoLA-like: a
  text vs. the same words shuffled) on held-out captions and on held-out novel sentences, and
  authorship (Austen vs. Melville, held-out text);
* multimodal (paper: VQAv2, SNLI-VE, Hateful Memes, Flickr30K/COCO zero-shot retrieval): zero-shot
  image<->text retrieval R@1/R@5 on scenes with held-out attribute combinations, and a visual
  entailment probe on frozen h_CLS,M (true caption vs. a one-attribute swap).

Domain average = mean of its tasks in %, macro average = mean of the three domains, a domain a row
does not report counting 0 (as the paper's MIM and MLM rows).

Deviations: probes instead of fine-tuning (the paper fine-tunes GLUE and the VQA-style tasks); the
probe's regularisation is swept on a validation split as in CLIP's protocol but over 5 values.

Everything here returns plain data; the claims are made in ``reproduce.flava.sections``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from reproduce import runtime
from reproduce.data import pmd
from reproduce.flava import model as M
from reproduce.flava.data import (BatchSampler, EvalData, PretrainData, TextSources, build_eval_data,
                                  build_pretrain_data, text_sources, to_pixels)

# ---------------------------------------------------------------------------------------------------
# Pretraining
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (§A, Table A.2: AdamW 0.9/0.999, weight decay 0.1, warmup then cosine)."""

    steps: int
    batch_size: int
    lr: float = 1e-3
    warmup: int = 10_000
    weight_decay: float = 0.1

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"steps >= 1 and batch_size >= 2 required, got {self.steps}, {self.batch_size}")
        if not 0 <= self.warmup <= self.steps * 10 or self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"bad optimisation settings: lr={self.lr}, warmup={self.warmup}, wd={self.weight_decay}")


class FlavaPretrainer(torch.nn.Module):
    """The model plus a row's objectives as one module whose forward is the loss of one batch.

    ``reproduce.train`` hands it the batch dict (a process's shard); going through ``forward`` keeps
    data-parallel wrappers in the path. ``last`` keeps the latest value of each loss for the history.
    """

    BATCHES = {"paired": M.PairedBatch, "images": M.ImageBatch, "text": M.TextBatch}

    def __init__(self, model, objectives: M.Objectives):
        super().__init__()
        self.model, self.objectives = model, objectives
        self.last: dict[str, float] = {}

    def forward(self, source: str, **tensors: Tensor) -> Tensor:
        terms = M.losses(self.model, self.BATCHES[source](**tensors), self.objectives)
        self.last = {name: float(value.detach()) for name, value in terms.items()}
        return terms.total()


def batch_stream(sampler: BatchSampler, row: M.AblationRow):
    """Endless global batches for ``reproduce.train``: dicts of tensors plus the source's name."""
    while True:
        source, batch = sampler.draw(row)
        yield {"source": source, **{f.name: getattr(batch, f.name) for f in fields(batch)}}


LOSS_NAMES = ("mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text")


def pretrain(model, row: M.AblationRow, sampler: BatchSampler, cfg: TrainConfig, device: str = "auto"
             ) -> dict[str, list[float]]:
    """Round-robin pretraining of one Table 3 row through the shared accelerate loop (``reproduce.train``).

    Returns each loss per step (NaN where the step's source does not carry it) and ``total``.
    """
    from transformers import get_cosine_schedule_with_warmup

    from reproduce import train

    wd = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_wd = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": wd, "weight_decay": cfg.weight_decay}, {"params": no_wd, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.999))
    sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup, cfg.steps // 2), cfg.steps)
    trainer = FlavaPretrainer(model, row.objectives)
    history: dict[str, list[float]] = {n: [] for n in (*LOSS_NAMES, "total")}

    def loss_fn(module, batch):
        loss = module(**batch)
        inner = getattr(module, "module", module)  # unwrapped under data parallel
        for n in LOSS_NAMES:
            history[n].append(inner.last.get(n, math.nan))
        history["total"].append(float(loss.detach()))
        return loss

    train.train(trainer, opt, batch_stream(sampler, row), loss_fn,
                train.TrainConfig(steps=cfg.steps, log_every=max(1, cfg.steps // 10), desc=f"pretrain {row.name}"),
                scheduler=sched, accelerator=train.make_accelerator(device))
    model.eval()
    return history



# ---------------------------------------------------------------------------------------------------
# Evaluation (Table 4's three domains, small stand-ins)
# ---------------------------------------------------------------------------------------------------
def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def image_features(model, images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """h_CLS,I: token 0 of the image encoder's final layer, ``(N, D)``."""
    dev = _device(model)
    return torch.cat([model.flava(pixel_values=to_pixels(images[i : i + chunk]).to(dev)).image_embeddings[:, 0].cpu()
                      for i in range(0, len(images), chunk)]).numpy()


@torch.no_grad()
def text_features(model, ids: Tensor, mask: Tensor, chunk: int = 512) -> np.ndarray:
    """h_CLS,T, ``(N, D)``."""
    dev = _device(model)
    return torch.cat([model.flava(input_ids=ids[i : i + chunk].to(dev), attention_mask=mask[i : i + chunk].to(dev)
                                  ).text_embeddings[:, 0].cpu() for i in range(0, len(ids), chunk)]).numpy()


@torch.no_grad()
def multimodal_features(model, images: np.ndarray, ids: Tensor, mask: Tensor, chunk: int = 256) -> np.ndarray:
    """h_CLS,M of the unmasked pair, ``(N, D)``."""
    dev, out = _device(model), []
    for i in range(0, len(ids), chunk):
        o = model.flava(pixel_values=to_pixels(images[i : i + chunk]).to(dev), input_ids=ids[i : i + chunk].to(dev),
                        attention_mask=mask[i : i + chunk].to(dev))
        out.append(o.multimodal_embeddings[:, 0].cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def contrastive_embeddings(model, images: np.ndarray | Tensor, ids: Tensor, mask: Tensor, chunk: int = 256
                           ) -> tuple[Tensor, Tensor]:
    """The GC embeddings (projected, L2-normalised h_CLS), ``(N, E)`` each: what zero-shot retrieval uses.

    ``images``: uint8 ``(N, S, S, 3)`` (our models), or pixel values ``(N, 3, S, S)`` already
    prepared by an image processor (the released model).
    """
    dev, img, txt = _device(model), [], []
    pixels = images if isinstance(images, Tensor) else None
    for i in range(0, len(ids), chunk):
        px = pixels[i : i + chunk] if pixels is not None else to_pixels(images[i : i + chunk])
        o = model.flava(pixel_values=px.to(dev), input_ids=ids[i : i + chunk].to(dev),
                        attention_mask=mask[i : i + chunk].to(dev), skip_multimodal_encoder=True)
        a, b = M.contrastive_embeddings(model, o.image_embeddings, o.text_embeddings)
        img.append(a.cpu())
        txt.append(b.cpu())
    return torch.cat(img), torch.cat(txt)


def png_base64(image: np.ndarray) -> str:
    """An ``(S, S, 3)`` uint8 image as base64 PNG text: figures read it back from the results file."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0,
                 cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> float:
    """CLIP-protocol linear probe: L-BFGS logistic regression, C swept on a validation split; accuracy in %."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with threadpool_limits(1), warnings.catch_warnings():  # one thread: OpenMP spinning on shared cores is far slower
        warnings.simplefilter("ignore", ConvergenceWarning)  # a weak C that stops at max_iter loses the sweep anyway
        return _linear_probe(LogisticRegression, StandardScaler, train_x, train_y, test_x, test_y, seed, cs)


def _linear_probe(LogisticRegression, StandardScaler, train_x, train_y, test_x, test_y, seed, cs) -> float:
    scaler = StandardScaler().fit(train_x)
    xtr, xte = scaler.transform(train_x), scaler.transform(test_x)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(xtr))
    val, fit = perm[: len(perm) // 5], perm[len(perm) // 5 :]
    best = max(cs, key=lambda c: LogisticRegression(C=c, max_iter=1000).fit(xtr[fit], train_y[fit]).score(xtr[val], train_y[val]))
    return 100.0 * LogisticRegression(C=best, max_iter=1000).fit(xtr, train_y).score(xte, test_y)


def retrieval_recalls(image_emb: Tensor, text_emb: Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Zero-shot TR/IR R@k (%). A hit is any retrieved item whose caption equals the query's (captions repeat)."""
    sim = image_emb @ text_emb.T  # (R, R)
    _, cap_id = np.unique(np.asarray(captions), return_inverse=True)
    cap_id = torch.from_numpy(cap_id)
    out = {}
    for k in ks:
        top_text = sim.topk(k, dim=1).indices  # (R, k) texts per image
        top_image = sim.topk(k, dim=0).indices.T  # (R, k) images per text
        out[f"TR R@{k}"] = 100.0 * (cap_id[top_text] == cap_id[:, None]).any(1).float().mean().item()
        out[f"IR R@{k}"] = 100.0 * (cap_id[top_image] == cap_id[:, None]).any(1).float().mean().item()
    return out


def evaluate(model, row: M.AblationRow, ev: EvalData, seed: int = 0) -> dict[str, dict[str, float]]:
    """Scores (%) per domain and task for the domains the row reports; ``"average"`` per domain."""
    model.eval()
    scores: dict[str, dict[str, float]] = {}
    if "vision" in row.domains:
        scores["vision"] = {name: linear_probe(image_features(model, t.train[0]), t.train_y,
                                               image_features(model, t.test[0]), t.test_y, seed) for name, t in ev.vision.items()}
    if "language" in row.domains:
        scores["language"] = {name: linear_probe(text_features(model, *t.train), t.train_y,
                                                 text_features(model, *t.test), t.test_y, seed) for name, t in ev.language.items()}
    if "multimodal" in row.domains:
        img, txt = contrastive_embeddings(model, ev.retrieval_images, ev.retrieval_ids, ev.retrieval_mask)
        mm = retrieval_recalls(img, txt, ev.retrieval_captions)
        t = ev.entailment
        mm["entailment"] = linear_probe(multimodal_features(model, *t.train), t.train_y, multimodal_features(model, *t.test), t.test_y, seed)
        scores["multimodal"] = mm
    for domain in scores.values():
        domain["average"] = float(np.mean(list(domain.values())))
    return scores


def macro_average(scores: dict[str, dict[str, float]]) -> float:
    """Mean of the three domain averages, a missing domain counting 0 (Table 3)."""
    return sum(scores.get(d, {}).get("average", 0.0) for d in ("vision", "language", "multimodal")) / 3


@torch.no_grad()
def similarity_matrix(model, ev: EvalData, n: int = 8) -> list[list[float]]:
    """Cosine similarities of the first ``n`` held-out pairs' GC embeddings, ``(n, n)``."""
    img, txt = contrastive_embeddings(model, ev.retrieval_images[:n], ev.retrieval_ids[:n], ev.retrieval_mask[:n])
    return (img @ txt.T).tolist()


@torch.no_grad()
def retrieval_examples(model, ev: EvalData, queries: int = 4, top: int = 3, seed: int = 0) -> list[dict]:
    """A few query captions with their top retrieved held-out images (zero-shot, GC embeddings)."""
    img, txt = contrastive_embeddings(model, ev.retrieval_images, ev.retrieval_ids, ev.retrieval_mask)
    rng = np.random.default_rng(seed)
    out = []
    for q in rng.choice(len(ev.retrieval_captions), queries, replace=False):
        sims = img @ txt[q]  # (R,)
        best = sims.topk(top).indices.tolist()
        out.append({"caption": ev.retrieval_captions[q], "images": [png_base64(ev.retrieval_images[i]) for i in best],
                    "captions": [ev.retrieval_captions[i] for i in best],
                    "hits": [ev.retrieval_captions[i] == ev.retrieval_captions[q] for i in best]})
    return out


# ---------------------------------------------------------------------------------------------------
# The notebook's experiments
# ---------------------------------------------------------------------------------------------------
DOMAINS = ("vision", "language", "multimodal")


def sizes_from(params) -> M.FlavaSizes:
    return M.FlavaSizes(**{f.name: params[f.name] for f in fields(M.FlavaSizes)})


def rows_from(params) -> dict[str, M.AblationRow]:
    """The requested Table 3 rows, full FLAVA with the sampling probabilities of the parameters."""
    total = params.p_paired + params.p_images + params.p_text
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"p_paired + p_images + p_text must be 1, got {total:g}")
    rows = M.table3_rows(params.p_paired, params.p_images, params.p_text)
    chosen = {name: rows[name] for name in params.rows}
    missing = M.missing_init_sources(chosen)
    if missing:  # config.resolve refuses this already; this guards callers that build rows by hand
        row, names = next(iter(missing.items()))
        raise ValueError(f"row {row!r} is initialised from rows {names}, which are not in rows {list(params.rows)}; "
                         f"add them")
    return chosen


def prepare(params, texts: TextSources | None = None) -> tuple[PretrainData, EvalData]:
    """Pretraining sources and held-out evaluation sets, built once for all rows and seeds.

    With ``pairs_source='pmd'`` the pairs are streamed from the hub (``reproduce.data.pmd``); the
    evaluation stays on held-out scenes, MNIST and novels either way.
    """
    sizes = sizes_from(params)
    pairs = None
    if params.pairs_source == "pmd":  # first: offline, this fails at once, before any other work
        pairs = pmd.hub_pairs(params.pmd_dataset, params.pmd_subsets, params.n_pairs, sizes.image_size, seed=params.seed)
    texts = texts or text_sources()
    data = build_pretrain_data(sizes, params.n_pairs, params.n_images, params.n_text, params.emoji_prob, params.seed,
                               texts, pairs)
    return data, build_eval_data(data, sizes, params.n_probe, params.n_retrieval, params.seed, texts)


def illustration(data: PretrainData, sizes: M.FlavaSizes, seed: int, n: int = 4) -> dict:
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


@dataclass
class RowRun:
    row: str
    seed: int
    scores: dict[str, dict[str, float]]
    macro: float
    losses: dict[str, list[float]]  # per objective, mean over windows of the run (NaN-free)
    train_s: float


def _windows(values: list[float], n: int = 20) -> list[float]:
    """Mean of each of ``n`` equal windows, skipping NaN (steps whose source lacks the loss)."""
    arr = np.asarray(values, dtype=np.float64)
    out = []
    for chunk in np.array_split(arr, min(n, len(arr))):
        ok = chunk[~np.isnan(chunk)]
        out.append(float(ok.mean()) if len(ok) else math.nan)
    return out


def row_steps(row: M.AblationRow, steps: int) -> int:
    """Updates of a row: ``steps`` draws of its main source (§4: "PMD sampled for 150K iterations in
    total (all ablations)"), so full FLAVA adds its unimodal batches on top: steps / p_paired."""
    p = row.sources.get("paired", 0.0)
    return steps if p in (0.0, 1.0) else round(steps / p)


def training_order(rows: dict[str, M.AblationRow]) -> list[str]:
    """Row names in the order they must train: a row after every row it initialises from."""
    order: list[str] = []
    pending = dict(rows)
    while pending:
        ready = [n for n, r in pending.items() if set(r.init.values()) <= set(order)]
        if not ready:
            raise ValueError(f"rows {sorted(pending)} initialise from rows that are missing or form a cycle")
        order += ready
        for n in ready:
            del pending[n]
    return order


def build_row_model(sizes: M.FlavaSizes, row: M.AblationRow, seed: int, trained: dict[tuple[str, str, int], dict]):
    """A fresh model for ``row`` and ``seed``; for row 6 its image and text parts are loaded from the
    trained rows named in ``row.init`` (``trained``: (row, part, seed) -> ``M.encoder_state``)."""
    model = M.build_model(sizes, seed)
    if row.init:
        missing = [(src, part) for part, src in row.init.items() if (src, part, seed) not in trained]
        if missing:
            raise ValueError(f"row {row.name!r} (seed {seed}) needs the trained parts {missing}; train those rows first")
        M.initialise_from(model, {part: trained[(src, part, seed)] for part, src in row.init.items()})
    return model


def run_ablation(params, data: PretrainData, ev: EvalData, device: str = "auto") -> tuple[list[RowRun], dict]:
    """Train and evaluate every requested row for every seed (the same budget: ``steps`` draws of the
    row's main source, see ``row_steps``). Rows that initialise from others (row 6) train after them,
    from their trained encoders of the same seed.

    Returns the runs and, from full FLAVA (or the last paired row) of the first seed, the similarity
    matrix of held-out pairs before and after pretraining and a few zero-shot retrieval examples.
    """
    import time

    sizes, rows = sizes_from(params), rows_from(params)
    shown = next((n for n in ("FLAVA", "FLAVA_MM", "FLAVA_C", M.INIT_ROW) if n in rows), None)
    wanted = {(src, part) for row in rows.values() for part, src in row.init.items()}  # parts later rows copy
    trained: dict[tuple[str, str, int], dict] = {}
    runs, extras = [], {}
    for name in training_order(rows):
        row = rows[name]
        for seed in params.seeds:
            model = build_row_model(sizes, row, seed, trained)
            if name == shown and seed == params.seeds[0]:
                extras["similarity_before"] = similarity_matrix(model, ev)
            sampler = BatchSampler(data, sizes, params.batch_size, seed, params.itm_negative_prob, params.itm_hard_fraction)
            cfg = TrainConfig(row_steps(row, params.steps), params.batch_size, params.lr, params.warmup, params.weight_decay)
            t0 = time.perf_counter()
            history = pretrain(model, row, sampler, cfg, device)
            train_s = time.perf_counter() - t0
            for src, part in wanted:
                if src == name:
                    trained[(name, part, seed)] = M.encoder_state(model, part)
            scores = evaluate(model, row, ev, seed)
            losses = {k: _windows(v) for k, v in history.items() if not all(math.isnan(x) for x in v)}
            runs.append(RowRun(name, seed, scores, macro_average(scores), losses, train_s))
            if name == shown and seed == params.seeds[0]:
                extras.update(row=name, similarity_after=similarity_matrix(model, ev),
                              similarity_captions=ev.retrieval_captions[: len(extras["similarity_before"])],
                              retrieval_examples=retrieval_examples(model, ev, seed=params.seed))
    order = list(rows)
    runs.sort(key=lambda r: order.index(r.row))  # the table in the requested order, seeds in order within a row
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


def hf_path_check(data: PretrainData, sizes: M.FlavaSizes, seed: int) -> dict:
    """Hugging Face's ``FlavaForPreTraining`` (our sizes, via config overrides): one AdamW step on one
    batch of each source, and the gap between its losses and ours on the same batches without negatives."""
    model = M.build_model(sizes, seed).train()
    sampler = BatchSampler(data, sizes, batch_size=8, seed=seed)
    batches = {"paired": sampler.paired(), "images": sampler.images(), "text": sampler.text()}
    everything = M.Objectives(mim=True, mlm=True, gc=True, mmm=True, itm=True)
    gap = 0.0
    for name, batch in batches.items():
        check = batch
        if name == "paired":  # HF feeds one text to both passes: compare on a batch whose ITM texts all match
            ids = batch.itm_ids_masked.where(batch.mlm_labels.eq(M.CE_IGNORE), batch.mlm_labels)
            check = M.PairedBatch(batch.pixel_values, ids, batch.itm_attention_mask, batch.image_tokens, batch.bool_masked_pos,
                                  batch.itm_ids_masked, batch.itm_attention_mask, batch.mlm_labels, torch.ones_like(batch.itm_labels))
        with torch.no_grad():
            ours = dict(M.losses(model, check, everything, gather=False).items())
            theirs = M.hf_pretraining_losses(model, check)
        gap = max([gap] + [abs(ours[k].item() - theirs[k].item()) for k in theirs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    step_losses = {}
    for batch in batches.values():
        got = M.hf_pretraining_losses(model, batch)
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


def try_flava_full(ev: EvalData | None = None) -> dict:
    """Start from ``facebook/flava-full`` (gpu profile): load it and, with ``ev``, score its zero-shot
    retrieval on our held-out scenes. Offline, record the error the loader gives (within ~2 s)."""
    from reproduce import hf

    try:
        model, report = M.load_flava_full()
    except hf.HubOfflineError as error:
        return {"loaded": False, "error": str(error)}
    out = {"loaded": True, "report": str(report), "parameters": sum(p.numel() for p in model.parameters())}
    if ev is not None:
        from transformers import FlavaProcessor

        processor = FlavaProcessor.from_pretrained(M.FLAVA_FULL)  # the hub answered the model: it has the processor
        model.to(runtime.pick_device("auto"))
        out["zero_shot_heldout_scenes"] = released_zero_shot(model, processor.image_processor, processor.tokenizer, ev)
    return out



def per_seed(runs: list[RowRun]) -> list[dict]:
    """Each run's domain averages and macro average (the spread over seeds behind ``table3``)."""
    return [{"row": r.row, "seed": r.seed, **{d: r.scores.get(d, {}).get("average", 0.0) for d in DOMAINS}, "macro": r.macro}
            for r in runs]
