"""Public entry points of the partition: one patch, cell complexities, images and batches.

Options and inputs are checked here with :mod:`gpstoken.validate`; the work is dispatched to
the native CPU path (:mod:`.native`) when it is built and the data is on the CPU, else to the
pure-torch path (:mod:`.greedy` over :mod:`.complexity`), which is its reference.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gpstoken import validate
from gpstoken.geometry import GEOMETRY, PATCH, REGION, cells_to_arrays, split_patches
from gpstoken.images import pad_to_patches, to_tensor
from gpstoken.layout import Layout

from .complexity import Evaluator
from .greedy import greedy_cells
from .native import native_cells, native_complexities, use_native
from .priority import priority_bias, quantize_bias


def grey_of(images: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` RGB in [-1,1] -> float32 ``[B,H,W]`` grey ``0.299 R + 0.587 G + 0.114 B``."""
    x = images.float()
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def partition_stack(grey: torch.Tensor, n: int, weight: float, min_size: int,
                    bias: torch.Tensor | None) -> list[np.ndarray]:
    """Partition every ``[H,W]`` patch of ``grey`` float32 ``[P,H,W]`` -> list of int64 ``[n,4]``
    cells. ``bias``: float64 ``[P,H,W]``, checked and quantized, or None."""
    p, h, w = grey.shape
    validate.reachable_tokens(n, h, w, min_size)
    if use_native(grey):
        return native_cells(grey, n, weight, min_size, bias)
    return greedy_cells(grey, n, weight, min_size, bias)


def partition_patch(grey: np.ndarray | torch.Tensor, n_tokens: int, *, weight: float = 2.5,
                    min_size: int = 8, bias: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Official greedy partition of one grey patch.

    Args:
        grey: float32 ``[H,W]`` grey values in [-1,1] (``0.299 R + 0.587 G + 0.114 B`` of the
            [-1,1] image, computed in float32). Official patches are 256x256.
        n_tokens: number of cells, ``1 <= n_tokens <= max_cells(H, W, min_size)`` (1024 for
            a 256 patch with ``min_size=8``).
        weight: entropy exponent lambda (official 2.5).
        min_size: a cell with ``h - 1 <= min_size`` and ``w - 1 <= min_size`` is never split.
        bias: optional float ``[H,W]`` per-pixel bias added to the complexity as its sum over
            the cell; rounded to multiples of ``2**-24``, values within ``[-4096, 4096]``.

    Returns:
        int64 ``[n_tokens, 4]`` cells ``(x0, y0, x1, y1)`` (inclusive pixel indices, x =
        column), in the official output order.
    """
    n_tokens, weight, min_size = validate.partition_options(n_tokens, weight, min_size)
    g = validate.grey_patch(grey)
    b = None if bias is None else quantize_bias(validate.bias_map(bias, "bias", tuple(g.shape)))[None]
    return partition_stack(g[None], n_tokens, weight, min_size, b)[0]


def complexities(grey: np.ndarray | torch.Tensor, cells: np.ndarray, *, weight: float = 2.5,
                 bias: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Complexity ``E ** weight * h * w + sum(bias over the cell)`` of each cell, float64 ``[n]``.

    ``grey`` float ``[H,W]`` in [-1,1]; ``cells`` int ``[n,4]`` inclusive ``(x0, y0, x1, y1)``.
    """
    g = validate.grey_patch(grey)
    b = None if bias is None else quantize_bias(validate.bias_map(bias, "bias"))[None]
    keys = validate.partition_cells(cells, *g.shape)
    if use_native(g):
        return native_complexities(g, keys, float(weight), b)
    ev = Evaluator(g[None], float(weight), b)
    ev.compute([(0, k) for k in keys])
    return np.array([ev.cache[0][k] for k in keys], dtype=np.float64)


def partition(image: Any, n_tokens: int, *, priority: Any = None, weight: float = 2.5,
              min_size: int = 8) -> Layout:
    """Entropy-driven adaptive layout of one image or a batch.

    Args:
        image: any image kind accepted by :func:`gpstoken.images.to_tensor` (PIL, numpy
            ``[H,W,3]``, tensor ``[3,H,W]``/``[B,3,H,W]`` in [-1,1], or a list).
        n_tokens: tokens **per 256x256 patch** (official ``gps_num``), 1..1024 with
            ``min_size=8``; more raises ``ValueError`` (never duplicated cells).
        priority: optional ``[H,W]`` mask (bool or [0,1] floats) or list of pixel boxes
            ``(x0,y0,x1,y1)``; these pixels get more tokens (see :func:`priority_bias`). The
            same priority applies to every image of a batch.
        weight: entropy exponent (official 2.5). min_size: official 8.

    Sizes that are not multiples of 256 are padded at the bottom/right with flat grey (0) to
    ``256k x 256m`` (see :func:`gpstoken.images.pad_to_patches`); every patch, padding
    included, gets ``n_tokens`` cells. Flat padding has (almost) zero entropy, so its cells
    stay large; ``image_size`` records the original size.

    Returns:
        ``Layout`` with ``geometry [B, k*m*n_tokens, 5]`` and ``regions [B, k*m*n_tokens, 4]``
        float32, patch-major (patches row-major), each patch in its own [-1,1] frame, rows
        in official order; ``image_size = (H, W)``; ``grid = (k, m)``.
    """
    x, _ = to_tensor(image)
    return partition_images(x, n_tokens, priority=priority, weight=weight, min_size=min_size)


def partition_images(images: torch.Tensor, n_tokens: int, *, priority: Any = None, weight: float = 2.5,
                     min_size: int = 8) -> Layout:
    """:func:`partition` of images already in the model convention, for internal callers.

    images: float ``[B,3,H,W]`` in ``[-1,1]``, trusted: no range check, so a bright image
    without negative values is not mistaken for the ``[0,1]`` convention. Options are checked
    as in :func:`partition`.
    """
    n_tokens, weight, min_size = validate.partition_options(n_tokens, weight, min_size)
    validate.reachable_tokens(n_tokens, PATCH, PATCH, min_size)
    x = images
    bsz, _, h, w = x.shape
    bias = None
    if priority is not None:
        b = priority_bias(priority, h, w, weight)
        b = torch.nn.functional.pad(b, (0, (-w) % PATCH, 0, (-h) % PATCH))
        bias = quantize_bias(validate.bias_map(b, "priority"))
    xp, grid = pad_to_patches(x)
    patches = split_patches(xp, grid)  # [B*k*m, 3, 256, 256]
    grey = grey_of(patches)
    if bias is not None:
        bias = split_patches(bias[None, None], grid)[:, 0].repeat(bsz, 1, 1)
    cells = partition_stack(grey, n_tokens, weight, min_size, bias)
    arrays = [cells_to_arrays(c, PATCH, PATCH) for c in cells]
    per_img = grid[0] * grid[1] * n_tokens
    geometry = torch.from_numpy(np.concatenate([g for g, _ in arrays])).view(bsz, per_img, GEOMETRY)
    regions = torch.from_numpy(np.concatenate([r for _, r in arrays])).view(bsz, per_img, REGION)
    return Layout(geometry=geometry, regions=regions, image_size=(h, w), grid=grid)
