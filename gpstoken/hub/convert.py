"""Conversion of official PyTorch pickle checkpoints (``.pt``/``.pth``/``.ckpt``) to safetensors,
refused unless the caller trusts the file."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..checkpoint import CheckpointFormatError, CheckpointNotFoundError, is_pickle
from ..io import write_safetensors

_NESTED_KEYS = ("state_dict", "model", "ema", "model_ema", "ema_model", "module", "net")


def _find_state_dict(obj: Any, key: str | None, src: Path) -> dict[str, torch.Tensor]:
    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, Mapping) or part not in obj:
                raise ValueError(f"key: {src} has no entry {key!r}")
            obj = obj[part]
    while True:
        if not isinstance(obj, Mapping):
            raise CheckpointFormatError(f"{src}: expected a dict of tensors, found {type(obj).__name__}")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        nested = [k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)]
        if len(nested) != 1:
            found = nested or [k for k, v in obj.items() if isinstance(v, Mapping)]
            raise CheckpointFormatError(
                f"{src}: cannot tell which entry holds the state dict (dict entries: {found}); "
                "pass key='NAME' (nested: 'a/b')"
            )
        obj = obj[nested[0]]


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    trust: bool = False,
    key: str | None = None,
    strip_prefix: str | Iterable[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Convert a PyTorch pickle checkpoint (``.pt``/``.pth``/``.ckpt``) to safetensors.

    Unpickling can execute code, so it is refused unless ``trust=True``. It is then loaded
    with ``torch.load(weights_only=True)``, falling back to a full unpickle (with a warning)
    only when that fails. The state dict may be nested under ``state_dict``/``model``/``ema``
    (found automatically when unambiguous) or picked with ``key`` (``"a/b"`` for nesting).
    ``strip_prefix``: prefix(es) removed from the keys that start with them (e.g.
    ``"module."``); nothing is stripped unless asked. Writes ``dst`` atomically; returns it.
    """
    src = Path(src)
    if not src.is_file():
        raise CheckpointNotFoundError(f"convert_checkpoint: source file not found: {src}")
    if not is_pickle(src):
        raise CheckpointFormatError(f"src: {src} is not a PyTorch checkpoint (neither a torch zip file nor a pickle); "
                                    "give the .pt / .pth / .ckpt file the official code saved (safetensors files "
                                    "load as they are)")
    if not trust:
        raise CheckpointFormatError(
            f"refusing to unpickle {src}: pickle files can run arbitrary code. If it comes from a "
            "source you trust, call convert_checkpoint(src, dst, trust=True) (gpstoken convert --trust)"
        )
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure of the restricted unpickler; the user vouched for the file
        warnings.warn(f"{src}: weights-only loading failed ({e}); unpickling fully because trust=True", stacklevel=2)
        obj = torch.load(src, map_location="cpu", weights_only=False)
    state_dict = _find_state_dict(obj, key, src)
    prefixes = [strip_prefix] if isinstance(strip_prefix, str) else list(strip_prefix or [])
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        if k in out:
            raise CheckpointFormatError(f"{src}: stripping {prefixes} makes key {k!r} appear twice")
        out[k] = v.detach().clone().contiguous()  # clone: safetensors refuses shared storage
    meta = {"converted_from": src.name, **dict(metadata or {})}
    return write_safetensors(out, dst, meta)
