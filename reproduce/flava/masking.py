"""Masking of FLAVA's inputs (Singh et al., CVPR 2022, arXiv 2112.04482, §3.1): BEiT block masking for
images (MIM, MMM), BERT's 15% token masking for text (MLM, MMM).

Shape notation: B batch, G patch-grid side, P = G x G image patches, L text tokens.

Deviations from the paper:
* The block-mask budget scales BEiT's 75 of 196 patches (38%) and 16-patch minimum group to our grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

TEXT_MASK_PROB = 0.15  # §3.1: "15% of text tokens", as BERT
BEIT_MASK_RATIO = 75 / 196  # BEiT / FlavaImageProcessor: 75 of 196 patches masked
BEIT_MIN_GROUP = 16 / 196  # BEiT: a masked block covers at least 16 of 196 patches


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
