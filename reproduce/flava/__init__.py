"""FLAVA: A Foundational Language And Vision Alignment Model (Singh et al., CVPR 2022, arXiv 2112.04482).

Reproduces, with a tiny FLAVA trained with all five objectives on offline data (generated captioned
scenes, emoji, novels; Flickr30K pairs from the hub in the gpu profile):

- §3.1 / Figure 2: the five pretraining objectives, checked against Hugging Face's
  ``FlavaForPreTraining`` on the same batches;
- Table 3: the objective ablation (MIM, MLM, FLAVA_C, FLAVA_MM, FLAVA, FLAVA+init), every row trained
  with the same budget and scored in Table 4's three domains (small stand-ins for its 35 tasks);
- Table 4's zero-shot retrieval rows: similarity matrices before and after pretraining, examples.

Modules, bottom-up: :mod:`.model` (``FlavaSizes`` and Hugging Face's ``FlavaForPreTraining`` built
from them), :mod:`.masking` (BEiT block masking, BERT token masking), :mod:`.tokenisers` (the k-means
image VQ, WordPiece), :mod:`.objectives` (the five losses of §3.1 on the model's modules: the gathered
global contrastive loss, ALBEF's mined ITM negatives, MMM), :mod:`.ablation` (Table 3's rows and row
6's initialisation), :mod:`.data` (the pretraining sources, the batch sampler, the evaluation sets),
:mod:`.pretraining` (one row's round-robin training through ``reproduce.train``), :mod:`.evaluation`
(the three domains' tasks), :mod:`.experiments` (measurements, no claims), :mod:`.sections` (one
function per notebook section: measure, record, claim; the paper's numbers in ``PAPER``), :mod:`.plan`
(``python -m reproduce plan flava``), :mod:`.plots` (``FIGURES`` and the Korean table ``KO``).

References consulted: the paper; Hugging Face's ``FlavaForPreTraining`` (modules, losses, BEiT masking
generator); torchmultimodal's FLAVA (temperature clamp); ALBEF (Li et al., NeurIPS 2021: mined ITM
negatives).

Deviations from the paper (each module lists its own): a k-means VQ of patch pixels instead of the
DALL-E dVAE (:mod:`.tokenisers`); learned tokens start truncated-normal, not at zero (:mod:`.model`);
row 6 starts from our own MIM and MLM rows, not DINO and a released text encoder (:mod:`.ablation`);
scale: the cpu profile trains 32 px images on encoders of 0.5M parameters, the gpu profile ViT-B/16
sizes on 30K Flickr30K pairs (the paper: 70M PMD pairs); the evaluation tasks are small stand-ins
(:mod:`.evaluation`).
"""

from .ablation import INIT_ROW, AblationRow, table3_rows
from .masking import BlockMasking, mask_text
from .model import FlavaSizes, build_model, load_flava_full
from .objectives import (
    FlavaLossTerms,
    ImageBatch,
    Objectives,
    PairedBatch,
    TextBatch,
    global_contrastive_loss,
    hf_pretraining_losses,
    losses,
    mine_hard_negatives,
)
from .plots import FIGURES, KO
from .tokenisers import PatchVQ, build_wordpiece

__all__ = [
    "FIGURES", "INIT_ROW", "KO", "AblationRow", "BlockMasking", "FlavaLossTerms", "FlavaSizes", "ImageBatch",
    "Objectives", "PairedBatch", "PatchVQ", "TextBatch", "build_model", "build_wordpiece", "global_contrastive_loss",
    "hf_pretraining_losses", "load_flava_full", "losses", "mask_text", "mine_hard_negatives", "table3_rows",
]
