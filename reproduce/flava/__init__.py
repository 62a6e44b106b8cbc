"""FLAVA (Singh et al., CVPR 2022, arXiv 2112.04482): a tiny FLAVA with all five objectives.

``model``: sizes, objectives and Table 3 rows, masking, tokenisers, the five losses (on Hugging Face's
``FlavaForPreTraining`` modules). ``experiments``: data, round-robin training, evaluation, the
ablation. ``plots``: the figures (``FIGURES``) with their Korean table ``KO``.
"""

from reproduce.flava.plots import FIGURES, KO  # noqa: E402  (figures.make looks them up here)

__all__ = ["FIGURES", "KO"]
