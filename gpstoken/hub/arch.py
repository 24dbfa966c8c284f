"""Architecture recognition of tokenizer files that carry no config: their tensor shapes
against each ``TOKENIZER_ARCHS`` entry (built on the meta device), then the file name."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoint import CheckpointFormatError, read_metadata
from ..models.configs import SIT_ARCHS, TOKENIZER_ARCHS, TokenizerConfig
from .registry import spec_of_arch


def _arch_config(arch: str, kind: str) -> dict[str, Any]:
    archs = TOKENIZER_ARCHS if kind == "tokenizer" else SIT_ARCHS
    if not isinstance(arch, str) or arch not in archs:
        raise ValueError(f"arch: unknown {kind} architecture {arch!r}; choose one of {sorted(archs)}")
    if kind == "generator":
        spec = spec_of_arch(arch, kind)
        if spec is None:
            raise ValueError(f"arch: no registered generator uses {arch!r}; its normalisation is unknown")
        return spec.generator_config().to_dict()
    return archs[arch].to_dict()


@functools.lru_cache(maxsize=None)
def _arch_shapes(config: TokenizerConfig) -> dict[str, tuple[int, ...]]:
    from ..models.tokenizer import GPSTokenizer

    with torch.device("meta"):
        model = GPSTokenizer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    read_metadata(path)  # clear errors for missing / pickled / corrupt files
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def infer_tokenizer_arch(path: str | os.PathLike) -> str:
    """The tokenizer architecture of a safetensors file without a config
    (:func:`arch_from_shapes` of its tensor shapes and file name)."""
    path = Path(path)
    return arch_from_shapes(_file_shapes(path), path)


def arch_from_shapes(shapes: Mapping[str, tuple[int, ...]], path: str | os.PathLike) -> str:
    """The ``TOKENIZER_ARCHS`` name of a tokenizer state dict given as key -> shape.

    The architectures whose weights all appear with the same shapes are candidates (extra keys
    are allowed). Architectures with identical weights (S64 and M128 differ only in their token
    count) are told apart by the file name of ``path`` (``gpstoken_m128.safetensors`` contains
    ``m128``). CheckpointFormatError when none fits, ValueError listing the choices when the
    name does not tell.
    """
    path = Path(path)
    fits = [a for a in TOKENIZER_ARCHS if all(shapes.get(k) == v for k, v in _arch_shapes(TOKENIZER_ARCHS[a]).items())]
    stem = path.name.lower().replace("_", "-")
    if len(fits) > 1:
        named = [a for a in fits if a in stem or a.removeprefix("gpstoken-") in stem.split(".")[0].split("-")]
        fits = named if len(named) == 1 else fits
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise CheckpointFormatError(
            f"{path}: not a GPSToken tokenizer of a known architecture (its weights match none of "
            f"{sorted(TOKENIZER_ARCHS)}) and it carries no config; pass the file written by "
            "Tokenizer.save_pretrained, or a config.json next to it"
        )
    raise ValueError(
        f"{path.name}: the weights fit several architectures {fits} (they differ only in tokens per "
        f"patch) and the file name does not say which; pass arch=, e.g. load_tokenizer({str(path)!r}, "
        f"arch={fits[-1]!r}), or rename the file as published (gpstoken_m128.safetensors)"
    )
