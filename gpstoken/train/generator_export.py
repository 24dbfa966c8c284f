"""The generator export: a trained SiT's EMA weights in the official format, with the config
``gpstoken.load_generator`` reads (docs/algorithms.md section 6).

The texture model goes under ``ema_model.`` in ``generator.safetensors``; its config
(safetensors metadata) is ``{"texture": SiT config, "latent_mean", "latent_std", "tokenizer":
paired tokenizer id, "class_names", "n_tokens"}`` plus, when a layout model is bundled,
``"layout": SiT config, "layout_mean", "layout_std"``. With ``layout_from`` (a layout export,
or a generator that bundles a layout model) its ``layout_model.`` weights and stats are bundled
in. A layout model alone goes under ``layout_model.`` in ``layout.safetensors``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoint import (
    LAYOUT_PREFIX,
    TEXTURE_PREFIX,
    GeneratorConfig,
    checkpoint_config,
    load_safetensors,
    save_checkpoint,
)
from ..models.configs import SiTConfig
from ..sampling import SamplingDefaults

__all__ = ["export_generator"]


def export_generator(path: str | os.PathLike, kind: str, model: torch.nn.Module, sit_config: SiTConfig,
                     stats: tuple[torch.Tensor, torch.Tensor], class_names: list[str], *,
                     tokenizer: Optional[str] = None, layout_from: Optional[str] = None,
                     sampling: Optional[SamplingDefaults] = None, dtype: str = "float32",
                     extra_metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model``'s weights to ``path`` as a texture (``kind="texture"``) or layout
    (``kind="layout"``) export.

    stats: the per-channel target normalisation ``(mean [C], std [C])``. tokenizer: the paired
    tokenizer id (texture). layout_from: a file whose layout model is bundled in (texture).
    sampling: the generator's sampling defaults (texture; default :class:`SamplingDefaults`).
    dtype: ``"float16"`` or ``"float32"``. Returns ``path``.
    """
    dt = torch.float16 if dtype == "float16" else torch.float32
    prefix = TEXTURE_PREFIX if kind == "texture" else LAYOUT_PREFIX
    state = {prefix + k: v.detach().to("cpu", dt).contiguous() for k, v in model.state_dict().items()}
    mean, std = stats
    info: dict[str, Any] = {"class_names": class_names, "n_tokens": sit_config.input_size[0]}
    if kind == "texture":
        info.update(texture=sit_config.to_dict(), latent_mean=mean.tolist(), latent_std=std.tolist(),
                    tokenizer=tokenizer)
        if layout_from:
            state.update(_layout_part(layout_from, info))
        if sampling is not None:
            info["sampling"] = sampling.to_dict()
        info = GeneratorConfig.from_dict(info).to_dict()  # the schema loaders read
    else:
        info.update(layout=sit_config.to_dict(), layout_mean=mean.tolist(), layout_std=std.tolist())
    save_checkpoint(state, path, info, "generator", extra_metadata or {})
    return Path(path)


def _layout_part(path: str, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ``layout_model.`` weights of a layout export, or of a generator that bundles one (to
    retrain only the texture model); adds the layout config and stats to ``info``."""
    state, file_meta = load_safetensors(path)
    try:
        layout = checkpoint_config(file_meta, "generator") or {}
    except ValueError as e:
        raise ValueError(f"layout_from: {path}: {e}") from e
    if "layout" not in layout:
        raise ValueError(f"layout_from: {path} holds no layout model: pass the layout export of "
                         "`gpstoken train layout` or a generator that bundles one")
    if layout.get("n_tokens") != info["n_tokens"]:
        raise ValueError(f"layout_from: {path} makes {layout.get('n_tokens')} tokens, this model {info['n_tokens']}")
    info.update({k: layout[k] for k in ("layout", "layout_mean", "layout_std")})
    part = {k: v for k, v in state.items() if k.startswith(LAYOUT_PREFIX)}
    if not part:
        raise ValueError(f"layout_from: {path} holds no {LAYOUT_PREFIX}* weights")
    return part
