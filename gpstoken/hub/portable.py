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


def model_id(resolved: ResolvedCheckpoint) -> str:
    """The portable id of a resolved checkpoint: the one rule for what gpstoken records.

    The registry name when the file is a registry entry's (reached by name, or by its Hub id at
    the entry's revision); ``owner/repo[@revision]:file`` for other Hub files; the bare file name
    for local files (never a path: the id travels to other machines, and a user there passes
    ``model=`` for a local file).
    """
    spec = resolved.spec
    if spec is not None and resolved.revision in (None, spec.revision):
        return spec.name
    if resolved.repo_id is not None:
        return resolved.source  # resolve writes Hub sources as owner/repo[@revision]:file
    return resolved.path.name


def portable_id(model: Any) -> tuple[str, str]:
    """``(id, sha256)`` of a loaded :class:`~gpstoken.Tokenizer` / :class:`~gpstoken.Generator`:
    what ``.gpst`` files, ``gpstoken tokenize`` manifests and ``gpstoken eval`` reports record.

    id: :func:`model_id` of the checkpoint it was loaded from; sha256: the weights file's content
    hash (hex), to check that another machine resolves the id to the same weights. A model built
    in memory (``resolved`` None) gives ``(model.name, "")``.
    """
    if not hasattr(model, "resolved") or not isinstance(getattr(model, "name", None), str):
        raise TypeError(f"model: expected a Tokenizer or Generator, got {type(model).__name__}")
    resolved = model.resolved
    if resolved is None:
        return model.name, ""
    if not isinstance(resolved, ResolvedCheckpoint):
        raise TypeError(f"model.resolved: expected a ResolvedCheckpoint or None, got {type(resolved).__name__}")
    return model_id(resolved), file_digest(resolved.path)
