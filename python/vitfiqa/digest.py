"""Content digests of files: what a results table, a reproduce cache key and a model's ``sha256`` record, so
results of two different files are never mixed. Imports nothing of vitfiqa (the API, reproduce and the
baselines all build on it)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_MEMO: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, read in 4 MB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_hash(path: str | os.PathLike) -> str:
    """:func:`file_sha256`, memoised per path, size and modification time (a file hashed again only when it
    changed)."""
    st = os.stat(path)
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if memo not in _MEMO:
        _MEMO[memo] = file_sha256(Path(path))
    return _MEMO[memo]


__all__ = ["file_sha256", "file_hash"]
