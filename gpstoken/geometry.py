"""Token-layout geometry: the constants and every conversion between frames (docs/algorithms.md section 0).

Frames and units, as in the official code:

* an image is cut into a ``k x m`` grid of ``PATCH x PATCH`` patches (``PATCH = 256``),
  patches row-major;
* a Gaussian is ``[sigma_x, sigma_y, rho, mu_x, mu_y]`` (``GEOMETRY = 5`` numbers), in the
  normalised ``[-1, 1]`` frame of its patch: pixel ``p`` of an axis of ``S`` pixels sits at
  ``(p/(S-1) - 0.5)*2`` (-1 = centre of the first pixel, +1 = centre of the last); sigma is
  in the same units;
* a region is ``[x0, y0, x1, y1]`` (``REGION = 4``), the inclusive pixel range of a cell,
  normalised like positions;
* a cell's initial Gaussian (official ``adaptive_initialize``): ``sigma = (x1-x0)/S * 2/3``
  (divided by ``S``, not ``S-1``), ``rho = 0``, ``mu`` = the normalised cell centre;
* merged (image) frame: the tokens of all patches in one ``[-1, 1]`` frame over the whole
  padded image (:func:`merge_patch_tokens`, :func:`to_patch_frame`).

The renderer's pixel centres (:func:`pixel_coords`) use ``2i/(S-1) - 1``, the same number as
``(i/(S-1) - 0.5)*2`` in exact arithmetic but rounded differently; both formulas are kept
because each is bit-exact with the official code where it is used.
"""
from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "PATCH", "LAST", "GEOMETRY", "REGION", "Grid",
    "to_norm", "to_pixel", "pixel_coords", "patch_grid", "check_grid",
    "geometry_from_cells", "cells_to_arrays", "cell_extent", "regions_from_geometry",
    "split_patches", "join_patches", "merge_patch_tokens", "to_patch_frame", "image_pixel_to_patch",
]

PATCH = 256  #: pixels per patch side
LAST = PATCH - 1  #: index of a patch's last pixel (255), the divisor of normalised positions
GEOMETRY = 5  #: numbers per Gaussian: sigma_x, sigma_y, rho, mu_x, mu_y
REGION = 4  #: numbers per region: x0, y0, x1, y1

Grid = tuple[int, int]
#: what the elementwise conversions accept and return
ArrayLike = TypeVar("ArrayLike", float, np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------- pixel <-> normalised
def to_norm(p: ArrayLike, size: int = PATCH) -> ArrayLike:
    """Pixel position(s) along an axis of ``size`` pixels -> normalised ``[-1, 1]``:
    ``(p/(size-1) - 0.5)*2``. Works on floats, numpy arrays and tensors (keep float64 for
    the official rounding)."""
    return (p / (size - 1) - 0.5) * 2.0


def to_pixel(v: ArrayLike, size: int = PATCH) -> ArrayLike:
    """Normalised position(s) -> pixel position(s) along an axis of ``size`` pixels (inverse
    of :func:`to_norm`)."""
    return (v / 2.0 + 0.5) * (size - 1)


def pixel_coords(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised centres ``2i/(n-1) - 1`` of ``n`` pixels along one axis, float32 ``[n]``
    (computed in float64, like the official renderer)."""
    return (torch.arange(n, dtype=torch.float64, device=device) * 2.0 / (n - 1) - 1.0).float()


def patch_grid(height: int, width: int) -> Grid:
    """Number of ``PATCH x PATCH`` patches ``(rows, cols)`` that cover an image of ``height x width``."""
    return -(-height // PATCH), -(-width // PATCH)


def check_grid(grid: Any) -> Grid:
    """``grid`` as ``(k, m)`` ints >= 1; raises ValueError naming the argument otherwise."""
    if (
        not isinstance(grid, (tuple, list))
        or len(grid) != 2
        or any(not isinstance(g, int) or isinstance(g, bool) or g < 1 for g in grid)
    ):
        raise ValueError(f"grid: expected (k, m) with positive integers, got {grid!r}")
    return int(grid[0]), int(grid[1])


# --------------------------------------------------------------------------- cell <-> Gaussian <-> region
def _cell_formulas(x0: Any, y0: Any, x1: Any, y1: Any, h: int, w: int, stack: Any) -> tuple[Any, Any]:
    """The official formulas on float64 coordinate arrays (numpy or torch; ``stack`` joins)."""
    geometry = stack([
        (x1 - x0) / w * 2.0 / 3.0,
        (y1 - y0) / h * 2.0 / 3.0,
        x0 - x0,  # rho = +0.0
        to_norm((x0 + x1) / 2.0, w),
        to_norm((y0 + y1) / 2.0, h),
    ])
    regions = stack([to_norm(x0, w), to_norm(y0, h), to_norm(x1, w), to_norm(y1, h)])
    return geometry, regions


def geometry_from_cells(cells: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Official initial Gaussians and regions of cells in a ``PATCH x PATCH`` patch.

    cells: ``[..., 4]`` ``(x0, y0, x1, y1)`` inclusive pixel ranges (ints, or floats for
    sub-pixel boxes). Returns ``(geometry [...,5], regions [...,4])`` float32 on the cells'
    device, computed in float64: ``sigma = (x1-x0)/256 * 2/3``, ``rho = 0``,
    ``mu = ((x0+x1)/2/255 - 0.5)*2``, ``region = (p/255 - 0.5)*2``.
    """
    c = torch.as_tensor(cells).detach().to(dtype=torch.float64)
    x0, y0, x1, y1 = c.unbind(-1)
    geometry, regions = _cell_formulas(x0, y0, x1, y1, PATCH, PATCH, lambda xs: torch.stack(xs, -1))
    return geometry.float(), regions.float()


def cells_to_arrays(cells: np.ndarray, H: int = PATCH, W: int = PATCH) -> tuple[np.ndarray, np.ndarray]:
    """numpy form of :func:`geometry_from_cells` for an ``H x W`` block (the official
    ``adaptive_initialize`` output): cells ``[n,4]`` -> ``(geometry [n,5], regions [n,4])``
    float32, computed in float64 (bit-identical to :func:`geometry_from_cells` for 256)."""
    c = np.asarray(cells, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = c.T
    geometry, regions = _cell_formulas(x0, y0, x1, y1, H, W, lambda xs: np.stack(xs, axis=1))
    return geometry.astype(np.float32), regions.astype(np.float32)


def cell_extent(sigma: ArrayLike) -> ArrayLike:
    """``x1 - x0`` in pixels (cell side minus one) of the cell whose initial Gaussian has
    ``sigma``: the inverse of ``sigma = (x1-x0)/256 * 2/3``, i.e. ``1.5 * sigma * 256``."""
    return 1.5 * sigma * PATCH


def regions_from_geometry(geometry: torch.Tensor) -> torch.Tensor:
    """Regions ``[...,4]`` implied by Gaussians ``[...,5]`` (patch frame): the inverse of
    :func:`geometry_from_cells`, for Gaussians that come without a cell (user-added or
    generated ones).

    The cell spans ``x1 - x0 = 1.5 * sigma * 256`` pixels around the centre, clipped to the
    patch (official cells always lie inside it). Exact (to float32 rounding) on official
    cells. Returns float32 normalised regions on the input's device.
    """
    g = geometry.detach().to(torch.float64)
    half_x, half_y = cell_extent(g[..., 0]) / 2.0, cell_extent(g[..., 1]) / 2.0
    cx, cy = to_pixel(g[..., 3]), to_pixel(g[..., 4])
    box = torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], -1).clamp(0.0, LAST)
    return to_norm(box).float().to(geometry.device)


# --------------------------------------------------------------------------- patches of a map
def split_patches(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """``[B,C,k*h,m*w]`` -> ``[B*k*m,C,h,w]``, patches row-major within each image.

    The output keeps the input's memory format (channels-last in, channels-last out)."""
    b, c, hh, ww = x.shape
    k, m = grid
    h, w = hh // k, ww // m
    if _channels_last(x):
        x = x.permute(0, 2, 3, 1).reshape(b, k, h, m, w, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b * k * m, h, w, c).permute(0, 3, 1, 2)
    x = x.reshape(b, c, k, h, m, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * k * m, c, h, w)


def join_patches(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Inverse of :func:`split_patches`: ``[B*k*m,C,h,w]`` -> ``[B,C,k*h,m*w]`` (keeps the
    memory format)."""
    bkm, c, h, w = x.shape
    k, m = grid
    b = bkm // (k * m)
    if _channels_last(x):
        x = x.permute(0, 2, 3, 1).reshape(b, k, m, h, w, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, k * h, m * w, c).permute(0, 3, 1, 2)
    x = x.reshape(b, k, m, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, k * h, m * w)


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# --------------------------------------------------------------------------- patch frame <-> merged frame
def merge_patch_tokens(tokens: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Per-patch tokens -> image-level tokens in the merged frame (docs/algorithms.md section 5).

    tokens: float ``[B*k*m, N, 5+C]``, patches row-major per image, each in its patch's own
    [-1, 1] frame. grid: ``(k, m)`` = (patch rows, patch columns).
    Returns float ``[B, k*m*N, 5+C]`` (patch-major order) in the image frame:
    ``sigma_x /= m``, ``sigma_y /= k``, ``mu_x' = -1 + (2*col + mu_x + 1)/m``,
    ``mu_y' = -1 + (2*row + mu_y + 1)/k``; rho and features unchanged. Correct for any B.
    """
    k, m = check_grid(grid)
    if tokens.ndim != 3 or tokens.shape[-1] <= GEOMETRY or tokens.shape[0] % (k * m):
        raise ValueError(
            f"tokens: expected [B*{k}*{m}, N, 5+C] for grid {(k, m)}, got shape {tuple(tokens.shape)}"
        )
    n, d = tokens.shape[1], tokens.shape[2]
    t = tokens.view(-1, k, m, n, d)
    col = torch.arange(m, device=tokens.device, dtype=tokens.dtype).view(1, 1, m, 1)
    row = torch.arange(k, device=tokens.device, dtype=tokens.dtype).view(1, k, 1, 1)
    merged = torch.stack(
        [
            t[..., 0] / m,
            t[..., 1] / k,
            t[..., 2],
            (2 * col + t[..., 3] + 1) / m - 1,
            (2 * row + t[..., 4] + 1) / k - 1,
        ],
        dim=-1,
    )
    return torch.cat([merged, t[..., GEOMETRY:]], -1).reshape(-1, k * m * n, d)


def to_patch_frame(gaussians: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussians ``[M,5]`` in the merged frame -> ``(local [M,5] float32, patch [M] int64)``.

    Each Gaussian goes to the patch holding its centre (centres outside the image go to the
    nearest border patch) and is expressed in that patch's frame: the inverse of
    :func:`merge_patch_tokens` for one token. Computed in the input's dtype.
    """
    k, m = grid
    g = gaussians
    col = torch.clamp(torch.floor((g[:, 3] + 1) / 2 * m), 0, m - 1)
    row = torch.clamp(torch.floor((g[:, 4] + 1) / 2 * k), 0, k - 1)
    local = torch.stack(
        [g[:, 0] * m, g[:, 1] * k, g[:, 2], (g[:, 3] + 1) * m - 2 * col - 1, (g[:, 4] + 1) * k - 2 * row - 1], -1
    ).float()
    return local, (row * m + col).long()


def image_pixel_to_patch(
    x: torch.Tensor, y: torch.Tensor, grid: Grid
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image pixel positions (x = column) -> ``(patch index, x in the patch, y in the patch)``.

    Positions beyond the grid go to the nearest border patch. Pixel units in and out.
    """
    k, m = grid
    col = torch.clamp(torch.div(x, PATCH, rounding_mode="floor"), 0, m - 1)
    row = torch.clamp(torch.div(y, PATCH, rounding_mode="floor"), 0, k - 1)
    return (row * m + col).long(), x - col * PATCH, y - row * PATCH
