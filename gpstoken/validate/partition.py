"""Checks of the partition's options and inputs: ``n_tokens`` / ``weight`` / ``min_size``,
grey patches, per-pixel bias maps, cell boxes and priority masks or boxes."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def partition_options(n_tokens: Any, weight: Any, min_size: Any) -> tuple[int, float, int]:
    """Options of :func:`gpstoken.partition`: ``n_tokens`` an int >= 1, ``weight`` a finite
    float > 0, ``min_size`` an int >= 1; returns them as ``(int, float, int)``."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)):
        raise TypeError(f"n_tokens: expected an int >= 1 (tokens per 256x256 patch), got {type(n_tokens).__name__}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens: must be >= 1 (tokens per 256x256 patch), got {n_tokens}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating, np.integer)):
        raise TypeError("weight: expected a positive float (entropy exponent, official 2.5), got "
                        f"{type(weight).__name__}")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight: must be a finite float > 0 (entropy exponent, official 2.5), got {weight}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)):
        raise TypeError(f"min_size: expected an int >= 1 (official 8), got {type(min_size).__name__}")
    if min_size < 1:
        raise ValueError(f"min_size: must be an int >= 1 (official 8), got {min_size}")
    return int(n_tokens), float(weight), int(min_size)


def reachable_tokens(n_tokens: int, height: int, width: int, min_size: int) -> None:
    """``n_tokens`` cells can be reached by splitting a ``height x width`` patch down to ``min_size``."""
    from ..partition.greedy import max_cells

    top = max_cells(height, width, min_size)
    if n_tokens > top:
        raise ValueError(
            f"n_tokens: a {height}x{width} patch can be split into at most {top} cells with "
            f"min_size={min_size}, got n_tokens={n_tokens}; use n_tokens <= {top}"
        )


def grey_patch(grey: Any, name: str = "grey") -> torch.Tensor:
    """A grey patch: a finite float ``[H,W]`` array -> float32 tensor."""
    g = torch.as_tensor(grey)
    if g.ndim != 2 or not g.is_floating_point():
        raise ValueError(f"{name}: expected a float [H,W] array, got shape {tuple(g.shape)} dtype {g.dtype}")
    if not torch.isfinite(g).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    return g.float()


def bias_map(bias: Any, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A per-pixel partition bias: finite, ``|value| <= MAX_ABS_BIAS`` (so cell sums stay exact
    after quantization), of ``shape`` when given -> float64 tensor."""
    from ..partition.priority import MAX_ABS_BIAS

    b = torch.as_tensor(bias)
    if shape is not None and tuple(b.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} like grey, got {tuple(b.shape)}")
    b = b.double()
    if not torch.isfinite(b).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    if b.abs().max() > MAX_ABS_BIAS:
        raise ValueError(f"{name}: per-pixel values must lie in [-{MAX_ABS_BIAS:g}, {MAX_ABS_BIAS:g}]")
    return b


def partition_cells(cells: Any, height: int, width: int, name: str = "cells") -> list[tuple[int, int, int, int]]:
    """Inclusive pixel boxes ``[n,4]`` ``(x0, y0, x1, y1)`` inside a ``height x width`` image ->
    ``(y0, x0, h, w)`` per cell."""
    cells = np.asarray(cells)
    keys = [(int(y0), int(x0), int(y1 - y0 + 1), int(x1 - x0 + 1)) for x0, y0, x1, y1 in cells]
    for i, (y0, x0, h, w) in enumerate(keys):
        if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > height or x0 + w > width:
            raise ValueError(f"{name}[{i}]: {tuple(cells[i])} is empty or outside the {height}x{width} image")
    return keys


def priority(value: Any, height: int, width: int,
             name: str = "priority") -> torch.Tensor | list[tuple[int, int, int, int]]:
    """A partition priority: an ``[H,W]`` mask (bool or floats in [0, 1]) -> float64 CPU
    tensor, or a sequence of pixel boxes ``(x0, y0, x1, y1)`` (ints, ``x0 <= x1``, ``y0 <= y1``,
    overlapping the image) -> list of int tuples."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        m = torch.as_tensor(value)
        if tuple(m.shape) != (height, width):
            raise ValueError(f"{name}: mask must have the image's shape {(height, width)}, got {tuple(m.shape)}")
        m = m.double()
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError(f"{name}: mask values must be bool or floats in [0, 1]")
        return m.cpu()
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        boxes = []
        for i, box in enumerate(value):
            if not isinstance(box, Sequence) or len(box) != 4 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box
            ):
                raise ValueError(f"{name}[{i}]: a box must be 4 ints (x0, y0, x1, y1) in pixels, got {box!r}")
            x0, y0, x1, y1 = (int(v) for v in box)
            if x1 < x0 or y1 < y0:
                raise ValueError(f"{name}[{i}]: box needs x0 <= x1 and y0 <= y1, got {box!r}")
            if x1 < 0 or y1 < 0 or x0 >= width or y0 >= height:
                raise ValueError(f"{name}[{i}]: box {box!r} lies outside the {width}x{height} image (pixels "
                                 f"x in [0, {width - 1}], y in [0, {height - 1}]); it would prioritise nothing")
            boxes.append((x0, y0, x1, y1))
        return boxes
    raise TypeError(
        f"{name}: expected an [H,W] mask (numpy/torch, bool or float in [0,1]) or a list of "
        f"(x0, y0, x1, y1) boxes, got {type(value).__name__}"
    )
