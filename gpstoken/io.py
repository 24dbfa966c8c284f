"""Atomic file writes: every file gpstoken writes (PNG outputs, ``.gpst`` token files,
checkpoints, layout banks, training caches) goes through this module.

A write goes to a temporary file in the target's folder and is renamed over the target only
once it is complete, so a crash, a full disk or Ctrl-C never leaves a truncated file and never
destroys the old one; the temporary file is removed on any failure. The finished file gets the
permissions of a newly created file (``0o666`` minus the umask). A missing target folder is
created.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import torch

__all__ = ["atomic_path", "partial_dir", "commit_dir", "atomic_dir", "write_safetensors", "image_format",
           "output_folder", "save_image", "write_text", "IMAGE_SUFFIXES"]

#: file name suffixes :func:`save_image` writes, mapped to the PIL format name
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF"}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _target(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name inside it, e.g. {path / 'out.png'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on normal exit it replaces ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is deleted and
    ``path`` is left as it was. Creates the parent folder; refuses a folder as target.
    """
    path = _target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def partial_dir(path: str | os.PathLike, create: bool = True) -> Path:
    """The folder ``.NAME.partial`` beside the folder ``path``, to be filled and then moved into
    place by :func:`commit_dir`; ``create``: make it new and empty (a stale one from an
    interrupted write is removed first). Its name is fixed, so several processes (one training
    run) can all write into it: one creates it, the others only ask for its name."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.partial"
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    return tmp


def commit_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the finished folder ``tmp`` (from :func:`partial_dir`) to ``path`` in one rename,
    with the permissions of a new folder (``0o777`` minus the umask). An existing ``path`` is
    first renamed aside and removed after, so ``path`` is never a half-written folder."""
    tmp, path = Path(tmp), Path(path)
    os.chmod(tmp, 0o777 & ~_umask())
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on normal exit it becomes ``path``
    (:func:`commit_dir`). On any exception (including KeyboardInterrupt) it is removed and
    ``path`` is left as it was."""
    tmp = partial_dir(path)
    try:
        yield tmp
        commit_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                      metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``tensors`` (moved to CPU, made contiguous) as one safetensors file, atomically."""
    from safetensors.torch import save_file

    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=dict(metadata) if metadata is not None else None)
    return Path(path)


def image_format(path: str | os.PathLike) -> str:
    """The PIL format name for an image output path; raises when ``path`` is a folder
    (IsADirectoryError) or has no known image suffix (ValueError). Cheap: check outputs early."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give an image file name inside it, e.g. {path / 'out.png'}")
    fmt = IMAGE_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image file extension {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)}")
    return fmt


def output_folder(path: str | os.PathLike, name: str) -> Path:
    """An output folder (made later by its writer): refused when ``path`` exists and is not a
    folder (ValueError naming ``name``). Cheap: check outputs before the work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name}: {path} is a file, but this output is a folder; give a folder name (it is created)")
    return path


def save_image(image: Any, path: str | os.PathLike) -> Path:
    """Write a PIL image, atomically; the format comes from the suffix (:func:`image_format`)."""
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
