"""FLAVA (Singh et al., CVPR 2022, arXiv 2112.04482): a tiny FLAVA with all five objectives.

``model``: sizes, objectives and Table 3 rows, masking, tokenisers, the five losses (on Hugging Face's
``FlavaForPreTraining`` modules). ``data``: the pretraining sources, the batch sampler and the
evaluation sets. ``pretraining``: round-robin training of one row (``FlavaTrainConfig`` extends
``reproduce.train.TrainConfig``). ``evaluation``: the three domains' tasks. ``experiments``: the
ablation (every row and seed) and the HF path (measurements only). ``sections``: one function per notebook section (record, claim) and the paper's
numbers (``PAPER``). ``plots``: the figures (``FIGURES``) with their Korean table ``KO``.
"""

from reproduce.flava.plots import FIGURES, KO  # noqa: E402  (figures.make looks them up here)

__all__ = ["FIGURES", "KO"]
