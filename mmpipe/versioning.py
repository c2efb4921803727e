"""Content hashes that version data: the same bytes always give the same version.

Directory hashes follow DVC's idea (a hash over the sorted (relative path, file md5) list),
so a table's version changes when the table or any media file it references changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

_CHUNK = 1 << 20


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def directory_md5(path: Path, pattern: str = "*") -> str:
    """Hash of every file under ``path`` matching ``pattern``, by relative name and content."""
    path = Path(path)
    digest = hashlib.md5()
    for file in sorted(p for p in path.rglob(pattern) if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file_md5(file).encode())
    return digest.hexdigest()


# Media folders whose files belong to a raw table's version.
_TABLE_MEDIA = {"pins": "images", "videos": "videos"}


def raw_table_version(raw_root: Path, table: str) -> str:
    """Version of one raw table: its Parquet file plus the media files it points at."""
    raw_root = Path(raw_root)
    digest = hashlib.md5(file_md5(raw_root / f"{table}.parquet").encode())
    media = _TABLE_MEDIA.get(table)
    if media and (raw_root / media).is_dir():
        digest.update(directory_md5(raw_root / media).encode())
    return digest.hexdigest()[:16]


def dvc_tracked_hash(dvc_file: Path) -> str | None:
    """The md5 DVC recorded for the tracked output of a ``.dvc`` file (None if absent)."""
    dvc_file = Path(dvc_file)
    if not dvc_file.exists():
        return None
    spec = yaml.safe_load(dvc_file.read_text()) or {}
    outs = spec.get("outs") or []
    return outs[0].get("md5") if outs else None
