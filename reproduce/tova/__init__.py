"""TOVA: Transformers are Multi-State RNNs (Oren, Hassid, Yarden, Adi, Schwartz; arXiv 2401.06104, 2024).

Reproduces, on SmolLM2-135M-Instruct (LLaMA architecture, GQA; 4-bit GGUF weights dequantised) and
long English novels:

- Figure 3 / App. A Table 3: perplexity vs multi-state size C for Window, Window+4, H2O, TOVA;
- Table 1: KV-cache bytes and decode throughput vs C, largest batch for a memory budget;
- §6 / Figures 8-9: which tokens TOVA keeps (first token, punctuation, newlines) and per-layer
  occupancy over time;
- generation with each policy at a small C.

Modules: :mod:`.policies` (the policies as ``transformers`` Caches: streaming form),
:mod:`.appendix_e` (the paper's parallel masked evaluation, App. E), :mod:`.experiments`
(measurements, no claims), :mod:`.sections` (one function per notebook section: measure, record,
claim; the paper's numbers in ``PAPER``), :mod:`.plots` (``FIGURES`` and the Korean table ``KO``).

References consulted for facts (not code): the paper; the authors' repository (schwartz-lab-NLP/TOVA,
a ``DynamicCache`` subclass); transformers' ``DynamicSlidingWindowLayer``.

Deviations from the paper:

- Scale: a 135M model (not LLaMA-2-7B); consecutive chunks of Austen/Melville novels (not PG-19),
  L = 2,048 tokens for the budget sweep (C from 64 to L/2) and the paper's L = 4,096, C = 512 for
  the headline point; the paper's claims are checked as relations.
- The App. E decisions of TOVA/H2O run by blocks of steps with a compiled replay
  (``appendix_e.evictions``), beside the step-by-step definition they are tested against.
- H2O with grouped-query attention (absent from LLaMA-2-7B): a KV head's accumulated score sums
  the attention of the query heads that share it.
"""

from .appendix_e import MaskedPass, masked_attention, nll as masked_nll
from .policies import (
    CACHES,
    POLICIES,
    EvictionCache,
    EvictionSpec,
    FullCache,
    H2OCache,
    TOVACache,
    WindowCache,
    WindowSinkCache,
    attach,
    make_cache,
)
from .plots import FIGURES, KO
