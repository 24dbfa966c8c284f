"""The official bilinear resize of a cell to 64x64 (docs/algorithms.md section 1), bit-exact.

OpenCV ``INTER_LINEAR`` taps; each pass (columns first, then rows) is a float32
``fma(x1 - x0, t, x0)``, evaluated in float64 and rounded once more. That is exact unless a cell
mixes values whose exponents differ by more than ~24 (impossible for images from 8-bit data).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

RESIZE = 64  #: side of the resized cell whose gradient histogram gives the entropy

@lru_cache(maxsize=None)
def resize_coefficients(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """OpenCV INTER_LINEAR taps for ``size -> 64``: first index, second index, float64 weight."""
    scale = 1.0 / (RESIZE / size)
    i0, i1, wt = [], [], []
    for d in range(RESIZE):
        f = float(np.float32((d + 0.5) * scale - 0.5))
        s = math.floor(f)
        f = float(np.float32(f - s))
        if s < 0:
            s, f = 0, 0.0
        if s >= size - 1:
            s, f = size - 1, 0.0
        i0.append(s)
        i1.append(min(s + 1, size - 1))
        wt.append(f)
    return (torch.tensor(i0, device=device), torch.tensor(i1, device=device),
            torch.tensor(wt, dtype=torch.float64, device=device))


def lerp32(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """float32 ``fma(b - a, t, a)`` evaluated in float64 (``t`` float64, broadcastable)."""
    return torch.addcmul(a.double(), (b - a).double(), t).float()


def resize(blocks: torch.Tensor) -> torch.Tensor:
    """``[K,h,w]`` float32 -> ``[K,64,64]`` float32, the official bilinear resize."""
    _, h, w = blocks.shape
    dev = str(blocks.device)
    i0, i1, a = resize_coefficients(w, dev)
    t = lerp32(blocks.index_select(2, i0), blocks.index_select(2, i1), a)
    j0, j1, b = resize_coefficients(h, dev)
    return lerp32(t.index_select(1, j0), t.index_select(1, j1), b[:, None])


def exact_resize_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact official resize pass along ``dim`` (1 rows, 2 columns) of float32 ``[K,h,w]``."""
    i0, i1, t = resize_coefficients(x.shape[dim], str(x.device))
    if dim == 1:
        t = t[:, None]
    return lerp32(x.index_select(dim, i0), x.index_select(dim, i1), t)
