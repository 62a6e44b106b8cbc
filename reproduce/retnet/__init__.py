"""RetNet (Sun et al., 2023): see reproduce/retnet/model.py."""
from .model import *  # noqa
