"""reproduce: one parameterised notebook per paper, backed by this tested package.

Light on import: paper modules (which import torch) are imported explicitly,
``from reproduce import retnet``.
"""

__version__ = "0.1.0"
