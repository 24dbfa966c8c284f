"""Layout calibration (docs/algorithms.md section 7): snap Gaussians onto cells the partition
could produce, and the validity tests of cells and layouts."""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import LAST, PATCH, cell_extent, geometry_from_cells, to_pixel
from ..partition.greedy import splittable
from .value import Layout


def min_cell_side(min_size: int = 8) -> int:
    """Smallest cell side the partition reaches with ``min_size`` m.

    A cell is split unless ``h-1 <= m`` and ``w-1 <= m``, so halving stops at the largest
    power of two ``s <= m + 1`` (8 for the default m = 8).
    """
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
        raise ValueError(f"min_size: expected a positive int, got {min_size!r}")
    return min(PATCH, 1 << int(math.floor(math.log2(min_size + 1))))


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
        if splittable((node.y0, node.x0, node.h, node.w), min_size):
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
