"""FLAVA experiments: data of the three sources, round-robin pretraining, evaluation, Table 3 ablation.

Table 3 of the paper (objective ablation, same budget: rows MIM, MLM, FLAVA_C, FLAVA_MM, FLAVA) is
reproduced as real runs on the offline data of ``reproduce.data.scenes`` and ``reproduce.data.novels``,
and evaluated per domain as in Table 4, with small tasks standing in for the paper's 35:

* vision (paper: 22 linear probes): logistic-regression probes on frozen h_CLS,I, for the shape of a
  scene object (6 classes, held-out images) and MNIST 5k (10 classes);
* language (paper: 8 GLUE tasks, fine-tuned): probes on frozen h_CLS,T for word order (a held-out
  sentence vs. the same words shuffled, CoLA-like) and authorship (Austen vs. Melville, held-out text);
* multimodal (paper: VQAv2, SNLI-VE, Hateful Memes, Flickr30K/COCO zero-shot retrieval): zero-shot
  image<->text retrieval R@1/R@5 on scenes with held-out attribute combinations, and a visual
  entailment probe on frozen h_CLS,M (true caption vs. a one-attribute swap).

Domain average = mean of its tasks in %, macro average = mean of the three domains, a domain a row
does not report counting 0 (as the paper's MIM and MLM rows).

Deviations: probes instead of fine-tuning (the paper fine-tunes GLUE and the VQA-style tasks); the
probe's regularisation is swept on a validation split as in CLIP's protocol but over 5 values.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from reproduce.data import novels, scenes
from reproduce.flava import model as M

SOURCES = ("paired", "images", "text")


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------
def to_pixels(images: np.ndarray) -> Tensor:
    """``(N, S, S, 3)`` uint8 -> ``(N, 3, S, S)`` float in [-1, 1] (FLAVA normalises each channel)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (N, 3, S, S)
    return x / 127.5 - 1.0


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str, min_words: int = 6, max_words: int = 30) -> list[str]:
    """Split paragraphs into sentences of ``min_words``..``max_words`` words (headings dropped)."""
    out = []
    for para in text.split("\n"):
        for s in _SENTENCE.split(para.strip()):
            n = len(s.split())
            if min_words <= n <= max_words and not s.isupper():
                out.append(s)
    return out


@dataclass
class TextSources:
    """Unimodal pretraining text and the two held-out language tasks' sentences."""

    pretrain: list[str]  # train books (five Austen novels and the first 80% of Moby Dick)
    austen_heldout: list[str]  # Persuasion and Northanger Abbey (never pretrained on)
    melville_heldout: list[str]  # the last 20% of Moby Dick (never pretrained on)


def text_sources() -> TextSources:
    split = novels.splits()
    pretrain, melville = [], []
    for book in split.train:
        s = sentences(book.text)
        if book.author == "Herman Melville":
            cut = int(0.8 * len(s))
            pretrain += s[:cut]
            melville = s[cut:]
        else:
            pretrain += s
    austen = [s for book in split.valid + split.test for s in sentences(book.text)]
    return TextSources(pretrain, austen, melville)


@dataclass
class PretrainData:
    """Everything the three sources draw from, tokenised once (uint8 images, token ids, VQ codes)."""

    tokenizer: object
    vq: M.PatchVQ
    paired_images: np.ndarray  # (N, S, S, 3)
    paired_tokens: Tensor  # (N, P)
    caption_ids: Tensor  # (N, L)
    caption_mask: Tensor  # (N, L)
    negative_ids: Tensor  # (N, L) hard negatives (one attribute swapped)
    negative_mask: Tensor  # (N, L)
    captions: list[str]
    image_pool: np.ndarray  # (N_img, S, S, 3) unimodal images
    image_pool_tokens: Tensor  # (N_img, P)
    text_ids: Tensor  # (N_txt, L) unimodal text
    text_mask: Tensor  # (N_txt, L)
    emojis: dict | None


def build_pretrain_data(sizes: M.FlavaSizes, n_pairs: int, n_images: int, n_text: int, emoji_prob: float,
                        seed: int, texts: TextSources | None = None) -> PretrainData:
    """Scenes (+ emoji) pairs, unimodal scene/emoji images and novel sentences; tokenizers fitted here.

    The WordPiece vocabulary is learnt on the pretraining captions and text; the VQ codebook on the
    pretraining images. Both stay frozen afterwards.
    """
    s = sizes.image_size
    emojis = scenes.emoji_bank(s) if emoji_prob > 0 else None
    sampler = scenes.SceneSampler("train", emoji_prob=emoji_prob, emoji_names=tuple(emojis or ()))
    pairs = scenes.make_scenes(n_pairs, s, seed, sampler, emojis)
    pool = scenes.make_scenes(n_images, s, seed + 1, sampler, emojis).images
    if emojis:  # the real-image complement: every emoji alone, as unimodal images too
        names = sorted(emojis)
        pool = np.concatenate([pool, scenes.emoji_images(emojis, names, s, seed + 2)])
    texts = texts or text_sources()
    rng = np.random.default_rng(seed)
    text = [texts.pretrain[i] for i in rng.choice(len(texts.pretrain), min(n_text, len(texts.pretrain)), replace=False)]
    tokenizer = M.build_wordpiece(pairs.captions + pairs.negatives + text, sizes.vocab_size, sizes.max_text_len)
    vq = M.PatchVQ.fit(to_pixels(pairs.images), sizes.patch_size, sizes.codebook_size, seed)
    cap_ids, cap_mask = M.tokenize(tokenizer, pairs.captions, sizes.max_text_len)
    neg_ids, neg_mask = M.tokenize(tokenizer, pairs.negatives, sizes.max_text_len)
    text_ids, text_mask = M.tokenize(tokenizer, text, sizes.max_text_len)
    return PretrainData(tokenizer, vq, pairs.images, _encode(vq, pairs.images), cap_ids, cap_mask, neg_ids, neg_mask,
                        pairs.captions, pool, _encode(vq, pool), text_ids, text_mask, emojis)


def _encode(vq: M.PatchVQ, images: np.ndarray, chunk: int = 2048) -> Tensor:
    return torch.cat([vq.encode(to_pixels(images[i : i + chunk])) for i in range(0, len(images), chunk)])


class BatchSampler:
    """Draws batches of the three sources (§3.2: each update takes one full batch from one source).

    ITM pairs (§3.1): with probability ``itm_negative_prob`` a caption is replaced by a negative:
    a hard one (the same scene with one attribute swapped) with probability ``itm_hard_fraction``,
    else the caption of another image of the batch (in-batch negative).
    """

    def __init__(self, data: PretrainData, sizes: M.FlavaSizes, batch_size: int, seed: int,
                 itm_negative_prob: float = 0.5, itm_hard_fraction: float = 0.5):
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives), not {batch_size}")
        for name, p in (("itm_negative_prob", itm_negative_prob), ("itm_hard_fraction", itm_hard_fraction)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {p}")
        self.data, self.sizes, self.batch_size = data, sizes, batch_size
        self.masking = M.BlockMasking(sizes.grid)
        self.itm_negative_prob, self.itm_hard_fraction = itm_negative_prob, itm_hard_fraction
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        random.seed(seed)  # BEiT's block-mask generator draws from Python's random

    def paired(self) -> M.PairedBatch:
        d, b = self.data, self.batch_size
        idx = torch.from_numpy(self.rng.choice(len(d.captions), b, replace=False))
        negative = torch.from_numpy(self.rng.random(b) < self.itm_negative_prob)
        hard = torch.from_numpy(self.rng.random(b) < self.itm_hard_fraction)
        shift = torch.from_numpy(self.rng.integers(1, b, size=b))
        other = idx[(torch.arange(b) + shift) % b]  # another image of the batch
        captions = np.asarray(d.captions, dtype=object)
        same = torch.from_numpy(captions[other.numpy()] == captions[idx.numpy()])
        hard = hard | same  # an in-batch caption equal to ours is no negative: use the hard one
        itm_ids = torch.where((negative & hard)[:, None], d.negative_ids[idx], d.caption_ids[idx])
        itm_ids = torch.where((negative & ~hard)[:, None], d.caption_ids[other], itm_ids)  # (B, L)
        itm_mask = torch.where((negative & hard)[:, None], d.negative_mask[idx], d.caption_mask[idx])
        itm_mask = torch.where((negative & ~hard)[:, None], d.caption_mask[other], itm_mask)
        masked_ids, mlm_labels = M.mask_text(itm_ids, d.tokenizer, generator=self.generator)
        return M.PairedBatch(
            pixel_values=to_pixels(d.paired_images[idx.numpy()]), input_ids=d.caption_ids[idx],
            attention_mask=d.caption_mask[idx], image_tokens=d.paired_tokens[idx], bool_masked_pos=self.masking(b),
            itm_ids_masked=masked_ids, itm_attention_mask=itm_mask, mlm_labels=mlm_labels,
            itm_labels=(~negative).long())

    def images(self) -> M.ImageBatch:
        d = self.data
        idx = self.rng.choice(len(d.image_pool), self.batch_size, replace=False)
        return M.ImageBatch(to_pixels(d.image_pool[idx]), d.image_pool_tokens[torch.from_numpy(idx)], self.masking(self.batch_size))

    def text(self) -> M.TextBatch:
        d = self.data
        idx = torch.from_numpy(self.rng.choice(len(d.text_ids), self.batch_size, replace=False))
        masked, labels = M.mask_text(d.text_ids[idx], d.tokenizer, generator=self.generator)
        return M.TextBatch(masked, d.text_mask[idx], labels)

    def draw(self, row: M.AblationRow) -> tuple[str, object]:
        """One round-robin draw: pick a source with the row's probabilities, return a full batch of it."""
        names = [s for s in SOURCES if row.sources.get(s, 0) > 0]
        p = np.array([row.sources[s] for s in names])
        source = names[self.rng.choice(len(names), p=p / p.sum())]
        return source, getattr(self, source)()


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


def pretrain(model, row: M.AblationRow, sampler: BatchSampler, cfg: TrainConfig, progress: bool = True
             ) -> dict[str, list[float]]:
    """Round-robin pretraining of one Table 3 row; returns each loss per step (NaN where not drawn)."""
    from transformers import get_cosine_schedule_with_warmup

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.999))
    sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup, cfg.steps // 2), cfg.steps)
    names = ["mim", "mlm", "global_contrastive", "itm", "mmm_image", "mmm_text"]
    history: dict[str, list[float]] = {n: [] for n in names + ["total"]}
    model.train()
    for _ in tqdm(range(cfg.steps), desc=f"pretrain {row.name}", disable=not progress, mininterval=5):
        _, batch = sampler.draw(row)
        terms = M.losses(model, batch, row.objectives)
        loss = terms.total()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        got = dict(terms.items())
        for n in names:
            history[n].append(float(got[n].detach()) if n in got else math.nan)
        history["total"].append(float(loss))
    model.eval()
    return history


# ---------------------------------------------------------------------------------------------------
# Evaluation (Table 4's three domains, small stand-ins)
# ---------------------------------------------------------------------------------------------------
@dataclass
class ProbeTask:
    """A linear-probe task: train/test inputs (images, token ids or image-text pairs) and labels."""

    train: tuple
    train_y: np.ndarray
    test: tuple
    test_y: np.ndarray


@dataclass
class EvalData:
    vision: dict[str, ProbeTask]
    language: dict[str, ProbeTask]
    entailment: ProbeTask  # inputs are (uint8 images, ids, mask)
    retrieval_images: np.ndarray  # (R, S, S, 3) held-out combinations
    retrieval_ids: Tensor  # (R, L)
    retrieval_mask: Tensor
    retrieval_captions: list[str]


def _shuffled(sentence: str, rng: np.random.Generator) -> str:
    words = sentence.split()
    while True:
        perm = rng.permutation(len(words))
        if (perm != np.arange(len(words))).any():
            return " ".join(words[i] for i in perm)


def _split(n: int, n_train: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return perm[:n_train], perm[n_train:]


def build_eval_data(data: PretrainData, sizes: M.FlavaSizes, n_probe: int, n_retrieval: int, seed: int,
                    texts: TextSources | None = None) -> EvalData:
    """Held-out evaluation sets (fresh seeds; language from books never pretrained on)."""
    s, L, tok = sizes.image_size, sizes.max_text_len, data.tokenizer
    rng = np.random.default_rng(seed + 100)
    # vision: single-object scenes, label = shape; MNIST
    single = scenes.SceneSampler("train", two_object_prob=0.0)
    shapes_set = scenes.make_scenes(2 * n_probe, s, seed + 101, single)
    y = shapes_set.first_shape_labels()
    tr, te = _split(2 * n_probe, n_probe, rng)
    vision = {"scene shape": ProbeTask((shapes_set.images[tr],), y[tr], (shapes_set.images[te],), y[te])}
    digits, digit_y = scenes.mnist_5k(s)
    tr, te = _split(len(digits), min(n_probe, len(digits) // 2), rng)
    te = te[: min(n_probe, len(te))]
    vision["MNIST"] = ProbeTask((digits[tr],), digit_y[tr], (digits[te],), digit_y[te])
    # language: word order and authorship on held-out sentences
    texts = texts or text_sources()
    austen = [texts.austen_heldout[i] for i in rng.permutation(len(texts.austen_heldout))]
    originals = austen[:n_probe]
    word = [t if i % 2 == 0 else _shuffled(t, rng) for i, t in enumerate(originals)]
    word_y = np.array([1 - i % 2 for i in range(len(word))])
    melville = [texts.melville_heldout[i] for i in rng.permutation(len(texts.melville_heldout))]
    k = min(n_probe // 2, len(melville))
    author = austen[n_probe : n_probe + k] + melville[:k]
    author_y = np.array([0] * k + [1] * k)
    language = {}
    for name, txt, lab in (("word order", word, word_y), ("authorship", author, author_y)):
        ids, mask = M.tokenize(tok, txt, L)
        tr, te = _split(len(txt), len(txt) // 2, rng)
        language[name] = ProbeTask((ids[tr], mask[tr]), lab[tr], (ids[te], mask[te]), lab[te])
    # multimodal: entailment probe (train distribution -> held-out combinations) and retrieval
    def pairs(split: str, n: int, sd: int):
        sampler = scenes.SceneSampler(split, emoji_prob=0.0)
        sc = scenes.make_scenes(n, s, sd, sampler)
        flip = np.arange(n) % 2 == 1
        txt = [neg if f else cap for cap, neg, f in zip(sc.captions, sc.negatives, flip)]
        ids, mask = M.tokenize(tok, txt, L)
        return (sc.images, ids, mask), (~flip).astype(np.int64)
    ent_train, ent_train_y = pairs("train", n_probe, seed + 102)
    ent_test, ent_test_y = pairs("test", n_probe, seed + 103)
    retrieval = scenes.make_scenes(n_retrieval, s, seed + 104, scenes.SceneSampler("test"))
    r_ids, r_mask = M.tokenize(tok, retrieval.captions, L)
    return EvalData(vision, language, ProbeTask(ent_train, ent_train_y, ent_test, ent_test_y),
                    retrieval.images, r_ids, r_mask, retrieval.captions)


@torch.no_grad()
def image_features(model, images: np.ndarray, chunk: int = 256) -> np.ndarray:
    """h_CLS,I: token 0 of the image encoder's final layer, ``(N, D)``."""
    return torch.cat([model.flava(pixel_values=to_pixels(images[i : i + chunk])).image_embeddings[:, 0]
                      for i in range(0, len(images), chunk)]).numpy()


@torch.no_grad()
def text_features(model, ids: Tensor, mask: Tensor, chunk: int = 512) -> np.ndarray:
    """h_CLS,T, ``(N, D)``."""
    return torch.cat([model.flava(input_ids=ids[i : i + chunk], attention_mask=mask[i : i + chunk]).text_embeddings[:, 0]
                      for i in range(0, len(ids), chunk)]).numpy()


@torch.no_grad()
def multimodal_features(model, images: np.ndarray, ids: Tensor, mask: Tensor, chunk: int = 256) -> np.ndarray:
    """h_CLS,M of the unmasked pair, ``(N, D)``."""
    out = []
    for i in range(0, len(ids), chunk):
        o = model.flava(pixel_values=to_pixels(images[i : i + chunk]), input_ids=ids[i : i + chunk],
                        attention_mask=mask[i : i + chunk])
        out.append(o.multimodal_embeddings[:, 0])
    return torch.cat(out).numpy()


@torch.no_grad()
def contrastive_embeddings(model, images: np.ndarray, ids: Tensor, mask: Tensor, chunk: int = 256) -> tuple[Tensor, Tensor]:
    """The GC embeddings (projected, L2-normalised h_CLS), ``(N, E)`` each: what zero-shot retrieval uses."""
    img, txt = [], []
    for i in range(0, len(ids), chunk):
        o = model.flava(pixel_values=to_pixels(images[i : i + chunk]), input_ids=ids[i : i + chunk],
                        attention_mask=mask[i : i + chunk], skip_multimodal_encoder=True)
        a, b = M.contrastive_embeddings(model, o.image_embeddings, o.text_embeddings)
        img.append(a)
        txt.append(b)
    return torch.cat(img), torch.cat(txt)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0,
                 cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)) -> float:
    """CLIP-protocol linear probe: L-BFGS logistic regression, C swept on a validation split; accuracy in %."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # OpenMP spinning on shared cores is far slower than one thread
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
        out.append({"caption": ev.retrieval_captions[q], "images": [ev.retrieval_images[i].tolist() for i in best],
                    "captions": [ev.retrieval_captions[i] for i in best],
                    "hits": [ev.retrieval_captions[i] == ev.retrieval_captions[q] for i in best]})
    return out
