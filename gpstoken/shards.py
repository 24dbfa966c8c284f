"""The token-shard folder format written by ``gpstoken tokenize`` and read by
:class:`gpstoken.TokenDataset`.

A folder ``OUT`` holds

* ``shard-00000.safetensors``, ``shard-00001.safetensors``, ...: shard ``s`` covers source
  images ``s*shard_size .. (s+1)*shard_size - 1`` (in source order) and holds, for its M
  tokenized images (skipped images left out):

  - ``geometry`` float32 ``[M,N,5]`` and ``features`` float32 ``[M,N,C]`` (the refined tokens),
  - ``layout.geometry`` float32 ``[M,N,5]`` and ``layout.regions`` float32 ``[M,N,4]`` (the
    entropy-partition layout they were encoded from),
  - ``source_size`` int64 ``[M,2]``: ``(H, W)`` of each source image before preprocessing,
  - ``index`` int64 ``[M]``: each image's position in the source;
  - ``label`` int64 ``[M]``: each image's class (``-1``: unlabeled; names in the manifest's
    ``classes``);

  and one metadata entry ``shard``: JSON ``{"run": {...}, "ids": [...], "skipped": [...]}``
  (``run``: what must match for a resumed run to reuse the shard; ``ids``: the M source
  ids; ``skipped``: ``{"index", "id", "reason"}`` of images that could not be used).
* ``manifest.json``: written once every shard exists (see :func:`build_manifest`): model id
  and checkpoint SHA-256, token count, preprocessing, the shards with their image counts
  and the skipped images.

Every file is written to a temporary name in ``OUT`` and renamed, so a killed run never
leaves a shard or manifest that counts; a resumed run reuses the shards whose ``run``
matches and rewrites the others.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .io import write_safetensors, write_text

FORMAT = "gpstoken-token-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = ("geometry", "features", "layout.geometry", "layout.regions", "source_size", "index", "label")


def shard_name(s: int) -> str:
    return f"shard-{s:05d}.safetensors"


def write_shard(path: Path, tensors: dict[str, torch.Tensor], run: dict[str, Any], ids: list[str],
                skipped: list[dict[str, Any]]) -> None:
    """Write one shard atomically (see the module doc for the tensors)."""
    missing = set(TENSORS) - set(tensors)
    if missing:
        raise ValueError(f"write_shard: missing tensors {sorted(missing)}")
    meta = {"shard": json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "run": run, "ids": ids,
                                 "skipped": skipped}, sort_keys=True)}
    write_safetensors({k: tensors[k] for k in TENSORS}, path, meta)


def shard_metadata(path: Path) -> dict[str, str] | None:
    """The string metadata of a complete safetensors file, or None when ``path`` is missing or
    not a readable safetensors file."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError):
        return None


def shard_info(path: Path) -> dict[str, Any] | None:
    """The ``shard`` metadata of a finished shard, or None when ``path`` is missing or is not a
    readable gpstoken shard."""
    meta = shard_metadata(path)
    if meta is None:
        return None
    try:
        info = json.loads(meta.get("shard", ""))
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT else None


def read_shard(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a shard."""
    from safetensors.torch import load_file

    return load_file(str(path))


def build_manifest(out: Path, n_shards: int, header: dict[str, Any]) -> dict[str, Any] | None:
    """Write ``manifest.json`` when all ``n_shards`` shards exist; returns it, or None when some
    shard is still missing. ``header`` (model, tokens, preprocessing, source) is written as is
    and completed with the shard list, the image counts and the skipped images."""
    shards, skipped, total = [], [], 0
    for s in range(n_shards):
        info = shard_info(out / shard_name(s))
        if info is None:
            return None
        shards.append({"file": shard_name(s), "images": len(info["ids"])})
        skipped += info["skipped"]
        total += len(info["ids"])
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **header, "images": total,
                "shards": shards, "skipped": skipped}
    write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(out: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a finished token folder; clear errors for a missing or unfinished one."""
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        if out.is_dir() and any(out.glob("shard-*.safetensors")):
            raise FileNotFoundError(f"{out}: the tokenize run is not finished (no {MANIFEST} yet); "
                                    "rerun the same `gpstoken tokenize` command to resume it")
        raise FileNotFoundError(f"{out}: not a gpstoken token folder (no {MANIFEST}); "
                                "make one with `gpstoken tokenize`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a gpstoken token manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: format version {manifest['format_version']} is newer than this gpstoken "
                         f"reads ({FORMAT_VERSION}); upgrade gpstoken")
    return manifest
