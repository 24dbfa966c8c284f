"""Loading: :func:`load_tokenizer` / :func:`load_generator` from a registry name, Hub id or local
file / folder (resolved by :mod:`gpstoken.hub`, formats of :mod:`gpstoken.checkpoint`), cached."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch

from .. import checkpoint, hub
from ..checkpoint import GeneratorConfig
from ..layout_bank import LayoutBank, load_layout_bank
from ..models.configs import SiTConfig, TokenizerConfig
from ..models.sit import SiT
from ..models.tokenizer import GPSTokenizer
from .devices import pick_device, pick_dtype
from .generator import Generator
from .tokenizer import Tokenizer


def _build(cls, config, state: dict, name: str):
    with torch.device("meta"):
        model = cls(config)
    state = checkpoint.fit_state_dict(model.state_dict(), state, name=name)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model


@functools.lru_cache(maxsize=4)
def _load_tokenizer_cached(name_or_path: str, arch: Optional[str], device: torch.device,
                           dtype: torch.dtype) -> Tokenizer:
    resolved = hub.resolve(name_or_path, "tokenizer", arch=arch)
    state, meta = checkpoint.load_safetensors(resolved.path)
    if resolved.config is None:  # a config.json that is not a tokenizer config, or none at all
        raise checkpoint.CheckpointFormatError(f"{resolved.path}: no tokenizer config found")
    try:
        config = TokenizerConfig.from_dict(resolved.config)
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointFormatError(f"{resolved.path}: not a tokenizer config ({e})") from e
    model = _build(GPSTokenizer, config, state, str(resolved.path))
    per_patch = meta.get("decode_per_patch") == "true" or any(
        s.decode_per_patch for s in (resolved.spec, hub.spec_of_arch(resolved.arch, "tokenizer")) if s is not None)
    return Tokenizer(model, hub.model_id(resolved), device, dtype, decode_per_patch=per_patch,
                     resolved=resolved, fit_steps=checkpoint.fit_steps(meta, str(resolved.path)))


def load_tokenizer(name_or_path: str | Path = "default", *, arch: Optional[str] = None, device=None,
                   dtype=None) -> Tokenizer:
    """Load a tokenizer by registry name ("default", "gpstoken-m128", ...), Hub id
    (``owner/repo[@revision][:filename]``) or local ``.safetensors`` file / folder. Cached.

    Files as the official release publishes them (no config, possibly extra keys) load too: L256
    is recognised from its shapes, S64/M128 from the file name (``gpstoken_m128.safetensors``) or
    ``arch=`` (a ``gpstoken.models.configs.TOKENIZER_ARCHS`` name). device: default CUDA when
    available; dtype: float32 (default), or float16/bfloat16 on CUDA, or bfloat16 on a CPU with
    native bfloat16 (AVX512-BF16, AMX; :func:`gpstoken.runtime.native_cpu_bfloat16`).
    """
    dev = pick_device(device)
    return _load_tokenizer_cached(str(name_or_path), arch, dev, pick_dtype(dtype, dev))


def _sit(state: dict, prefix: str, config: SiTConfig, name: str) -> SiT:
    return _build(SiT, config, checkpoint.sub_state_dict(state, prefix, name=name), f"{name} [{prefix}*]")


def _generator_config(resolved: hub.ResolvedCheckpoint, state: dict, meta: dict) -> tuple[GeneratorConfig, bool]:
    """(config, official): the file's own config, or the official generator's for a file as the
    official release publishes it (``ema_model.*`` weights, no metadata)."""
    if resolved.config is not None:
        if "pretrained_gpstoken_means" in resolved.config:
            return GeneratorConfig.from_official(resolved.config, hub.OFFICIAL_GENERATOR.generator_config()), True
        return GeneratorConfig.from_dict(resolved.config), resolved.spec is not None and resolved.spec.arch is not None
    if checkpoint.is_official_generator(state, meta):
        return hub.OFFICIAL_GENERATOR.generator_config(), True
    raise checkpoint.CheckpointFormatError(
        f"{resolved.path}: not a generator checkpoint (no gpstoken config in it or in a config.json beside it, "
        f"and no official {checkpoint.TEXTURE_PREFIX}* weights)"
    )


def _paired_tokenizer(config: GeneratorConfig, resolved: hub.ResolvedCheckpoint, official: bool,
                      tokenizer: Optional[str | Tokenizer], device, dtype) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    ref = tokenizer if tokenizer is not None else resolved.reference(config.tokenizer)
    if tokenizer is None and official and config.tokenizer in hub.list_pretrained("tokenizer"):
        beside = resolved.sibling(hub.get_spec(config.tokenizer).filename)  # the official weights/ folder
        ref = str(beside) if beside is not None and resolved.repo_id is None else ref
    try:
        return load_tokenizer(ref, device=device, dtype=dtype)
    except checkpoint.CheckpointNotFoundError as e:
        raise checkpoint.CheckpointNotFoundError(
            f"generator {resolved.source}: its tokenizer {ref!r} cannot be found. Put the tokenizer file "
            f"next to the generator file, or pass it: load_generator(..., tokenizer='path/to/tokenizer.safetensors'). "
            f"({e})"
        ) from e


def _layout_bank(state: dict, resolved: hub.ResolvedCheckpoint, layout_bank: Optional[str | Path],
                 official: bool) -> Optional[LayoutBank]:
    if layout_bank is not None:
        return load_layout_bank(layout_bank)
    if any(k.startswith(checkpoint.BANK_PREFIX) for k in state):
        return LayoutBank.from_state_dict(state, prefix=checkpoint.BANK_PREFIX)
    if official:
        name = hub.OFFICIAL_GENERATOR.layout_bank
        path = resolved.sibling(name) if name is not None else None
        return load_layout_bank(path) if path is not None else None
    return None


@functools.lru_cache(maxsize=2)
def _load_generator_cached(name_or_path: str, tokenizer: Optional[str | Tokenizer], layout_bank: Optional[str],
                           device: torch.device, dtype: torch.dtype) -> Generator:
    resolved = hub.resolve(name_or_path, "generator")
    state, meta = checkpoint.load_safetensors(resolved.path)
    config, official = _generator_config(resolved, state, meta)
    name = str(resolved.path)
    texture = _sit(state, checkpoint.TEXTURE_PREFIX, config.texture, name)
    layout_model = _sit(state, checkpoint.LAYOUT_PREFIX, config.layout, name) if config.layout is not None else None
    bank = _layout_bank(state, resolved, layout_bank, official)
    tok = _paired_tokenizer(config, resolved, official, tokenizer, device, dtype)
    return Generator(texture, tok, config, name=hub.model_id(resolved), layout_model=layout_model,
                     layout_bank=bank, resolved=resolved)


def load_generator(name_or_path: str | Path = "default", *, tokenizer: Optional[str | Tokenizer] = None,
                   layout_bank: Optional[str | Path] = None, device=None, dtype=None) -> Generator:
    """Load a two-stage generator (texture SiT + layout source + paired tokenizer). Cached.

    name_or_path: registry name, Hub id, a ``.safetensors`` file, or a folder. The official
    generator loads as published: a folder holding ``generator.safetensors`` (and
    ``initg.pickle``, ``gpstoken_m128.safetensors``, optionally a ``config.json``) needs no
    config. tokenizer: overrides the paired tokenizer (name, path or a loaded Tokenizer);
    layout_bank: a layout bank (the official ``initg.pickle`` or a safetensors bank) for stage 1.
    """
    dev = pick_device(device)
    bank = str(layout_bank) if layout_bank is not None else None
    tok = tokenizer if isinstance(tokenizer, Tokenizer) or tokenizer is None else str(tokenizer)
    return _load_generator_cached(str(name_or_path), tok, bank, dev, pick_dtype(dtype, dev))
