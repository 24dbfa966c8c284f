"""Priority regions: a per-pixel bias added to the cell complexity (docs/algorithms.md section 1).

A cell's complexity gains the sum of the bias over its pixels. Bias maps are rounded to
multiples of :data:`BIAS_QUANTUM` and bounded by :data:`MAX_ABS_BIAS` per pixel, so every cell
sum (an integral-image difference) is exact in float64 and both partition paths agree.
"""
from __future__ import annotations

from typing import Any

import torch

from gpstoken import validate

MAX_ENTROPY = 9.0  # log2(512): the largest possible histogram entropy
BIAS_QUANTUM = 2.0**-24  # bias maps are rounded to this grid so cell sums are exact
MAX_ABS_BIAS = 2.0**12  # per pixel, keeps every cell sum exact in float64


def quantize_bias(bias: torch.Tensor) -> torch.Tensor:
    """float64 bias (checked by :func:`gpstoken.validate.bias_map`) rounded to multiples of ``2**-24``."""
    return torch.round(bias / BIAS_QUANTUM) * BIAS_QUANTUM


def priority_bias(priority: Any, height: int, width: int, weight: float = 2.5,
                  strength: float = 1.0) -> torch.Tensor:
    """Per-pixel bias map float64 ``[height, width]`` from a priority mask or boxes.

    ``priority`` is an ``[H,W]`` mask (bool, or float weights in [0, 1]) or a sequence of
    pixel boxes ``(x0, y0, x1, y1)`` (inclusive, clipped to the image). A pixel of weight
    ``a`` gets ``a * strength * 9 ** weight``: ``9 ** weight`` is the largest entropy term
    per pixel (entropy <= log2(512) = 9), so a fully prioritised cell outranks any cell of
    the same size outside the priority region and is split first.
    """
    scale = strength * MAX_ENTROPY**weight
    checked = validate.priority(priority, height, width)
    if isinstance(checked, torch.Tensor):
        return checked * scale
    m = torch.zeros(height, width, dtype=torch.float64)
    for x0, y0, x1, y1 in checked:
        m[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = scale
    return m
