"""Attention Is All You Need (Vaswani et al., NIPS 2017, arXiv:1706.03762).

Reproduces Table 1 (measured per-layer cost, sequential steps and path length), the Table 2
recipe (EN-DE training with Adam + eq. 3 schedule, label smoothing, beam search, checkpoint
averaging; BLEU with sacrebleu) and Table 3's model variations (A)-(E) at small scale, plus the
attention maps of Figures 3-5.

Modules, bottom-up: ``model`` (eqs. 1-3, §3), ``decoding`` (§6.1 beam search, checkpoint
averaging), ``table1`` (§4 measurements), ``data`` (§5.1 sentence pairs and batches),
``experiments`` (training and evaluation runs), ``sections`` (one function per notebook section:
measure, record, claim; the paper's numbers in ``PAPER``), ``variations`` (section 4: Table 3's
rows, their runs in the worker pool and §6.2's claims), ``plots`` (figures), ``plan`` (GPU plan).

Reference implementations consulted for facts (no code copied): tensor2tensor (the authors'),
the Annotated Transformer (Harvard NLP), ``torch.nn.Transformer``, fairseq's beam search.

Deviations from the paper:
- Data: WMT14 EN-DE (4.5M pairs) is replaced offline by ~19k BEOLINGUS dictionary sentence
  pairs (+ optional Bible verses); vocabulary, model sizes, batch and step counts are scaled down.
- Attention projections carry biases (as ``torch.nn.MultiheadAttention``).
- Checkpoints are written every k steps instead of every 10 minutes.
"""

from .decoding import average_checkpoints, beam_search, greedy_decode, length_penalty
from .model import (
    MultiHeadAttention,
    Transformer,
    TransformerConfig,
    count_parameters,
    label_smoothed_loss,
    noam_lr,
    scaled_dot_product_attention,
    sinusoidal_encoding,
)
from .plots import FIGURES, KO
