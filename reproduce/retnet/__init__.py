"""Retentive Network (Sun et al., 2023, arXiv:2307.08621): retention, the RetNet LM, its experiments.

Reproduces (as relations at small scale): the equality of the three forms of retention (§2.1,
eqs. 5-7), inference cost vs length (Figure 6), training cost vs length (Table 4), language
modelling against a Transformer and the Linear Transformer of Katharopoulos et al. (Table 5) and the
ablations of Table 6.

Modules, bottom-up:

- ``retention`` (§2.1-2.3: decay, rotation, the three forms, MSR and the block, ``RetentionConfig``;
  torch only);
- ``model`` (§2.3: ``RetNetConfig`` and the Hugging Face LM with its recurrent cache);
- ``baselines`` (the Table 5/6 rows and their builders, the Linear Transformer; the Transformer blocks
  of Table 4);
- ``data`` (the language-modelling text), ``costs`` (sections 1-3: forms, decode and training cost),
  ``language_models`` (sections 4-5: the lr sweep and the LM runs): measurements, no claims;
- ``sections`` (one function per notebook section 1-3: measure, record, claim; the paper's numbers in
  ``PAPER``), ``lm_sections`` (sections 4-5, Tables 5 and 6), ``plots`` (figures; ``FIGURES`` and its Korean table ``KO``), ``plan`` (GPU plan).

This module exports the retention names only: importing ``reproduce.retnet.retention`` (as the fresh
process of a training-cost point does) runs this file first, and must not import transformers (the
model) or matplotlib (the plots). Import those from their modules.

Reference implementation consulted for facts (no code copied): torchscale 0.3.0 (Microsoft).
"""

from .retention import (
    MODES,
    MultiScaleRetention,
    RetentionConfig,
    RetentionState,
    RetNetBlock,
    decay_mask,
    decay_rates,
    decay_row_sum,
    retention_chunkwise,
    retention_parallel,
    retention_recurrent,
    rotate,
)

__all__ = ["MODES", "MultiScaleRetention", "RetNetBlock", "RetentionConfig", "RetentionState", "decay_mask",
           "decay_rates", "decay_row_sum", "retention_chunkwise", "retention_parallel", "retention_recurrent", "rotate"]
