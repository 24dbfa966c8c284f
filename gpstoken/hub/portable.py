"""Portable model ids: the id a token file, a tokenize manifest or an eval report records for
a loaded model, so that another machine finds the same weights, plus the checkpoint's SHA-256."""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from .resolve import ResolvedCheckpoint


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes (cached while its size and mtime stay the same)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def portable_id(model: Any) -> tuple[str, str]:
    """``(id, sha256)`` of a loaded :class:`~gpstoken.Tokenizer` / :class:`~gpstoken.Generator`.

    id: the registry name, or ``owner/repo[@revision]:file`` for Hub files (both work on any
    machine), or the absolute path of a local file; sha256: the weights file's content hash, to
    check that another machine resolves the id to the same weights.
    """
    resolved = getattr(model, "resolved", None)
    if not isinstance(resolved, ResolvedCheckpoint):
        raise TypeError(f"model: expected a Tokenizer or Generator loaded by gpstoken, got {type(model).__name__}")
    return resolved.source, file_digest(resolved.path)
