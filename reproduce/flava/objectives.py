"""FLAVA's five pretraining objectives (Singh et al., CVPR 2022, arXiv 2112.04482, §3.1).

The encoders and prediction heads are Hugging Face's ``FlavaForPreTraining`` (``reproduce.flava.model``);
the objectives are computed here from its modules, so that each one can be switched on or off for
the Table 3 ablation (``Objectives``) and the paper's batch composition holds:

* **MIM** (§3.1, unimodal images): BEiT block masking (``reproduce.flava.masking``); the image
  encoder's outputs at masked patches predict the patches' discrete tokens (``reproduce.flava.tokenisers``).
* **MLM** (§3.1, unimodal text): 15% of tokens masked (BERT's 80/10/10); predicted from the text encoder.
* **Global contrastive, GC** (§3.1): h_CLS,I and h_CLS,T of the *unmasked* image and text, projected,
  L2-normalised, dot-producted, softmax with a learnable temperature clamped to [0, ln 100]; gathered
  across processes *with* gradients ("global backprop", ``gather_rows``).
* **MMM** (§3.1): on the masked multimodal pass, an MLP on {h_M} predicts the image tokens of masked
  patches and the masked words.
* **ITM** (§3.1): a classifier on h_CLS,M; the batch mixes matched and unmatched pairs; MMM uses the
  matched ones only. The unmatched pairs are the sampler's (random in-batch or one-attribute swaps),
  or hard negatives mined from the GC similarities as in ALBEF (``itm_negatives="mined"``).

Shape notation: B batch, S image side, P image patches (a ``G x G`` grid), L text tokens, D hidden width,
E projection width, K image-codebook size, V text vocabulary, N gathered batch (world x B).

Why not call ``FlavaForPreTraining.forward``: it feeds the same text to its unmasked (GC) and masked
(ITM, MMM) passes, so ITM negatives would also become GC pairs (it drops their rows but keeps their
texts as columns), and it runs the masked multimodal pass even when only GC is wanted (FLAVA_C). The
loss code below is checked against ``FlavaForPreTraining.forward`` on batches without negatives
(``hf_pretraining_losses``; ``tests/test_flava.py``: all six losses agree).

References consulted: Hugging Face's ``FlavaForPreTraining`` (losses, heads), torchmultimodal's FLAVA
(temperature clamp), ALBEF (Li et al., NeurIPS 2021, §3.2: mined ITM negatives).

Deviations from the paper: none in the losses by default; ``itm_pair="unmasked"`` (the cpu profile, issue #28)
classifies the unmasked pair for ITM instead of the masked one. Image tokens and masking: see ``reproduce.flava.tokenisers``
and ``reproduce.flava.masking``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import Tensor

LOGIT_SCALE_MAX = math.log(100.0)  # §A.1 / torchmultimodal: temperature clamped to [0, ln 100]
CE_IGNORE = -100  # Hugging Face's ignore index for masked-prediction labels


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
ITM_PAIRS = ("masked", "unmasked")  # which pass ITM reads: FLAVA's masked multimodal pass, or the unmasked pair


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


def unmasked_itm_ids(batch: PairedBatch) -> Tensor:
    """The ITM texts before text masking, ``(B, L)``: ``mlm_labels`` hold the original id wherever BERT's
    masking picked a token (whether it became [MASK], a random token or stayed)."""
    return batch.itm_ids_masked.where(batch.mlm_labels.eq(CE_IGNORE), batch.mlm_labels)


def paired_losses(model, batch: PairedBatch, objectives: Objectives, gather: bool = True,
                  itm_negatives: str = "sampled", generator: torch.Generator | None = None,
                  itm_pair: str = "masked") -> FlavaLossTerms:
    """GC on the unmasked pair; ITM on the masked multimodal pass; MMM on its matched pairs (§3.1).

    ``itm_negatives``: "sampled" reads the ITM pairs of the batch as they are (``itm_labels``: the
    sampler's matched and unmatched pairs, as FLAVA); "mined" expects matched pairs only and adds B
    hard negatives mined from this batch's GC similarities (``mine_hard_negatives``, ALBEF), so ITM
    sees B matched and B unmatched pairs. With several processes the negatives are mined from the
    gathered global batch, as ALBEF does: the same draws as one process on the whole batch.

    ``itm_pair``: "masked" (FLAVA, Hugging Face) classifies h_CLS,M of the masked pass that MMM reads;
    "unmasked" (a deviation, issue #28) classifies the multimodal encoding of the unmasked image and
    text, so that the mask cannot hide the object or the word that tells a pair from its negative.
    With mined negatives the unmasked pass is GC's own (its encoder states, re-paired): only the
    multimodal encoder runs again.
    """
    if itm_negatives not in ITM_NEGATIVES:
        raise ValueError(f"itm_negatives must be one of {ITM_NEGATIVES}, got {itm_negatives!r}")
    if itm_pair not in ITM_PAIRS:
        raise ValueError(f"itm_pair must be one of {ITM_PAIRS}, got {itm_pair!r}")
    mined = objectives.itm and itm_negatives == "mined"
    if mined and not objectives.gc:
        raise ValueError("itm_negatives='mined' draws negatives from the GC similarities: turn GC on")
    if mined and not batch.itm_labels.bool().all():
        raise ValueError("itm_negatives='mined' expects matched pairs only (sample with itm_negative_prob=0)")
    terms = FlavaLossTerms()
    gc_out = None
    if objectives.gc:
        gc_out = model.flava(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             pixel_values=batch.pixel_values, skip_multimodal_encoder=True)
        if model.training:
            model.flava.logit_scale.data.clamp_(0.0, LOGIT_SCALE_MAX)
        image, text = contrastive_embeddings(model, gc_out.image_embeddings, gc_out.text_embeddings)
        terms.global_contrastive = global_contrastive_loss(image, text, model.flava.logit_scale, gather=gather)
    out = None
    if objectives.mmm or (objectives.itm and itm_pair == "masked"):
        out = model.flava(input_ids=batch.itm_ids_masked, attention_mask=batch.itm_attention_mask,
                          pixel_values=batch.pixel_values, bool_masked_pos=batch.bool_masked_pos)
    if objectives.itm:
        if itm_pair == "masked":
            itm_out, mm = out, out.multimodal_embeddings  # (B, 1 + 1 + P + L, D): [CLS_M], image CLS, patches, text
        elif mined:  # matched pairs only: the ITM texts are GC's captions, so GC's unmasked states serve
            itm_out = gc_out
            mm = multimodal_encode(model, gc_out.image_output.hidden_states[-1], gc_out.text_output.hidden_states[-1],
                                   batch.attention_mask)
        else:
            itm_out = model.flava(input_ids=unmasked_itm_ids(batch), attention_mask=batch.itm_attention_mask,
                                  pixel_values=batch.pixel_values)
            mm = itm_out.multimodal_embeddings
        if mined:  # the negatives re-pair this pass's encoder states: only the multimodal encoder runs again
            ids, offset = gather_rows(batch.input_ids)  # mined from the global batch (ALBEF gathers first)
            i, t = mined_itm_pairs(ids, gather_rows(image.detach())[0], gather_rows(text.detach())[0], generator)
            mine = slice(offset, offset + batch.input_ids.shape[0])  # this process's negatives: (B,), (B,)
            image_states = gather_rows(itm_out.image_output.hidden_states[-1])[0]  # (N, 1 + P, D)
            text_states, masks = gather_rows(itm_out.text_output.hidden_states[-1])[0], gather_rows(batch.itm_attention_mask)[0]
            neg = multimodal_encode(model, image_states[i[mine]], text_states[t[mine]], masks[t[mine]])
            logits = torch.cat([model.itm_head(mm), model.itm_head(neg)])  # (2B, 2)
            labels = torch.cat([batch.itm_labels, torch.zeros_like(batch.itm_labels)])  # (2B,)
            terms.itm = F.cross_entropy(logits, labels)
        else:
            terms.itm = F.cross_entropy(model.itm_head(mm), batch.itm_labels)
    if objectives.mmm:
        mm = out.multimodal_embeddings  # (B, 1 + 1 + P + L, D) of the masked pass
        pos = batch.itm_labels.bool() | ~batch.itm_labels.bool().any()  # matched pairs (all if none)
        p = batch.bool_masked_pos.shape[1]
        image_labels = batch.image_tokens.masked_fill(~batch.bool_masked_pos, CE_IGNORE)[pos]  # (B+, P)
        terms.mmm_image = _masked_prediction(model.mmm_image_head, mm[pos][:, 2 : 2 + p], image_labels)
        terms.mmm_text = _masked_prediction(model.mmm_text_head, mm[pos][:, -batch.mlm_labels.shape[1]:],
                                            batch.mlm_labels[pos])
    return terms


def losses(model, batch: PairedBatch | ImageBatch | TextBatch, objectives: Objectives, gather: bool = True,
           itm_negatives: str = "sampled", generator: torch.Generator | None = None, itm_pair: str = "masked"
           ) -> FlavaLossTerms:
    """The losses ``objectives`` asks for on one batch of one source (``paired_losses`` for ``itm_negatives``
    and ``itm_pair``)."""
    if isinstance(batch, PairedBatch):
        return paired_losses(model, batch, objectives, gather, itm_negatives, generator, itm_pair)
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
