"""Checks of :func:`gpstoken.render.render`'s inputs."""
from __future__ import annotations

from numbers import Integral, Real
from typing import Any

import torch

from ..geometry import GEOMETRY
from . import tokens


def render_inputs(geometry: Any, features: Any, size: Any, support: Any) -> tuple[int, int]:
    """Checks of :func:`gpstoken.render.render`; returns ``(h, w)``.

    geometry float ``[B,N,5]`` and features float ``[B,N,C]`` on one device, with finite
    values, sigma > 0 and ``|rho| < 1``; size a pair of ints >= 2; support > 0 (inf allowed).
    """
    if not isinstance(geometry, torch.Tensor) or not isinstance(features, torch.Tensor):
        raise ValueError("render: geometry and features must be torch tensors")
    if geometry.dim() != 3 or geometry.shape[-1] != GEOMETRY:
        raise ValueError(f"render: geometry must be [B,N,5], got {list(geometry.shape)}")
    if features.dim() != 3 or features.shape[:2] != geometry.shape[:2]:
        raise ValueError(f"render: features must be [B,N,C] with geometry's [B,N]={list(geometry.shape[:2])}, "
                         f"got {list(features.shape)}")
    if not (geometry.is_floating_point() and features.is_floating_point()):
        raise ValueError(f"render: inputs must be floating point, got {geometry.dtype} and {features.dtype}")
    if geometry.device != features.device:
        raise ValueError(f"render: geometry on {geometry.device} but features on {features.device}")
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
        isinstance(s, Integral) and not isinstance(s, bool) for s in size
    ):
        raise ValueError(f"render: size must be a pair of ints (h, w), got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 2 or w < 2:
        raise ValueError(f"render: size must be at least 2x2 (pixel centres span [-1, 1]), got {(h, w)}")
    if isinstance(support, bool) or not isinstance(support, Real) or not float(support) > 0:  # NaN fails too
        raise ValueError(f"render: support must be a positive number (inf = no cut-off), got {support!r}")
    tokens.gaussians(geometry, features, "render")
    return h, w
