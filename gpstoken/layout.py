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

Calibration (docs/algorithms.md section 7) is :func:`calibrate`; see its docstring for the
algorithm.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import validate
from .geometry import (
    GEOMETRY,
    LAST,
    PATCH,
    cell_extent,
    geometry_from_cells,
    image_pixel_to_patch,
    regions_from_geometry,
    to_norm,
    to_patch_frame,
    to_pixel,
)
from .images import to_pil, to_tensor

# drawing colours (RGB)
_CELL_COLOUR = (255, 255, 255)
_SIGMA1_COLOUR = (255, 40, 40)
_SIGMA2_COLOUR = (255, 190, 0)
_GREY = (128, 128, 128)




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


def image_pixels(geometry: torch.Tensor, regions: torch.Tensor, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Gaussians and cells of one image in image pixel coordinates (x = column, y = row).

    geometry: ``[N,5]``, regions: ``[N,4]``, patch frames, patch-major for a ``grid = (k, m)``
    of 256 patches. Returns float64 ``cells [N,4]`` ``(x0, y0, x1, y1)`` inclusive pixel
    ranges and ``gaussians [N,5]`` ``(cx, cy, sigma_x, sigma_y, rho)`` with centres and
    sigmas in pixels (rho unchanged). Used for drawing and by the studio's editor.
    """
    g = geometry.detach().double().cpu().numpy()
    r = regions.detach().double().cpu().numpy()
    patch = np.arange(g.shape[0]) // (g.shape[0] // (grid[0] * grid[1]))
    ox, oy = (patch % grid[1]) * PATCH, (patch // grid[1]) * PATCH
    cells = to_pixel(r) + np.stack([ox, oy, ox, oy], -1)
    gaussians = np.stack([ox + to_pixel(g[:, 3]), oy + to_pixel(g[:, 4]),
                          g[:, 0] * LAST / 2.0, g[:, 1] * LAST / 2.0, g[:, 2]], -1)
    return cells, gaussians


def draw_gaussians(
    geometry: torch.Tensor,
    regions: torch.Tensor,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    *,
    image: Any = None,
    index: int = 0,
    scale: int = 1,
) -> Image.Image:
    """Draw Gaussians ``[B,N,5]`` and their cells ``[B,N,4]`` (patch frames, patch-major).

    Shared by :meth:`Layout.draw` and :meth:`gpstoken.tokens.GPSTokens.draw`. Cells are
    white rectangles; each Gaussian gets its 1-sigma (red) and 2-sigma (orange) ellipse,
    rho included. The picture has the original image size times ``scale``.
    """
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale: expected a positive int, got {scale!r}")
    b = geometry.shape[0]
    if not isinstance(index, int) or not -b <= index < b:
        raise ValueError(f"index: expected an int in [-{b}, {b - 1}] (batch of {b}), got {index!r}")
    h, w = image_size
    if image is None:
        canvas = Image.new("RGB", (w, h), _GREY)
    else:
        x, _ = to_tensor(image, "image")
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"image: expected size {h}x{w} (the layout's image_size), got {x.shape[-2]}x{x.shape[-1]}")
        if x.shape[0] not in (1, b):
            raise ValueError(f"image: expected 1 or {b} images, got {x.shape[0]}")
        pick = index % b if x.shape[0] > 1 else 0
        canvas = to_pil(x[pick : pick + 1])[0]
    if scale > 1:
        canvas = canvas.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    cells, gaussians = image_pixels(geometry[index], regions[index], grid)
    t = np.linspace(0.0, 2.0 * np.pi, 49)
    for (x0, y0, x1, y1), (cx, cy, px_x, px_y, rho) in zip(cells, gaussians):
        draw.rectangle([x0 * scale, y0 * scale, (x1 + 1) * scale - 1, (y1 + 1) * scale - 1], outline=_CELL_COLOUR)
        for k, colour in ((2.0, _SIGMA2_COLOUR), (1.0, _SIGMA1_COLOUR)):
            ex = cx + k * px_x * np.cos(t)
            ey = cy + k * px_y * (rho * np.cos(t) + math.sqrt(max(1.0 - rho * rho, 0.0)) * np.sin(t))
            pts = [((a + 0.5) * scale - 0.5, (c + 0.5) * scale - 0.5) for a, c in zip(ex, ey)]
            draw.line(pts, fill=colour, width=1)
    return canvas


# ---------------------------------------------------------------------- calibration
def min_cell_side(min_size: int = 8) -> int:
    """Smallest cell side the partition reaches with ``min_size`` m.

    A cell is split unless ``h-1 <= m`` and ``w-1 <= m``, so halving stops at the largest
    power of two ``s <= m + 1`` (8 for the default m = 8).
    """
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ValueError(f"min_size: expected a positive int, got {min_size!r}")
    return min(PATCH, 1 << int(math.floor(math.log2(min_size + 1))))


def _splittable(w: int, h: int, min_size: int) -> bool:
    return not (h - 1 <= min_size and w - 1 <= min_size)


def is_valid_cell(x0: int, y0: int, x1: int, y1: int, min_size: int = 8) -> bool:
    """Whether the inclusive pixel cell is one the partition of a 256 patch can produce.

    Sizes ``256/2^a x 256/2^b`` with ``|a-b| <= 1``, sides >= :func:`min_cell_side`, and the
    origin a multiple of the size on each axis.
    """
    w, h = x1 - x0 + 1, y1 - y0 + 1
    side = min_cell_side(min_size)
    if w < side or h < side or w > PATCH or h > PATCH:
        return False
    if w & (w - 1) or h & (h - 1) or max(w, h) > 2 * min(w, h):
        return False
    return x0 % w == 0 and y0 % h == 0 and x1 <= LAST and y1 <= LAST


def is_valid_layout(layout: Layout, min_size: int = 8) -> bool:
    """Whether every patch of every image is a partition the entropy algorithm could produce.

    That is: each region is a valid cell (:func:`is_valid_cell`), the cells of a patch tile
    it exactly (no gaps, no overlaps), and geometry/regions equal the official formulas of
    those cells (so rho = 0).
    """
    cells = layout.cells()
    geometry, regions = geometry_from_cells(cells)
    if not (torch.equal(geometry, layout.geometry.cpu()) and torch.equal(regions, layout.regions.cpu())):
        return False
    n = layout.n_tokens
    for b in range(layout.batch_size):
        for p in range(layout.n_patches):
            area = 0
            cover = np.zeros((PATCH, PATCH), dtype=np.int32)
            for x0, y0, x1, y1 in cells[b, p * n : (p + 1) * n].tolist():
                if not is_valid_cell(x0, y0, x1, y1, min_size):
                    return False
                cover[y0 : y1 + 1, x0 : x1 + 1] += 1
                area += (x1 - x0 + 1) * (y1 - y0 + 1)
            if area != PATCH * PATCH or cover.max() != 1:
                return False
    return True


@dataclass
class _Node:
    x0: int
    y0: int
    w: int
    h: int
    members: np.ndarray  # indices of the Gaussians whose centre lies in the cell


def _crossing(node: _Node, cx: np.ndarray, tw: np.ndarray, vertical: bool) -> float:
    """Sum over the node's Gaussians of how far (relative) their target box straddles a midline."""
    i = node.members
    line = (node.x0 + node.w / 2) if vertical else (node.y0 + node.h / 2)  # pixel-edge coordinate
    lo, hi = cx[i] + 0.5 - tw[i] / 2, cx[i] + 0.5 + tw[i] / 2
    straddle = np.minimum(hi - line, line - lo)
    straddle = np.where(straddle > 1e-3, straddle, 0.0)
    return float((straddle / tw[i]).sum())


def _split(node: _Node, cx: np.ndarray, cy: np.ndarray, tw: np.ndarray, th: np.ndarray) -> tuple[_Node, _Node]:
    """Halve a node like the partition does; squares use the midline crossed least by targets."""
    if node.w == node.h:
        vertical = _crossing(node, cx, tw, True) < _crossing(node, cy, th, False) - 1e-9
    else:
        vertical = node.w > node.h
    i = node.members
    if vertical:
        half = node.w // 2
        first = cx[i] < node.x0 + half - 0.5
        return (_Node(node.x0, node.y0, half, node.h, i[first]),
                _Node(node.x0 + half, node.y0, node.w - half, node.h, i[~first]))
    half = node.h // 2
    first = cy[i] < node.y0 + half - 0.5
    return (_Node(node.x0, node.y0, node.w, half, i[first]),
            _Node(node.x0, node.y0 + half, node.w, node.h - half, i[~first]))


def _cost(cx, cy, tw, th, node: _Node) -> np.ndarray:
    """Distance of Gaussians (centres, target sizes) to a cell: centre offset in target units
    plus squared log2 size ratios."""
    ncx, ncy = node.x0 + (node.w - 1) / 2, node.y0 + (node.h - 1) / 2
    return (((cx - ncx) / tw) ** 2 + ((cy - ncy) / th) ** 2
            + np.log2(tw / node.w) ** 2 + np.log2(th / node.h) ** 2)


def _calibrate_patch(geometry: np.ndarray, min_size: int) -> np.ndarray:
    """Cells ``[M,4]`` (inclusive pixels) for the Gaussians ``[M,5]`` of one patch."""
    m = geometry.shape[0]
    cx = np.clip(to_pixel(geometry[:, 3]), 0.0, LAST)
    cy = np.clip(to_pixel(geometry[:, 4]), 0.0, LAST)
    tw = np.clip(cell_extent(geometry[:, 0]) + 1.0, 1.0, 4.0 * PATCH)  # target cell size in pixels
    th = np.clip(cell_extent(geometry[:, 1]) + 1.0, 1.0, 4.0 * PATCH)

    root = _Node(0, 0, PATCH, PATCH, np.arange(m))
    leaves = {0: root}
    heap: list[tuple[int, int, int]] = []
    seq = 0

    def push(key: int, node: _Node) -> None:
        if _splittable(node.w, node.h, min_size):
            heapq.heappush(heap, (-(len(node.members) - 1), -node.w * node.h, key))

    push(0, root)
    while len(leaves) < m:
        _, _, key = heapq.heappop(heap)
        for child in _split(leaves.pop(key), cx, cy, tw, th):
            seq += 1
            leaves[seq] = child
            push(seq, child)

    nodes = list(leaves.values())
    owner = np.full(m, -1)
    pool: list[int] = []
    empty: list[int] = []
    for j, node in enumerate(nodes):
        if len(node.members) == 0:
            empty.append(j)
            continue
        costs = _cost(cx[node.members], cy[node.members], tw[node.members], th[node.members], node)
        best = int(np.argmin(costs))
        owner[node.members[best]] = j
        pool.extend(int(v) for k, v in enumerate(node.members) if k != best)
    if pool:
        p = np.asarray(pool)
        costs = np.stack([_cost(cx[p], cy[p], tw[p], th[p], nodes[j]) for j in empty], 1)  # [P,E]
        used_cell = np.zeros(len(empty), dtype=bool)
        for flat in np.argsort(costs, axis=None, kind="stable"):
            gi, cj = divmod(int(flat), len(empty))
            if owner[p[gi]] < 0 and not used_cell[cj]:
                owner[p[gi]] = empty[cj]
                used_cell[cj] = True
    return np.asarray(
        [[nodes[j].x0, nodes[j].y0, nodes[j].x0 + nodes[j].w - 1, nodes[j].y0 + nodes[j].h - 1] for j in owner]
    )


def calibrate(layout: Layout, *, min_size: int = 8) -> Layout:
    """Snap every Gaussian onto a cell the partition could produce (docs/algorithms.md section 7).

    Only ``geometry`` (mean and sigma) is used; ``regions`` and rho are recomputed from the
    snapped cells with the official formulas. Per 256 patch with M Gaussians:

    1. each Gaussian gets a *target*: its centre in pixels and the cell size its sigma implies
       (``1.5 * sigma * 256 + 1`` pixels per axis, the inverse of the g_init formula);
    2. a top-down partition guided by the targets: starting from the whole patch, while there
       are fewer than M cells, split the splittable cell holding the most Gaussian centres
       (ties: larger area, then older cell). Splits follow the partition's rule (longer side
       first); a square is split along the midline its targets straddle least (ties: rows,
       like the official code). Children receive the Gaussians whose centre they contain;
    3. every cell keeps the Gaussian closest to it (centre offset in target units plus the
       squared log2 size ratios); the remaining Gaussians are assigned greedily, lowest cost
       first, to the cells left empty.

    Properties: the output holds M distinct valid cells per patch that tile it exactly (no
    gaps, no overlaps); token count and order are kept; a valid layout (a tiling by valid
    cells with the official geometry, see :func:`is_valid_layout`) is returned unchanged
    (the same object), which makes the function idempotent. Raises ValueError when M exceeds
    the number of minimum-size cells of a patch.
    """
    if not isinstance(layout, Layout):
        raise TypeError(f"layout: expected a Layout, got {type(layout).__name__}")
    side = min_cell_side(min_size)
    max_cells = (PATCH // side) ** 2
    n = layout.n_tokens
    if n > max_cells:
        raise ValueError(
            f"calibrate: {n} tokens per patch, but a 256 patch holds at most {max_cells} cells "
            f"with min_size={min_size}"
        )
    geometry = layout.geometry.detach().double().cpu().numpy()
    cells = np.empty(geometry.shape[:2] + (4,), dtype=np.int64)
    for b in range(layout.batch_size):
        for p in range(layout.n_patches):
            cells[b, p * n : (p + 1) * n] = _calibrate_patch(geometry[b, p * n : (p + 1) * n], min_size)
    new_g, new_r = geometry_from_cells(cells)
    if torch.equal(new_g, layout.geometry.cpu()) and torch.equal(new_r, layout.regions.cpu()):
        return layout
    return Layout(new_g.to(layout.device), new_r.to(layout.device), layout.image_size, layout.grid)
