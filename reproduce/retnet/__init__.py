"""Retentive Network (Sun et al., 2023, arXiv:2307.08621): retention, the RetNet LM, its experiments.

Reproduces (as relations at small scale): the equality of the three forms of retention (§2.1,
eqs. 5-7), inference cost vs length (Figure 6), training cost vs length (Table 4), language
modelling against a Transformer and linear attention (Table 5) and the ablations of Table 6.

Modules: ``retention`` (§2.1-2.2: decay, rotation, the three forms, MSR; torch only), ``model``
(§2.3: blocks and the Hugging Face LM with its recurrent cache), ``experiments`` (the notebook's
measurements, no claims), ``sections`` (one function per notebook section: measure, record, claim;
the paper's numbers in ``PAPER``), ``plots`` (figures; ``FIGURES`` and its Korean table ``KO``).

Reference implementation consulted for facts (no code copied): torchscale 0.3.0 (Microsoft).
"""

from __future__ import annotations

import importlib

# Lazy attributes: ``reproduce.retnet.retention`` imports torch only, and a fresh process that needs
# just retention (the training-cost points) must not pay for importing transformers.
_EXPORTS = {
    "model": ("RetNetCache", "RetNetConfig", "RetNetForCausalLM", "RetNetModel", "count_parameters"),
    "retention": ("MODES", "MultiScaleRetention", "RetentionState", "decay_mask", "decay_rates", "decay_row_sum",
                  "retention_chunkwise", "retention_parallel", "retention_recurrent", "rotate"),
    "plots": ("FIGURES", "KO"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
_MODULES = ("experiments", "model", "plots", "retention", "sections")
__all__ = sorted(_WHERE) + list(_MODULES)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
