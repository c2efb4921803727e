"""Loaders: people's own data, in the formats they already have, into a raw landing zone.

A loader writes the same files the world generator writes (``mmpipe.layout``), so
validation, quarantine and every asset downstream run unchanged on it.

* ``videos.load_videos``: a folder of MP4s, plus moment queries (QVHighlights JSONL,
  Charades-STA text), captions (MSR-VTT JSON) and shot concepts with summarization
  queries (a QFVS-style JSONL defined in ``formats``). CLI: ``mmpipe load videos``.
* ``formats``: one reader per annotation format; records that cannot be read are
  quarantined with their line (or entry) number, never dropped.
"""

from mmpipe.loaders.formats import AnnotationFileError, ParsedFile
from mmpipe.loaders.videos import LoadResult, load_videos

__all__ = ["AnnotationFileError", "LoadResult", "ParsedFile", "load_videos"]
