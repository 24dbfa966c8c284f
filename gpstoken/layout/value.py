"""The :class:`Layout` value type: where the tokens go (``g_init``), before refinement.

A layout holds, per image of a batch, ``N = k*m*n`` initial Gaussians for an image cut into
a ``k x m`` grid of 256x256 patches (``n`` tokens per patch). Everything is stored
**patch-major** (patches row-major, each patch's tokens in order) and **in each patch's own
frame** (docs/internals.md), exactly like the official per-patch arrays:

* ``geometry [B,N,5]``: ``sigma_x, sigma_y, rho, mu_x, mu_y``; ``mu`` in ``[-1,1]`` over the
  256 patch (-1 = centre of the first pixel, +1 = centre of the last), sigma in the same
  normalised units;
* ``regions [B,N,4]``: ``x0, y0, x1, y1``, the inclusive pixel range of the token's cell,
  normalised by ``p -> (p/255 - 0.5)*2``.

Pixel-level edits (:meth:`Layout.add`, :meth:`Layout.move`) take **image pixel coordinates**
(x = column, y = row, in the original image). None of them calibrates: call
:func:`calibrate` afterwards to snap the result back onto valid partition cells.

Calibration (docs/algorithms.md section 7) is :func:`gpstoken.layout.calibrate`
(:mod:`.calibration`); pictures are drawn by :mod:`.drawing`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import validate
from ..geometry import (
    GEOMETRY,
    LAST,
    PATCH,
    geometry_from_cells,
    image_pixel_to_patch,
    regions_from_geometry,
    to_norm,
    to_patch_frame,
    to_pixel,
)
from .drawing import draw_gaussians


@dataclass(frozen=True, eq=False)
class Layout:
    """Initial Gaussians of a batch of images (see the module docstring for frames and order).

    Attributes:
        geometry: float32 ``[B,N,5]`` ``(sigma_x, sigma_y, rho, mu_x, mu_y)``, sigma > 0,
            ``|rho| < 1``, mu in ``[-1, 1]``, per-patch frames, patch-major.
        regions: float32 ``[B,N,4]`` ``(x0, y0, x1, y1)`` normalised inclusive cell ranges,
            in ``[-1, 1]`` (not pixels: :meth:`from_cells` converts pixel cells).
        image_size: ``(H, W)`` of the original (unpadded) image.
        grid: ``(k, m)`` 256-patches covering the image; derived from ``image_size`` when
            omitted and must equal ``geometry.patch_grid(H, W)``.

    Float tensors of another float dtype are converted to float32. Construction checks all of
    this (:func:`gpstoken.validate.layout_tensors`) and raises ValueError/TypeError naming the
    field (and the first bad token).
    """

    geometry: torch.Tensor
    regions: torch.Tensor
    image_size: tuple[int, int]
    grid: tuple[int, int] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        geometry, regions, image_size, grid = validate.layout_tensors(
            self.geometry, self.regions, self.image_size, self.grid)
        object.__setattr__(self, "geometry", geometry)
        object.__setattr__(self, "regions", regions)
        object.__setattr__(self, "image_size", image_size)
        object.__setattr__(self, "grid", grid)

    # ------------------------------------------------------------------ sizes
    @property
    def batch_size(self) -> int:
        """B, the number of images."""
        return self.geometry.shape[0]

    @property
    def total_tokens(self) -> int:
        """N, tokens per image (all patches)."""
        return self.geometry.shape[1]

    @property
    def n_patches(self) -> int:
        """k*m, the number of 256 patches per image."""
        return self.grid[0] * self.grid[1]

    @property
    def n_tokens(self) -> int:
        """Tokens per 256x256 patch (the official ``gps_num``)."""
        return self.total_tokens // self.n_patches

    @property
    def device(self) -> torch.device:
        return self.geometry.device

    def to(self, device: torch.device | str) -> "Layout":
        """A copy with both tensors on ``device``."""
        return Layout(self.geometry.to(device), self.regions.to(device), self.image_size, self.grid)

    def __repr__(self) -> str:
        return (
            f"Layout(batch={self.batch_size}, n_tokens={self.n_tokens} per patch, grid={self.grid}, "
            f"image_size={self.image_size}, device={self.device})"
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_cells(
        cls, cells: torch.Tensor | np.ndarray, image_size: tuple[int, int], grid: tuple[int, int] | None = None
    ) -> "Layout":
        """Layout of integer pixel cells (official ``g_init``/region formulas, docs/algorithms.md section 0).

        cells: int ``[B,N,4]`` or ``[N,4]`` (batch of one) ``(x0, y0, x1, y1)`` inclusive
        pixel ranges in each patch's frame (``0 <= x0 < x1 <= 255``), patch-major.
        """
        c = torch.as_tensor(cells)
        if c.is_floating_point() or c.dtype == torch.bool:
            raise TypeError(f"cells: expected an integer tensor/array, got dtype {c.dtype}")
        if c.ndim == 2:
            c = c.unsqueeze(0)
        if c.ndim != 3 or c.shape[-1] != 4:
            raise ValueError(f"cells: expected shape [B,N,4] or [N,4], got {tuple(torch.as_tensor(cells).shape)}")
        if c.numel() and (c.min() < 0 or c.max() > LAST):
            raise ValueError(f"cells: pixel indices must lie in [0, {LAST}] (patch frame)")
        if not ((c[..., 0] < c[..., 2]).all() and (c[..., 1] < c[..., 3]).all()):
            raise ValueError("cells: each cell needs x0 < x1 and y0 < y1 (at least 2x2 pixels)")
        geometry, regions = geometry_from_cells(c)
        return cls(geometry, regions, image_size, grid)  # type: ignore[arg-type]  # None: derived

    def cells(self) -> torch.Tensor:
        """int64 ``[B,N,4]`` inclusive pixel cells ``(x0, y0, x1, y1)`` in patch frames (rounded)."""
        return torch.round(to_pixel(self.regions.double())).long()

    # ------------------------------------------------------------------ token edits
    def _patch_of(self, token: torch.Tensor) -> torch.Tensor:
        return token // self.n_tokens

    def _regroup(self, geometry: torch.Tensor, regions: torch.Tensor, patch: torch.Tensor, what: str) -> "Layout":
        """Order tokens patch-major (stable) and check that every patch has as many tokens."""
        counts = torch.bincount(patch, minlength=self.n_patches)
        if (counts != counts[0]).any():
            raise ValueError(
                f"{what}: every patch of a {self.grid[0]}x{self.grid[1]} grid must keep the same "
                f"number of tokens, this edit gives {counts.tolist()} (patches row-major); "
                "edit every patch alike"
            )
        order = torch.sort(patch, stable=True).indices.to(geometry.device)
        return Layout(geometry[:, order], regions[:, order], self.image_size, self.grid)

    def _indices(self, indices: Any, what: str) -> torch.Tensor:
        n = self.total_tokens
        idx = validate.as_tensor(indices, what, "integer token indices or a boolean mask").reshape(-1)
        if idx.dtype == torch.bool:
            if idx.numel() != n:
                raise ValueError(f"{what}: a boolean mask needs {n} entries, got {idx.numel()}")
            return idx.nonzero().reshape(-1).cpu()
        if idx.is_floating_point():
            raise TypeError(f"{what}: expected integer token indices or a boolean mask, got dtype {idx.dtype}")
        if idx.numel() and (idx.min() < -n or idx.max() >= n):
            raise ValueError(f"{what}: token indices must lie in [-{n}, {n - 1}], got {idx.tolist()}")
        return (idx % n).long().cpu()

    def select(self, indices: Any) -> "Layout":
        """Keep tokens ``indices`` (ints into the N axis, or a bool mask ``[N]``), in every image.

        For a single patch the given order is kept. For a grid of patches the kept tokens are
        regrouped patch-major (stable) and every patch must keep the same number of tokens.
        """
        return self._select(self._indices(indices, "select"), "select")

    def _select(self, idx: torch.Tensor, what: str) -> "Layout":
        if idx.numel() == 0:
            raise ValueError(f"{what}: at least one token per patch must remain")
        return self._regroup(self.geometry[:, idx.to(self.device)], self.regions[:, idx.to(self.device)],
                             self._patch_of(idx), what)

    def remove(self, indices: Any) -> "Layout":
        """Drop tokens ``indices`` (ints into the N axis, or a bool mask ``[N]``) in every image."""
        keep = torch.ones(self.total_tokens, dtype=torch.bool)
        keep[self._indices(indices, "remove")] = False
        return self._select(keep.nonzero().reshape(-1), "remove")

    def add(self, boxes: Any = None, *, gaussians: Any = None) -> "Layout":
        """Append user-placed tokens (the same ones to every image of the batch).

        boxes: ``[M,4]`` ``(x0, y0, x1, y1)`` inclusive pixel boxes in image coordinates
            (x = column), ``0 <= x0 < x1 <= W-1``, ``0 <= y0 < y1 <= H-1``; floats allowed.
            A box crossing a patch border is clipped to the patch holding its centre. Its
            Gaussian follows the official formulas (docs/algorithms.md section 0).
        gaussians: ``[M,5]`` ``(sigma_x, sigma_y, rho, mu_x, mu_y)`` in the merged frame of the
            whole padded image (section 5; for a single-patch image this is the patch frame).
            Each goes to the patch holding its centre; its region is derived from its sigma.

        New tokens go to the end of their patch's tokens. For a grid of patches every patch
        must receive the same number of new tokens.
        """
        if boxes is None and gaussians is None:
            raise ValueError("add: give boxes=[(x0, y0, x1, y1), ...] and/or gaussians=[M,5]")
        parts = []
        if boxes is not None:
            parts.append(self._boxes_to_tokens(boxes))
        if gaussians is not None:
            parts.append(self._gaussians_to_tokens(gaussians))
        new_g = torch.cat([g for g, _, _ in parts]).to(self.device)
        new_r = torch.cat([r for _, r, _ in parts]).to(self.device)
        patch = [p for _, _, p in parts]
        b = self.batch_size
        geometry = torch.cat([self.geometry, new_g.expand(b, -1, -1)], 1)
        regions = torch.cat([self.regions, new_r.expand(b, -1, -1)], 1)
        old_patch = self._patch_of(torch.arange(self.total_tokens))
        return self._regroup(geometry, regions, torch.cat([old_patch, *patch]), "add")

    def _boxes_to_tokens(self, boxes: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bx = validate.as_rows(boxes, "add", 4, "(x0, y0, x1, y1) pixel boxes")
        h, w = self.image_size
        x0, y0, x1, y1 = bx.unbind(-1)
        bad = (x0 < 0) | (y0 < 0) | (x1 > w - 1) | (y1 > h - 1) | (x1 <= x0) | (y1 <= y0)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(
                f"add: box {i} = {bx[i].tolist()} must satisfy 0 <= x0 < x1 <= {w - 1} and "
                f"0 <= y0 < y1 <= {h - 1} (inclusive pixel coordinates of the {h}x{w} image)"
            )
        patch, cx, cy = image_pixel_to_patch((x0 + x1) / 2, (y0 + y1) / 2, self.grid)
        ox, oy = (x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy  # patch origin in image pixels
        local = torch.stack([x0 - ox, y0 - oy, x1 - ox, y1 - oy], -1).clamp(0.0, LAST)
        g, r = geometry_from_cells(local)
        return g, r, patch

    def _gaussians_to_tokens(self, gaussians: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = validate.as_rows(gaussians, "add: gaussians", GEOMETRY, "(sigma_x, sigma_y, rho, mu_x, mu_y) rows")
        if not ((g[:, :2] > 0).all() and (g[:, 2].abs() < 1).all()):
            raise ValueError("add: gaussians need sigma_x, sigma_y > 0 and |rho| < 1")
        local, patch = to_patch_frame(g, self.grid)
        return local, regions_from_geometry(local), patch

    def move(self, indices: Any, centres: Any) -> "Layout":
        """Move tokens ``indices`` so their Gaussians are centred at ``centres`` (every image).

        centres: ``[M,2]`` ``(x, y)`` image pixel coordinates, one per index; a token cannot
        leave its 256 patch. Sigma and rho are kept; the region is shifted by the same offset
        and clipped to the patch.
        """
        idx = self._indices(indices, "move")
        c = validate.as_rows(centres, "move", 2, "(x, y) pixel centres")
        if c.shape[0] != idx.numel():
            raise ValueError(f"move: need one (x, y) centre per index, got {c.shape[0]} for {idx.numel()}")
        patch = self._patch_of(idx)
        row, col = patch // self.grid[1], patch % self.grid[1]
        lx, ly = c[:, 0] - col * PATCH, c[:, 1] - row * PATCH
        outside = (lx < 0) | (lx > LAST) | (ly < 0) | (ly > LAST)
        if outside.any():
            i = int(outside.nonzero()[0])
            raise ValueError(
                f"move: centre {c[i].tolist()} of token {int(idx[i])} lies outside its patch "
                f"(row {int(row[i])}, col {int(col[i])}: x in [{int(col[i]) * PATCH}, {int(col[i]) * PATCH + LAST}], "
                f"y in [{int(row[i]) * PATCH}, {int(row[i]) * PATCH + LAST}]); tokens cannot change patch"
            )
        new_mu = torch.stack([to_norm(lx), to_norm(ly)], -1).float().to(self.device)
        d = self.device
        geometry, regions = self.geometry.clone(), self.regions.clone()
        delta = new_mu.unsqueeze(0) - geometry[:, idx.to(d), 3:5]
        geometry[:, idx.to(d), 3:5] = new_mu.unsqueeze(0).expand(self.batch_size, -1, -1)
        regions[:, idx.to(d)] = (regions[:, idx.to(d)] + delta.repeat(1, 1, 2)).clamp(-1.0, 1.0)
        return Layout(geometry, regions, self.image_size, self.grid)

    # ------------------------------------------------------------------ drawing
    def draw(self, image: Any = None, *, index: int = 0, scale: int = 1) -> Image.Image:
        """Picture of the layout: cell rectangles plus 1- and 2-sigma ellipses.

        image: optional background (anything :func:`gpstoken.images.to_tensor` accepts) of
        size ``image_size``; grey when omitted. index: which image of the batch. scale:
        integer upscaling of the picture. Returns an RGB PIL image of ``scale * (H, W)``.
        """
        return draw_gaussians(self.geometry, self.regions, self.image_size, self.grid,
                              image=image, index=index, scale=scale)
