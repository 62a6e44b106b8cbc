"""FLAVA's model and its five pretraining objectives (Singh et al., CVPR 2022, arXiv 2112.04482, §3).

The encoders and prediction heads are Hugging Face's ``FlavaForPreTraining`` built from a small
``FlavaConfig``; the objectives are computed here from its modules, so that each one can be switched
on or off for the Table 3 ablation and the paper's batch composition holds:

* **MIM** (§3.1, unimodal images): BEiT block masking; the image encoder's outputs at masked patches
  predict the patches' discrete tokens.
* **MLM** (§3.1, unimodal text): 15% of tokens masked (BERT's 80/10/10); predicted from the text encoder.
* **Global contrastive, GC** (§3.1): h_CLS,I and h_CLS,T of the *unmasked* image and text, projected,
  L2-normalised, dot-producted, softmax with a learnable temperature clamped to [0, ln 100]; gathered
  across processes *with* gradients ("global backprop").
* **MMM** (§3.1): on the masked multimodal pass, an MLP on {h_M} predicts the image tokens of masked
  patches and the masked words.
* **ITM** (§3.1): a classifier on h_CLS,M; the batch mixes matched and unmatched pairs; MMM uses the
  matched ones only. The unmatched pairs are the sampler's (random in-batch or one-attribute swaps),
  or hard negatives mined from the GC similarities as in ALBEF (``itm_negatives="mined"``).

Shape notation: B batch, P image patches (a ``G x G`` grid), L text tokens, D hidden width,
E projection width, K image-codebook size, V text vocabulary, N gathered batch (world x B).

Why not call ``FlavaForPreTraining.forward``: it feeds the same text to its unmasked (GC) and masked
(ITM, MMM) passes, so ITM negatives would also become GC pairs (it drops their rows but keeps their
texts as columns), and it runs the masked multimodal pass even when only GC is wanted (FLAVA_C). The
loss code below is checked against ``FlavaForPreTraining.forward`` on batches without negatives
(``tests/test_flava.py``: all six losses agree).

Deviations from the paper:
* Image tokens come from a k-means VQ over patch pixels fitted once on the training images (K=256 by
  default) instead of the DALL-E dVAE (8192 codes), which is not downloadable offline. At 32-48 px a
  patch is a few flat colours; k-means codes keep exactly that (colour/edge content per patch).
* The image [CLS], [MASK], position embeddings and [CLS_M] start truncated-normal (std 0.02, BEiT),
  not at HF's zeros: a zero token through LayerNorm (eps 1e-12) has exploding gradients (``init_learned_tokens``).
* The block-mask budget scales BEiT's 75 of 196 patches (38%) and 16-patch minimum group to our grid.
* Table 3, row 6's unimodal initialisation (§3.2: DINO ViT-B/16 on ImageNet, text encoder pretrained
  with MLM on CCNews + BookCorpus) comes from our own MIM and MLM rows (same data, seed and budget),
  and the MIM/MLM heads come along with their encoders. No released pre-norm text encoder matches
  FLAVA's layers offline (the packaged MiniLM is a post-norm BERT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LOGIT_SCALE_MAX = math.log(100.0)  # §A.1 / torchmultimodal: temperature clamped to [0, ln 100]
CE_IGNORE = -100  # Hugging Face's ignore index for masked-prediction labels
TEXT_MASK_PROB = 0.15  # §3.1: "15% of text tokens", as BERT
BEIT_MASK_RATIO = 75 / 196  # BEiT / FlavaImageProcessor: 75 of 196 patches masked
BEIT_MIN_GROUP = 16 / 196  # BEiT: a masked block covers at least 16 of 196 patches
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# ---------------------------------------------------------------------------------------------------
# Sizes and objectives
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlavaSizes:
    """Widths and depths of a FLAVA; the defaults are the paper's ViT-B/16 model (Table A.1)."""

    image_size: int = 224
    patch_size: int = 16
    hidden: int = 768
    heads: int = 12
    mlp: int = 3072
    image_layers: int = 12
    text_layers: int = 12
    multimodal_layers: int = 6
    projection_dim: int = 768  # HF code default and torchmultimodal; Table A.1 says 512
    codebook_size: int = 8192
    vocab_size: int = 30522
    max_text_len: int = 77

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FlavaSizes.{f.name} must be a positive int, not {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")
        if self.grid < 2:
            raise ValueError(f"the patch grid must be at least 2x2, got {self.grid}x{self.grid}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2


@dataclass(frozen=True)
class Objectives:
    """Which of FLAVA's losses are on (MMM covers both its image and its text half)."""

    mim: bool = False
    mlm: bool = False
    gc: bool = False
    mmm: bool = False
    itm: bool = False

    def __post_init__(self) -> None:
        if not any(self.names()):
            raise ValueError("at least one objective must be on")

    def names(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]

    @property
    def paired(self) -> bool:
        """True when some objective needs image-text pairs."""
        return self.gc or self.mmm or self.itm


# Encoder parts a row can take from an earlier row (Table 3, row 6: unimodal initialisation). Each
# part is the encoder plus the head of its unimodal objective: both keep predicting the same targets
# (one VQ codebook and one WordPiece vocabulary for all rows), so the head carries over with the encoder.
INIT_PARTS: dict[str, tuple[str, ...]] = {
    "image": ("flava.image_model", "mim_head"),  # ViT image encoder + MIM head
    "text": ("flava.text_model", "mlm_head"),  # text encoder + MLM head
}


@dataclass(frozen=True)
class AblationRow:
    """One row of Table 3: its objectives, the sources it samples (probabilities sum to 1) and, for
    row 6, the rows whose trained encoders initialise it (``init``: part -> row name, same seed)."""

    name: str
    objectives: Objectives
    sources: dict[str, float]  # "paired" / "images" / "text" -> sampling probability
    domains: tuple[str, ...]  # evaluation domains the paper reports for the row
    init: dict[str, str] = field(default_factory=dict)  # "image" / "text" -> row whose trained part is copied

    def __post_init__(self) -> None:
        unknown = set(self.sources) - {"paired", "images", "text"}
        if unknown:
            raise ValueError(f"{self.name}: unknown sources {sorted(unknown)}")
        bad_parts = set(self.init) - set(INIT_PARTS)
        if bad_parts:
            raise ValueError(f"{self.name}: unknown init parts {sorted(bad_parts)}; known: {sorted(INIT_PARTS)}")
        if self.name in self.init.values():
            raise ValueError(f"{self.name}: a row cannot initialise from itself")
        if abs(sum(self.sources.values()) - 1.0) > 1e-9 or any(p < 0 for p in self.sources.values()):
            raise ValueError(f"{self.name}: source probabilities {self.sources} must be >= 0 and sum to 1")
        needs = {"paired": self.objectives.paired, "images": self.objectives.mim, "text": self.objectives.mlm}
        for source, p in self.sources.items():
            if p > 0 and not needs[source]:
                raise ValueError(f"{self.name}: source {source!r} is sampled but no objective uses it")


INIT_ROW = "FLAVA+init"  # Table 3, row 6


def table3_rows(paired: float = 0.70, images: float = 0.15, text: float = 0.15) -> dict[str, AblationRow]:
    """Table 3's six rows.

    Rows 1-4 train on PMD only (here: the unimodal images, scenes and emoji, for MIM; the unimodal
    text, novel sentences, for MLM; pairs for the rest); full FLAVA (row 5) adds unimodal images and text with Table A.2's sampling
    probabilities. Row 6 (``FLAVA+init``) is row 5 started from unimodally pretrained encoders: the
    paper takes a DINO ViT-B/16 and an MLM-pretrained text encoder; we take the image encoder of our
    MIM row and the text encoder of our MLM row, trained on the same data with the same seed.
    """
    all3 = ("vision", "language", "multimodal")
    everything = Objectives(mim=True, mlm=True, gc=True, mmm=True, itm=True)
    full_sources = {"paired": paired, "images": images, "text": text}
    return {
        "MIM": AblationRow("MIM", Objectives(mim=True), {"images": 1.0}, ("vision",)),
        "MLM": AblationRow("MLM", Objectives(mlm=True), {"text": 1.0}, ("language",)),
        "FLAVA_C": AblationRow("FLAVA_C", Objectives(gc=True), {"paired": 1.0}, all3),
        "FLAVA_MM": AblationRow("FLAVA_MM", Objectives(gc=True, mmm=True, itm=True), {"paired": 1.0}, all3),
        "FLAVA": AblationRow("FLAVA", everything, full_sources, all3),
        INIT_ROW: AblationRow(INIT_ROW, everything, full_sources, all3, init={"image": "MIM", "text": "MLM"}),
    }


def missing_init_sources(rows: dict[str, AblationRow]) -> dict[str, list[str]]:
    """Rows whose ``init`` names a row that is not among ``rows``: row -> the missing row names."""
    out = {name: sorted(set(row.init.values()) - set(rows)) for name, row in rows.items()}
    return {name: missing for name, missing in out.items() if missing}


def encoder_state(model, part: str) -> dict[str, dict[str, Tensor]]:
    """CPU copies of the state of one ``INIT_PARTS`` part: submodule path -> its ``state_dict``."""
    return {path: {k: v.detach().cpu().clone() for k, v in model.get_submodule(path).state_dict().items()}
            for path in INIT_PARTS[part]}


def initialise_from(model, states: dict[str, dict[str, dict[str, Tensor]]]) -> None:
    """Load parts saved by ``encoder_state`` (part -> state) into ``model`` (Table 3, row 6's init).

    Every other module keeps its own initialisation (the multimodal encoder is "always random", §3.2).
    """
    for part, state in states.items():
        if part not in INIT_PARTS or set(state) != set(INIT_PARTS[part]):
            raise ValueError(f"state for part {part!r} must hold exactly {INIT_PARTS.get(part)}, got {sorted(state)}")
        for path, sub in state.items():
            model.get_submodule(path).load_state_dict(sub, strict=True)


def config_overrides(sizes: FlavaSizes) -> dict[str, object]:
    """``FlavaConfig`` overrides (dotted keys into the sub-configs) that give a model of these sizes."""
    out: dict[str, object] = {"hidden_size": sizes.hidden, "projection_dim": sizes.projection_dim, "init_codebook": False}
    for sub, layers in (("image_config", sizes.image_layers), ("text_config", sizes.text_layers),
                        ("multimodal_config", sizes.multimodal_layers)):
        out.update({f"{sub}.hidden_size": sizes.hidden, f"{sub}.num_attention_heads": sizes.heads,
                    f"{sub}.intermediate_size": sizes.mlp, f"{sub}.num_hidden_layers": layers})
    out.update({"image_config.image_size": sizes.image_size, "image_config.patch_size": sizes.patch_size,
                "image_config.vocab_size": sizes.codebook_size, "text_config.vocab_size": sizes.vocab_size,
                "text_config.max_position_embeddings": sizes.max_text_len})
    return out


def build_config(sizes: FlavaSizes):
    """Hugging Face's default ``FlavaConfig`` with ``config_overrides(sizes)`` applied by ``reproduce.hf``.

    No DALL-E codebook is built (``init_codebook=False``): MIM/MMM labels come from our VQ.
    """
    from transformers import FlavaConfig

    from reproduce import hf

    config = FlavaConfig()
    hf.apply_overrides(config, config_overrides(sizes))
    return config


def build_model(sizes: FlavaSizes, seed: int):
    """A randomly initialised ``FlavaForPreTraining`` (same seed, same weights)."""
    from transformers import FlavaForPreTraining

    torch.manual_seed(seed)
    model = FlavaForPreTraining(build_config(sizes))
    init_learned_tokens(model)
    return model


def init_learned_tokens(model, std: float = 0.02) -> None:
    """Truncated-normal init (std 0.02, as BEiT and timm's ViT) of the learned tokens HF starts at zero:
    the image [CLS], [MASK] and position embeddings, and the multimodal [CLS_M].

    Deviation from HF's ``_init_weights`` (zeros): a zero token (cls + zero position) enters the first
    pre-norm LayerNorm as the zero vector, whose gradient scales as 1/sqrt(eps) with eps = 1e-12.
    Measured at our cpu sizes, one paired batch: gradient norm 1174 on the image [MASK] token,
    510 on the position embeddings, 112 on [CLS_M], 0.16 on the next largest weight. The global clip
    (1.0) then shrinks every other gradient ~1000x, into the range of AdamW's eps (1e-8), so the text
    and multimodal weights barely move (issue #15: ITM at ln 2 for 1500 updates).
    """
    image = model.flava.image_model.embeddings
    tokens = [image.cls_token, image.position_embeddings, model.flava.multimodal_model.cls_token]
    if image.mask_token is not None:
        tokens.append(image.mask_token)
    with torch.no_grad():
        for t in tokens:
            if std == 0:  # HF's zeros (tests compare with them)
                t.zero_()
            else:
                torch.nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)


FLAVA_FULL = "facebook/flava-full"  # the released checkpoint (gpu profile, where the hub answers)


def load_flava_full(overrides: dict[str, object] | None = None, model_id: str = FLAVA_FULL):
    """``FlavaForPreTraining`` from ``model_id`` (``facebook/flava-full``, or a local folder) through
    ``reproduce.hf.load_pretrained``.

    Offline this raises ``reproduce.hf.HubOfflineError`` within ~2 s (tested). Returns ``(model, report)``.
    """
    from reproduce import hf

    return hf.load_pretrained(model_id, "FlavaForPreTraining", overrides={"init_codebook": False, **(overrides or {})})


# ---------------------------------------------------------------------------------------------------
# Masking (§3.1): BEiT block masking for images, 15% token masking for text
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockMasking:
    """BEiT's rectangular block masking on a ``grid x grid`` patch grid (Hugging Face's generator).

    ``ratio`` of the patches are masked in blocks of at least ``min_group`` patches with aspect ratio
    in [``min_aspect``, 1/``min_aspect``]; BEiT uses 75/196, 16 patches and 0.3.
    """

    grid: int
    ratio: float = BEIT_MASK_RATIO
    min_group_fraction: float = BEIT_MIN_GROUP
    min_aspect: float = 0.3

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise ValueError(f"block masking needs a grid of at least 2x2, got {self.grid}")
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"mask ratio must be in (0, 1), not {self.ratio}")
        if not 0.0 < self.min_aspect <= 1.0:
            raise ValueError(f"min_aspect must be in (0, 1], not {self.min_aspect}")

    @property
    def total(self) -> int:
        return max(1, round(self.ratio * self.grid**2))

    @property
    def min_group(self) -> int:
        return max(1, min(self.total, round(self.min_group_fraction * self.grid**2)))

    def __call__(self, batch: int) -> Tensor:
        """``(B, P)`` bool, True = masked. Uses Python's ``random`` (seeded by ``runtime.setup``)."""
        from transformers.models.flava.image_processing_pil_flava import FlavaMaskingGenerator  # no torchvision

        gen = FlavaMaskingGenerator(input_size=self.grid, total_mask_patches=self.total,
                                    mask_group_min_patches=self.min_group, mask_group_min_aspect_ratio=self.min_aspect)
        masks = np.stack([gen() for _ in range(batch)])  # (B, G, G)
        return torch.from_numpy(masks).bool().flatten(1)  # (B, P)


def mask_text(input_ids: Tensor, tokenizer, prob: float = TEXT_MASK_PROB, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor]:
    """BERT masking (80% [MASK], 10% random, 10% kept) of ``prob`` of the non-special tokens.

    Returns ``(masked_ids (B, L), labels (B, L))`` with labels = -100 where nothing is predicted.
    """
    from transformers import DataCollatorForLanguageModeling

    if not 0.0 < prob < 1.0:
        raise ValueError(f"text mask probability must be in (0, 1), not {prob}")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=prob)
    collator.generator = generator
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))
    return collator.torch_mask_tokens(input_ids.clone(), special_tokens_mask=special)


# ---------------------------------------------------------------------------------------------------
# Tokenisers: k-means VQ for image patches, WordPiece for text
# ---------------------------------------------------------------------------------------------------
def patchify(pixel_values: Tensor, patch: int) -> Tensor:
    """``(B, 3, S, S)`` -> ``(B, P, 3 * patch * patch)``, row-major over the grid like the ViT's conv."""
    b, c, s, _ = pixel_values.shape
    g = s // patch
    x = pixel_values.reshape(b, c, g, patch, g, patch)  # (B, 3, G, p, G, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * patch * patch)  # (B, P, 3 p p)


@dataclass
class PatchVQ:
    """A frozen discrete image tokenizer: k-means codebook over patch pixels (stands in for the dVAE)."""

    patch: int
    codebook: Tensor  # (K, 3 p p)

    @classmethod
    def fit(cls, pixel_values: Tensor, patch: int, size: int, seed: int, max_patches: int = 20_000) -> "PatchVQ":
        from sklearn.cluster import MiniBatchKMeans
        from threadpoolctl import threadpool_limits

        x = patchify(pixel_values, patch).reshape(-1, 3 * patch * patch)  # (B P, 3 p p)
        rng = np.random.default_rng(seed)
        if len(x) > max_patches:
            x = x[torch.from_numpy(rng.choice(len(x), max_patches, replace=False))]
        with threadpool_limits(1):  # OpenMP spinning on shared cores is 10x slower than one thread
            km = MiniBatchKMeans(n_clusters=size, random_state=seed, n_init=1, batch_size=4096).fit(x.numpy())
        return cls(patch, torch.from_numpy(km.cluster_centers_).float())

    @property
    def size(self) -> int:
        return len(self.codebook)

    @torch.no_grad()
    def encode(self, pixel_values: Tensor) -> Tensor:
        """``(B, 3, S, S)`` -> ``(B, P)`` code indices (nearest centroid)."""
        x = patchify(pixel_values, self.patch)  # (B, P, 3 p p)
        d = (self.codebook**2).sum(-1) - 2 * x @ self.codebook.T  # (B, P, K): squared distance minus |x|^2
        return d.argmin(-1)


def build_wordpiece(texts: list[str], vocab_size: int, max_len: int):
    """A BERT-style uncased WordPiece tokenizer trained on ``texts`` (``tokenizers``), as a fast HF tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    # WordPieceTrainer breaks ties between equally frequent merges differently in every process (it
    # numbers the "##" continuation pieces in hash-map order): measured, 1-3 of 300 tokens changed
    # between runs. BpeTrainer without a continuation prefix is deterministic, so the pieces are learnt
    # by BPE merges over words and each piece enters the WordPiece vocabulary twice, word-initial and
    # as a "##" continuation; WordPiece then encodes by longest match over that set, numbered in a
    # fixed order (the specials first, then sorted).
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.normalizer = normalizers.BertNormalizer(lowercase=True)
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    n_pieces = (vocab_size - len(SPECIAL_TOKENS)) // 2
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=len(SPECIAL_TOKENS) + n_pieces,
                                                       special_tokens=list(SPECIAL_TOKENS), show_progress=False))
    pieces = sorted(t for t in bpe.get_vocab() if t not in SPECIAL_TOKENS)
    vocab = [*SPECIAL_TOKENS, *sorted([*pieces, *(f"##{t}" for t in pieces)])]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_len)


def tokenize(tokenizer, texts: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """``(input_ids (B, L), attention_mask (B, L))`` padded/truncated to ``max_len``."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# ---------------------------------------------------------------------------------------------------
# Batches of the three sources (§3.2: round-robin, one source per update)
# ---------------------------------------------------------------------------------------------------
@dataclass
class PairedBatch:
    """Image-text pairs. ``itm_ids`` holds the ITM text: the true caption where ``itm_labels`` is 1, a
    negative where it is 0; its masked copy (``itm_ids_masked``) is what the multimodal pass reads."""

    pixel_values: Tensor  # (B, 3, S, S)
    input_ids: Tensor  # (B, L) true captions (GC, unmasked)
    attention_mask: Tensor  # (B, L)
    image_tokens: Tensor  # (B, P) VQ codes
    bool_masked_pos: Tensor  # (B, P)
    itm_ids_masked: Tensor  # (B, L)
    itm_attention_mask: Tensor  # (B, L)
    mlm_labels: Tensor  # (B, L) -100 except masked positions of itm_ids
    itm_labels: Tensor  # (B,) 1 matched, 0 unmatched


@dataclass
class ImageBatch:
    pixel_values: Tensor  # (B, 3, S, S)
    image_tokens: Tensor  # (B, P)
    bool_masked_pos: Tensor  # (B, P)


@dataclass
class TextBatch:
    input_ids_masked: Tensor  # (B, L)
    attention_mask: Tensor  # (B, L)
    mlm_labels: Tensor  # (B, L)


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """All-gather ``(B, ...)`` -> ``(N, ...)`` across processes whose B may differ (a global batch of 64
    on 6 GPUs: 11, 11, 11, 11, 10, 10 rows), gradients flowing back to every rank (§3.1).

    Returns the gathered rows in rank order and the offset of this process's first row in them. One
    process: ``(x, 0)``, the tensor itself.
    """
    if not _distributed():
        return x, 0
    import torch.distributed.nn.functional as dist_fn

    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    rows = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(rows) for _ in range(world)]
    torch.distributed.all_gather(sizes, rows)  # every process's B: all_gather needs equal shapes, so pad to the largest
    sizes = [int(n) for n in sizes]
    padded = F.pad(x, (0, 0) * (x.ndim - 1) + (0, max(sizes) - x.shape[0]))  # (max B, ...)
    parts = dist_fn.all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]), sum(sizes[:rank])  # (N, ...), offset


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``(B, E)`` -> ``(N, E)`` across processes, gradients flowing back to every rank (§3.1)."""
    return gather_rows(x)[0]


def global_contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, gather: bool = True) -> Tensor:
    """Global contrastive loss (§3.1), CLIP's symmetric InfoNCE over the *gathered* batch.

    ``image_emb``, ``text_emb``: ``(B, E)``, L2-normalised. Each local row is scored against all N
    columns of every process; its positive is the column at ``offset + i`` (the rows of the processes
    before it; ``rank * B + i`` when every process holds B). With ``gather=True`` the
    gather carries gradients, so the mean of the per-process losses (what DDP averages) is the loss of
    one process on the concatenated batch, and so are the gradients.
    """
    b = image_emb.shape[0]
    if gather:  # processes may hold different B (uneven shards): the positives start at this one's offset
        (all_image, offset), (all_text, _) = gather_rows(image_emb), gather_rows(text_emb)  # (N, E)
    else:
        all_image, all_text, offset = image_emb, text_emb, 0
    scale = logit_scale.exp()
    logits_image = scale * image_emb @ all_text.T  # (B, N)
    logits_text = scale * text_emb @ all_image.T  # (B, N)
    labels = offset + torch.arange(b, device=image_emb.device)  # (B,)
    return (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)) / 2


def contrastive_embeddings(model, image_hidden: Tensor, text_hidden: Tensor) -> tuple[Tensor, Tensor]:
    """h_CLS,I and h_CLS,T (token 0 of the encoders' outputs) projected and L2-normalised: ``(B, E)`` each."""
    image = F.normalize(model.flava.image_projection(image_hidden[:, 0]), dim=-1)
    text = F.normalize(model.flava.text_projection(text_hidden[:, 0]), dim=-1)
    return image, text


def _masked_prediction(head, hidden: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of ``head(hidden)`` at positions whose label is not -100 (``hidden``: (B, T, D))."""
    keep = labels.ne(CE_IGNORE)  # (B, T)
    if not keep.any():
        return hidden.sum() * 0.0  # nothing masked in this batch: a zero that keeps the graph
    return F.cross_entropy(head(hidden[keep]), labels[keep])  # (M, K) vs (M,)


@dataclass
class FlavaLossTerms:
    """The losses of one batch; ``None`` where the objective is off or the batch has no such input."""

    mim: Tensor | None = None
    mlm: Tensor | None = None
    global_contrastive: Tensor | None = None
    itm: Tensor | None = None
    mmm_image: Tensor | None = None
    mmm_text: Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)

    def items(self) -> list[tuple[str, Tensor]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self) if f.name != "extras" and getattr(self, f.name) is not None]

    def total(self) -> Tensor:
        """Sum of the computed losses (every weight is 1.0, as in the paper and HF)."""
        terms = [v for _, v in self.items()]
        if not terms:
            raise ValueError("no loss was computed for this batch: check the objectives against the source")
        return torch.stack(terms).sum()


def image_losses(model, batch: ImageBatch, objectives: Objectives) -> FlavaLossTerms:
    """MIM (§3.1): the image encoder sees the block-masked image and predicts the masked patches' codes."""
    if not objectives.mim:
        return FlavaLossTerms()
    out = model.flava(pixel_values=batch.pixel_values, bool_masked_pos=batch.bool_masked_pos)
    patches = out.image_embeddings[:, 1:]  # (B, P, D) without the image CLS
    labels = batch.image_tokens.masked_fill(~batch.bool_masked_pos, CE_IGNORE)  # (B, P)
    return FlavaLossTerms(mim=_masked_prediction(model.mim_head, patches, labels))


def text_losses(model, batch: TextBatch, objectives: Objectives) -> FlavaLossTerms:
    """MLM (§3.1): the text encoder sees the masked text and predicts the masked words."""
    if not objectives.mlm:
        return FlavaLossTerms()
    out = model.flava(input_ids=batch.input_ids_masked, attention_mask=batch.attention_mask)
    return FlavaLossTerms(mlm=_masked_prediction(model.mlm_head, out.text_embeddings, batch.mlm_labels))


ITM_NEGATIVES = ("sampled", "mined")


def mine_hard_negatives(similarity: Tensor, same: Tensor, generator: torch.Generator | None = None
                        ) -> tuple[Tensor, Tensor]:
    """ALBEF's hard negatives (Li et al., NeurIPS 2021, §3.2): for each image a text of the batch drawn
    with probability softmax(s(I_i, T_j)) over the texts that are not its caption, and for each text
    an image likewise, from the contrastive similarities (no gradient flows through the choice).

    ``similarity``: ``(B, B)`` image-text similarities; ``same``: ``(B, B)`` True where text j equals
    text i (the diagonal included): those are no negatives. Returns ``(text_of_image, image_of_text)``,
    ``(B,)`` indices each. A row with no other text (every caption equal) draws uniformly among j != i.
    """
    b = similarity.shape[0]
    if similarity.shape != (b, b) or same.shape != (b, b) or b < 2:
        raise ValueError(f"similarity and same must both be (B, B) with B >= 2, got {tuple(similarity.shape)}, {tuple(same.shape)}")
    eye = torch.eye(b, dtype=torch.bool, device=similarity.device)
    picks = []
    for sim, excluded in ((similarity, same), (similarity.T, same.T)):
        weights = sim.detach().float().softmax(dim=1).masked_fill(excluded | eye, 0.0)  # (B, B)
        empty = weights.sum(1) == 0
        weights[empty] = (~eye[empty]).float()  # no text differs: any other one
        # drawn where the generator lives (a CPU generator with CUDA similarities: on the host)
        host = generator is not None and generator.device != weights.device
        pick = torch.multinomial(weights.to(generator.device) if host else weights, 1, generator=generator)
        picks.append(pick.squeeze(1).to(similarity.device))  # (B,)
    return picks[0], picks[1]


def mined_itm_pairs(input_ids: Tensor, image: Tensor, text: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
    """The N mined negatives as (image index, text index) into the batch: the first half of the images
    with a hard-negative text, the second half of the texts with a hard-negative image (ALBEF draws
    both for every pair; half of each keeps ITM at N matched + N unmatched pairs). ``input_ids``:
    ``(N, L)`` captions; ``image``, ``text``: the ``(N, E)`` GC embeddings (the gathered batch when
    several processes train: every process draws the same negatives from the same generator)."""
    n = input_ids.shape[0]
    same = (input_ids[:, None, :] == input_ids[None, :, :]).all(-1)  # (N, N) equal captions
    text_of_image, image_of_text = mine_hard_negatives(image @ text.T, same, generator)
    own = torch.arange(n, device=input_ids.device)
    half = own < n // 2
    return torch.where(half, own, image_of_text), torch.where(half, text_of_image, own)  # (N,), (N,)


def multimodal_encode(model, image_states: Tensor, text_states: Tensor, attention_mask: Tensor) -> Tensor:
    """FlavaModel's multimodal step on encoder states already computed (``FlavaModel.forward``: the
    last hidden states *before* the encoders' final LayerNorm, projected, concatenated, [CLS_M] first).

    ``image_states``: ``(B, 1 + P, D)``; ``text_states``: ``(B, L, D)``; returns ``(B, 1 + 1 + P + L, D)``.
    Per pair, so re-pairing the states of one pass equals encoding the re-paired inputs (tested).
    """
    image = model.flava.image_to_mm_projection(image_states)  # (B, 1 + P, D)
    text = model.flava.text_to_mm_projection(text_states)  # (B, L, D)
    ones = torch.ones(image.shape[0], image.shape[1] + 1, device=image.device, dtype=attention_mask.dtype)  # + [CLS_M]
    return model.flava.multimodal_model(torch.cat([image, text], dim=1), attention_mask=torch.cat([ones, attention_mask], dim=1),
                                        return_dict=True).last_hidden_state


def paired_losses(model, batch: PairedBatch, objectives: Objectives, gather: bool = True,
                  itm_negatives: str = "sampled", generator: torch.Generator | None = None) -> FlavaLossTerms:
    """GC on the unmasked pair; ITM on the masked multimodal pass; MMM on its matched pairs (§3.1).

    ``itm_negatives``: "sampled" reads the ITM pairs of the batch as they are (``itm_labels``: the
    sampler's matched and unmatched pairs, as FLAVA); "mined" expects matched pairs only and adds B
    hard negatives mined from this batch's GC similarities (``mine_hard_negatives``, ALBEF), so ITM
    sees B matched and B unmatched pairs. With several processes the negatives are mined from the
    gathered global batch, as ALBEF does: the same draws as one process on the whole batch.
    """
    if itm_negatives not in ITM_NEGATIVES:
        raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {itm_negatives!r}")
    mined = objectives.itm and itm_negatives == "mined"
    if mined and not objectives.gc:
        raise ValueError("itm_negatives='mined' draws negatives from the GC similarities: turn GC on")
    if mined and not batch.itm_labels.bool().all():
        raise ValueError("itm_negatives='mined' expects matched pairs only (sample with itm_negative_prob=0)")
    terms = FlavaLossTerms()
    if objectives.gc:
        out = model.flava(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          pixel_values=batch.pixel_values, skip_multimodal_encoder=True)
        if model.training:
            model.flava.logit_scale.data.clamp_(0.0, LOGIT_SCALE_MAX)
        image, text = contrastive_embeddings(model, out.image_embeddings, out.text_embeddings)
        terms.global_contrastive = global_contrastive_loss(image, text, model.flava.logit_scale, gather=gather)
    if objectives.mmm or objectives.itm:
        out = model.flava(input_ids=batch.itm_ids_masked, attention_mask=batch.itm_attention_mask,
                          pixel_values=batch.pixel_values, bool_masked_pos=batch.bool_masked_pos)
        mm = out.multimodal_embeddings  # (B, 1 + 1 + P + L, D): [CLS_M], image CLS, patches, text
        if mined:  # the negatives re-pair this pass's encoder states: only the multimodal encoder runs again
            ids, offset = gather_rows(batch.input_ids)  # mined from the global batch (ALBEF gathers first)
            i, t = mined_itm_pairs(ids, gather_rows(image.detach())[0], gather_rows(text.detach())[0], generator)
            mine = slice(offset, offset + batch.input_ids.shape[0])  # this process's negatives: (B,), (B,)
            image_states = gather_rows(out.image_output.hidden_states[-1])[0]  # (N, 1 + P, D)
            text_states, masks = gather_rows(out.text_output.hidden_states[-1])[0], gather_rows(batch.itm_attention_mask)[0]
            neg = multimodal_encode(model, image_states[i[mine]], text_states[t[mine]], masks[t[mine]])
            logits = torch.cat([model.itm_head(mm), model.itm_head(neg)])  # (2B, 2)
            labels = torch.cat([batch.itm_labels, torch.zeros_like(batch.itm_labels)])  # (2B,)
            terms.itm = F.cross_entropy(logits, labels)
        elif objectives.itm:
            terms.itm = F.cross_entropy(model.itm_head(mm), batch.itm_labels)
        if objectives.mmm:
            pos = batch.itm_labels.bool() | ~batch.itm_labels.bool().any()  # matched pairs (all if none)
            p = batch.bool_masked_pos.shape[1]
            image_labels = batch.image_tokens.masked_fill(~batch.bool_masked_pos, CE_IGNORE)[pos]  # (B+, P)
            terms.mmm_image = _masked_prediction(model.mmm_image_head, mm[pos][:, 2 : 2 + p], image_labels)
            terms.mmm_text = _masked_prediction(model.mmm_text_head, mm[pos][:, -batch.mlm_labels.shape[1]:],
                                                batch.mlm_labels[pos])
    return terms


def losses(model, batch: PairedBatch | ImageBatch | TextBatch, objectives: Objectives, gather: bool = True,
           itm_negatives: str = "sampled", generator: torch.Generator | None = None) -> FlavaLossTerms:
    """The losses ``objectives`` asks for on one batch of one source (``paired_losses`` for ``itm_negatives``)."""
    if isinstance(batch, PairedBatch):
        return paired_losses(model, batch, objectives, gather, itm_negatives, generator)
    if isinstance(batch, ImageBatch):
        return image_losses(model, batch, objectives)
    if isinstance(batch, TextBatch):
        return text_losses(model, batch, objectives)
    raise TypeError(f"unknown batch type {type(batch).__name__}")


def hf_pretraining_losses(model, batch: PairedBatch | ImageBatch | TextBatch) -> dict[str, Tensor]:
    """Hugging Face's own ``FlavaForPreTraining.forward`` on our batch (the reference for the tests).

    A paired batch goes in as HF expects it (one text for both passes, ``itm_labels``); image-only and
    text-only batches give MIM and MLM. Returns the non-None entries of ``loss_info``.
    """
    if isinstance(batch, PairedBatch):
        out = model(input_ids=batch.itm_ids_masked.where(batch.mlm_labels.eq(CE_IGNORE), batch.mlm_labels),
                    input_ids_masked=batch.itm_ids_masked, attention_mask=batch.itm_attention_mask,
                    pixel_values=batch.pixel_values, bool_masked_pos=batch.bool_masked_pos,
                    mim_labels=batch.image_tokens.clone(), mlm_labels=batch.mlm_labels.clone(),
                    itm_labels=batch.itm_labels, return_dict=True)
    elif isinstance(batch, ImageBatch):
        out = model(pixel_values=batch.pixel_values, bool_masked_pos=batch.bool_masked_pos,
                    mim_labels=batch.image_tokens.clone(), return_dict=True)
    else:
        out = model(input_ids=batch.input_ids_masked, input_ids_masked=batch.input_ids_masked,
                    attention_mask=batch.attention_mask, mlm_labels=batch.mlm_labels.clone(), return_dict=True)
    return {k: v for k, v in out.loss_info.items() if v is not None}
