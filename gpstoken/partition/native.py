"""Binding of the native CPU partition ``gpstoken._cpartition`` (``gpstoken/csrc/cpartition.c``).

The extension is built at install time when a C compiler is present (optional: without it the
install succeeds and the pure-torch path runs). It computes the same exact complexities and
the same greedy loop in C, patches in parallel threads, and gives identical cells (tested).
"""
from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch

from .complexity import bias_integral, unit_grey

_native: Any  # the compiled extension, or None without it
try:
    _native = importlib.import_module("gpstoken._cpartition")
except ImportError:  # built without a C compiler: the pure-torch path is used
    _native = None


def native_available() -> bool:
    """Whether the native CPU partition (``gpstoken._cpartition``) was built at install time.

    Without it (no C compiler when installing) results are the same, only slower: the
    pure-torch path runs instead.
    """
    return _native is not None


def use_native(grey: torch.Tensor) -> bool:
    """Whether ``grey`` is partitioned natively: the extension is built and ``grey`` is on the CPU."""
    return _native is not None and not grey.is_cuda


def _native_grey(grey: torch.Tensor) -> np.ndarray:
    """``(g+1)/2`` of float32 grey as the C-contiguous array the native module reads."""
    return unit_grey(grey).contiguous().cpu().numpy()


def native_cells(grey: torch.Tensor, n: int, weight: float, min_size: int,
                 bias: torch.Tensor | None) -> list[np.ndarray]:
    """Native partition of every patch of ``grey`` float32 ``[P,H,W]`` (bias float64 ``[P,H,W]``
    quantized, or None) -> list of int64 ``[n,4]`` cells ``(x0, y0, x1, y1)``."""
    p, h, w = grey.shape
    out = np.empty((p, n, 4), np.int32)
    _native.partition(_native_grey(grey), p, h, w, bias_integral(bias), n, min_size,
                      float(weight), torch.get_num_threads(), out)
    return list(out.astype(np.int64))


def native_complexities(grey: torch.Tensor, keys: list[tuple[int, int, int, int]], weight: float,
                        bias: torch.Tensor | None) -> np.ndarray:
    """Native complexities of cells ``keys`` ``(y0, x0, h, w)`` of one patch ``grey`` float32
    ``[H,W]`` (bias float64 ``[1,H,W]`` quantized, or None) -> float64 ``[len(keys)]``."""
    out = np.empty(len(keys), np.float64)
    spec = np.array([(0, *k) for k in keys], dtype=np.int32).reshape(-1, 5)
    _native.complexities(_native_grey(grey[None]), 1, *grey.shape, bias_integral(bias), spec, len(keys),
                         float(weight), torch.get_num_threads(), out)
    return out
