"""FLAVA's own data: the three pretraining sources and the held-out evaluation sets.

* Pretraining (§3.2, Table A.2): image-caption pairs (generated scenes, or PMD pairs from
  ``reproduce.data.pmd``) with one-attribute swaps as hard ITM negatives; unimodal images (more scenes
  and every emoji alone); unimodal text (sentences of the novels of ``reproduce.data.novels``). The
  WordPiece vocabulary and the VQ image codebook are fitted here once and stay frozen.
* ``BatchSampler``: round-robin draws, one full batch of one source per update, with the ITM negatives.
* Evaluation (Table 4's three domains, small stand-ins): vision probe sets (held-out scenes, MNIST),
  language fine-tuning sets (replaced-token detection on held-out captions and novel sentences,
  authorship), held-out ITM pairs and retrieval pairs with held-out attribute combinations.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from reproduce.data import novels, pmd, scenes
from reproduce.flava.ablation import AblationRow
from reproduce.flava.masking import BlockMasking, mask_text
from reproduce.flava.model import FlavaSizes
from reproduce.flava.objectives import ImageBatch, PairedBatch, TextBatch
from reproduce.flava.tokenisers import PatchVQ, build_wordpiece, tokenize

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
    vq: PatchVQ
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


def other_captions(captions: list[str], rng: np.random.Generator, tries: int = 20) -> list[str]:
    """For each caption, the caption of another random pair that reads differently: the ITM negatives
    of hub pairs, which have no one-attribute swaps (falls back to any other caption after ``tries``)."""
    n, out = len(captions), []
    if n < 2:
        raise ValueError("ITM negatives need at least two pairs")
    for i, caption in enumerate(captions):
        for _ in range(tries):
            j = int((i + rng.integers(1, n)) % n)  # never i itself
            if captions[j] != caption:
                break
        out.append(captions[j])
    return out


def build_pretrain_data(sizes: FlavaSizes, n_pairs: int, n_images: int, n_text: int, emoji_prob: float,
                        seed: int, texts: TextSources | None = None, pairs: pmd.ImageCaptionPairs | None = None,
                        vq_fit_images: int = 0) -> PretrainData:
    """Paired data, unimodal scene/emoji images and novel sentences; tokenizers fitted here.

    The pairs are ``n_pairs`` generated scenes (+ emoji), with one-attribute swaps as hard ITM
    negatives, unless ``pairs`` (e.g. PMD from ``reproduce.data.pmd.hub_pairs``) are given; those have
    the captions of other pairs as their ITM negatives. The WordPiece vocabulary is learnt on the
    pretraining captions and text; the VQ codebook on the paired images (``vq_fit_images`` of them drawn
    at random, 0 = all: only those are converted to float). Both stay frozen afterwards.
    """
    s = sizes.image_size
    emojis = scenes.emoji_bank(s) if emoji_prob > 0 else None
    sampler = scenes.SceneSampler("train", emoji_prob=emoji_prob, emoji_names=tuple(emojis or ()))
    if pairs is None:
        generated = scenes.make_scenes(n_pairs, s, seed, sampler, emojis)
        images, captions, negatives = generated.images, generated.captions, generated.negatives
    else:
        if pairs.images.shape[1:] != (s, s, 3):
            raise ValueError(f"pairs hold {pairs.images.shape[1:]} images; image_size {s} needs ({s}, {s}, 3)")
        images, captions = pairs.images, pairs.captions
        negatives = other_captions(captions, np.random.default_rng(seed + 3))
    pool = scenes.make_scenes(n_images, s, seed + 1, sampler, emojis).images
    if emojis:  # the real-image complement: every emoji alone, as unimodal images too
        names = sorted(emojis)
        pool = np.concatenate([pool, scenes.emoji_images(emojis, names, s, seed + 2)])
    texts = texts or text_sources()
    rng = np.random.default_rng(seed)
    text = [texts.pretrain[i] for i in rng.choice(len(texts.pretrain), min(n_text, len(texts.pretrain)), replace=False)]
    tokenizer = build_wordpiece(captions + negatives + text, sizes.vocab_size, sizes.max_text_len)
    vq = PatchVQ.fit(to_pixels(vq_fit_subsample(images, vq_fit_images, seed)), sizes.patch_size, sizes.codebook_size, seed)
    cap_ids, cap_mask = tokenize(tokenizer, captions, sizes.max_text_len)
    neg_ids, neg_mask = tokenize(tokenizer, negatives, sizes.max_text_len)
    text_ids, text_mask = tokenize(tokenizer, text, sizes.max_text_len)
    return PretrainData(tokenizer, vq, images, _encode(vq, images), cap_ids, cap_mask, neg_ids, neg_mask,
                        captions, pool, _encode(vq, pool), text_ids, text_mask, emojis)


def vq_fit_subsample(images: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``images`` drawn without replacement (sorted), or all of them when ``n`` is 0 or >= their number.

    The k-means sees at most ``PatchVQ.fit``'s ``max_patches`` patches anyway; converting every paired
    image to float first would take 30k x 3 x 224 x 224 x 4 B = 18 GB of host memory (the gpu profile).
    """
    if n <= 0 or n >= len(images):
        return images
    return images[np.sort(np.random.default_rng(seed + 7).choice(len(images), n, replace=False))]


def _encode(vq: PatchVQ, images: np.ndarray, chunk: int = 2048) -> Tensor:
    return torch.cat([vq.encode(to_pixels(images[i : i + chunk])) for i in range(0, len(images), chunk)])


class BatchSampler:
    """Draws batches of the three sources (§3.2: each update takes one full batch from one source).

    ITM pairs (§3.1): with probability ``itm_negative_prob`` a caption is replaced by a negative:
    a hard one (the same scene with one attribute swapped) with probability ``itm_hard_fraction``,
    else the caption of another image of the batch (in-batch negative).
    """

    def __init__(self, data: PretrainData, sizes: FlavaSizes, batch_size: int, seed: int,
                 itm_negative_prob: float = 0.5, itm_hard_fraction: float = 0.5):
        if batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives), not {batch_size}")
        for name, p in (("itm_negative_prob", itm_negative_prob), ("itm_hard_fraction", itm_hard_fraction)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {p}")
        self.data, self.sizes, self.batch_size = data, sizes, batch_size
        self.masking = BlockMasking(sizes.grid)
        self.itm_negative_prob, self.itm_hard_fraction = itm_negative_prob, itm_hard_fraction
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        random.seed(seed)  # BEiT's block-mask generator draws from Python's random

    def paired(self) -> PairedBatch:
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
        masked_ids, mlm_labels = mask_text(itm_ids, d.tokenizer, generator=self.generator)
        return PairedBatch(
            pixel_values=to_pixels(d.paired_images[idx.numpy()]), input_ids=d.caption_ids[idx],
            attention_mask=d.caption_mask[idx], image_tokens=d.paired_tokens[idx], bool_masked_pos=self.masking(b),
            itm_ids_masked=masked_ids, itm_attention_mask=itm_mask, mlm_labels=mlm_labels,
            itm_labels=(~negative).long())

    def images(self) -> ImageBatch:
        d = self.data
        idx = self.rng.choice(len(d.image_pool), self.batch_size, replace=False)
        return ImageBatch(to_pixels(d.image_pool[idx]), d.image_pool_tokens[torch.from_numpy(idx)], self.masking(self.batch_size))

    def text(self) -> TextBatch:
        d = self.data
        idx = torch.from_numpy(self.rng.choice(len(d.text_ids), self.batch_size, replace=False))
        masked, labels = mask_text(d.text_ids[idx], d.tokenizer, generator=self.generator)
        return TextBatch(masked, d.text_mask[idx], labels)

    def draw(self, row: AblationRow) -> tuple[str, object]:
        """One round-robin draw: pick a source with the row's probabilities, return a full batch of it."""
        names = [s for s in SOURCES if row.sources.get(s, 0) > 0]
        p = np.array([row.sources[s] for s in names])
        source = names[self.rng.choice(len(names), p=p / p.sum())]
        return source, getattr(self, source)()



# ---------------------------------------------------------------------------------------------------
# Evaluation sets (Table 4's three domains, small stand-ins)
# ---------------------------------------------------------------------------------------------------
@dataclass
class ProbeTask:
    """A linear-probe task: train/test inputs (images, token ids or image-text pairs) and labels."""

    train: tuple
    train_y: np.ndarray
    test: tuple
    test_y: np.ndarray
    texts: tuple | None = None  # (train, test) texts where a baseline reads them (scene_qa: the questions)


@dataclass
class EvalData:
    vision: dict[str, ProbeTask]  # linear probes on frozen h_CLS,I
    language: dict[str, ProbeTask]  # fine-tuned text encoder (inputs: ids, mask)
    itm: ProbeTask  # held-out ITM pairs (uint8 images, ids, mask): true caption or a one-attribute swap (test only)
    retrieval_images: np.ndarray  # (R, S, S, 3) held-out combinations
    retrieval_ids: Tensor  # (R, L)
    retrieval_mask: Tensor
    retrieval_captions: list[str]
    scene_qa: ProbeTask | None = None  # fine-tuned fused task (inputs: uint8 images, ids, mask), ``scene_qa``
    cloze: ProbeTask | None = None  # frozen-probe cloze on held-out novel sentences (inputs: ids, mask, position)


# ---------------------------------------------------------------------------------------------------
# The fused task (issue #28): questions about generated scenes whose answer needs image and text
# ---------------------------------------------------------------------------------------------------
QA_ANSWERS = tuple(scenes.COLOURS)  # answer classes: the 8 colours
_SIDE = {"to the left of": ("left", "right"), "to the right of": ("right", "left"), "above": ("top", "bottom"),
         "below": ("bottom", "top")}  # where objects[0] and objects[1] stand (scenes._centres)


def scene_qa(n: int, size: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``n`` two-object scenes (two different colours) with one question each about the colour of one
    of the two objects, picked by where it stands ("what colour is the left object", from the scene's
    relation) or, where the two sizes differ, by its size ("what colour is the large object"). The
    question alone does not tell which of 8 colours it is, and the image alone does not tell which of
    its two objects is asked about: the answer needs both (VQAv2's role in Table 3, a stand-in; colour
    and place, not shape, because at 32 px a shape is a few pixels). Returns uint8 images
    ``(n, S, S, 3)``, questions and answer ids (into ``QA_ANSWERS``)."""
    rng = np.random.default_rng(seed)
    sampler = scenes.SceneSampler("train", two_object_prob=1.0)
    kept: list = []
    while len(kept) < n:  # keep scenes whose two objects differ in colour
        sc = sampler.sample(rng)
        if sc.objects[0].colour != sc.objects[1].colour:
            kept.append(sc)
    backgrounds = scenes.textured_backgrounds(scenes.texture_tile(size, rng))
    images = np.stack([scenes.render(sc, size, rng, backgrounds=backgrounds) for sc in kept])  # (n, S, S, 3)
    questions, answers = [], []
    for sc in kept:
        k = int(rng.integers(2))
        by_size = sc.objects[0].size != sc.objects[1].size and rng.random() < 0.5
        where = sc.objects[k].size if by_size else _SIDE[sc.relation][k]
        questions.append(f"what colour is the {where} object")
        answers.append(QA_ANSWERS.index(sc.objects[k].colour))
    return images, questions, np.asarray(answers, dtype=np.int64)


def question_prior_accuracy(train_q: list[str], train_y: np.ndarray, test_q: list[str], test_y: np.ndarray) -> float:
    """The unimodal (question-only) baseline: each test question answered with the most frequent answer
    of the same question in the train split (unseen questions count as wrong). In %. Where the answers
    are near-uniform per question this prior overfits the train split and can land below the majority
    class: report it beside the majority, not as the best text-only answer."""
    from collections import Counter

    best = {q: Counter(y for qq, y in zip(train_q, train_y) if qq == q).most_common(1)[0][0] for q in set(train_q)}
    return 100.0 * float(np.mean([best.get(q, -1) == y for q, y in zip(test_q, test_y)]))


# ---------------------------------------------------------------------------------------------------
# The cloze task (issue #28): a masked frequent word of a held-out sentence, read off a frozen encoder
# ---------------------------------------------------------------------------------------------------
CLOZE_WORDS = 20  # answer classes: the most frequent whole-word tokens of the task's train sentences


def cloze_task(tokenizer, sentences_: list[str], max_len: int, n_train: int, rng: np.random.Generator,
               n_words: int = CLOZE_WORDS) -> tuple[ProbeTask, list[str]]:
    """One position per sentence whose token is among the ``n_words`` most frequent alphabetic tokens
    of the train sentences is replaced by [MASK]; the label is which token it was. Alphabetic tokens
    are words and, at a small vocabulary, some word-initial pieces (a ``##`` piece is never alphabetic).
    Inputs: ``(ids, mask, position)``. Sentences without such a token are dropped. Returns the task
    and its words."""
    from collections import Counter

    ids, mask = tokenize(tokenizer, sentences_, max_len)
    tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]
    special = set(tokenizer.all_special_tokens)
    counts = Counter(t for row in tokens[:n_train] for t in row if t not in special and t.isalpha())
    words = [w for w, _ in counts.most_common(n_words)]
    index = {tokenizer.convert_tokens_to_ids(w): k for k, w in enumerate(words)}
    keep, pos, y = [], [], []
    for i, row in enumerate(ids.tolist()):
        at = [j for j, t in enumerate(row) if t in index and mask[i, j]]
        if at:
            j = at[int(rng.integers(len(at)))]
            keep.append(i)
            pos.append(j)
            y.append(index[row[j]])
    keep_t, pos_t = torch.tensor(keep), torch.tensor(pos)
    masked = ids[keep_t].clone()
    masked[torch.arange(len(keep)), pos_t] = tokenizer.mask_token_id
    y_arr = np.asarray(y, dtype=np.int64)
    cut = int(np.searchsorted(np.asarray(keep), n_train))  # sentences of the train part stay in train
    tr, te = slice(0, cut), slice(cut, len(keep))
    return ProbeTask((masked[tr], mask[keep_t][tr], pos_t[tr]), y_arr[tr], (masked[te], mask[keep_t][te], pos_t[te]),
                     y_arr[te]), words


def replaced_token_pools(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The non-special token ids split in two (even / odd id): replacements of the task's train split
    come from the first, of its test split from the second, so no replacement is seen before the test."""
    special = set(tokenizer.all_special_ids)
    ids = np.array([i for i in range(len(tokenizer)) if i not in special])
    return ids[ids % 2 == 0], ids[ids % 2 == 1]


def with_replaced_token(ids: Tensor, mask: Tensor, pool: np.ndarray, rng: np.random.Generator) -> tuple[Tensor, np.ndarray]:
    """Replaced-token detection (ELECTRA's task, CoLA-like acceptability): every other text gets one
    token, at a random position between [CLS] and [SEP], replaced by a random token of ``pool``
    different from it. Label 1 = the original text. ``ids``, ``mask``: ``(N, L)``."""
    out = ids.clone()
    labels = np.array([1 - i % 2 for i in range(len(ids))])
    for i in np.flatnonzero(labels == 0):
        n = int(mask[i].sum())  # [CLS] w_1 .. w_{n-2} [SEP]
        if n < 3:
            raise ValueError(f"text {i} has no token between [CLS] and [SEP] to replace")
        pos = int(rng.integers(1, n - 1))
        choices = pool[pool != int(out[i, pos])]
        out[i, pos] = int(rng.choice(choices))
    return out, labels


def _split(n: int, n_train: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    return perm[:n_train], perm[n_train:]


def build_eval_data(data: PretrainData, sizes: FlavaSizes, n_probe: int, n_retrieval: int, seed: int,
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
    # language (fine-tuned, as GLUE): replaced-token detection on held-out captions and held-out novel
    # sentences (replacements of train and test from disjoint token pools); authorship (Austen vs.
    # Melville, held-out text)
    texts = texts or text_sources()
    heldout_captions = scenes.make_scenes(n_probe, s, seed + 105, scenes.SceneSampler("test")).captions
    austen = [texts.austen_heldout[i] for i in rng.permutation(len(texts.austen_heldout))]
    melville = [texts.melville_heldout[i] for i in rng.permutation(len(texts.melville_heldout))]
    k = min(n_probe // 2, len(melville))
    pools = replaced_token_pools(tok)
    language = {}
    for name, txt in (("caption replaced word", heldout_captions), ("sentence replaced word", austen[:n_probe])):
        ids, mask = tokenize(tok, txt, L)
        tr, te = _split(len(txt), len(txt) // 2, rng)
        tr_ids, tr_y = with_replaced_token(ids[tr], mask[tr], pools[0], rng)
        te_ids, te_y = with_replaced_token(ids[te], mask[te], pools[1], rng)
        language[name] = ProbeTask((tr_ids, mask[tr]), tr_y, (te_ids, mask[te]), te_y)
    author = austen[n_probe : n_probe + k] + melville[:k]
    ids, mask = tokenize(tok, author, L)
    lab = np.array([0] * k + [1] * k)
    tr, te = _split(len(author), len(author) // 2, rng)
    language["authorship"] = ProbeTask((ids[tr], mask[tr]), lab[tr], (ids[te], mask[te]), lab[te])
    # multimodal: held-out ITM pairs (held-out combinations; half one-attribute swaps) and retrieval
    itm_scenes = scenes.make_scenes(n_probe, s, seed + 103, scenes.SceneSampler("test", emoji_prob=0.0))
    swapped = np.arange(n_probe) % 2 == 1
    itm_ids, itm_mask = tokenize(tok, [n if f else c for c, n, f in zip(itm_scenes.captions, itm_scenes.negatives, swapped)], L)
    itm = ProbeTask((), np.zeros(0), (itm_scenes.images, itm_ids, itm_mask), (~swapped).astype(np.int64))
    retrieval = scenes.make_scenes(n_retrieval, s, seed + 104, scenes.SceneSampler("test"))
    r_ids, r_mask = tokenize(tok, retrieval.captions, L)
    # the fused task: fine-tuned scene questions (train: 2 x n_probe, test: n_probe)
    qa_images, qa_q, qa_y = scene_qa(3 * n_probe, s, seed + 106)
    qa_ids, qa_mask = tokenize(tok, qa_q, L)
    tr, te = slice(0, 2 * n_probe), slice(2 * n_probe, 3 * n_probe)
    qa = ProbeTask((qa_images[tr], qa_ids[tr], qa_mask[tr]), qa_y[tr], (qa_images[te], qa_ids[te], qa_mask[te]), qa_y[te],
                   texts=(qa_q[tr], qa_q[te]))
    # the cloze task: held-out Austen sentences after those of the other language tasks
    cloze_text = austen[n_probe + k : n_probe + k + 4 * n_probe]  # ~2 x n_probe train / test: a 20-way probe
    cloze, _ = cloze_task(tok, cloze_text, L, len(cloze_text) // 2, rng)
    return EvalData(vision, language, itm, retrieval.images, r_ids, r_mask, retrieval.captions, qa, cloze)
