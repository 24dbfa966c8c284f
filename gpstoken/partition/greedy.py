"""The official greedy split loop, as a heap with batched speculation (docs/algorithms.md section 1).

Equivalent to the official list-and-stable-sort loop:

* the official order (stable sort by complexity, children appended at the end) is the order
  of ``(-complexity, insertion number)``, so the pick is the top of a heap of splittable cells;
* the final order is every cell present before the last pick, sorted by that key, minus the
  last pick, followed by its two halves;
* complexities depend only on the cell, so they are computed in batches: every round, the
  children of the cells that can still be picked (the top ``remaining`` of each heap) are
  computed together, for all patches of all images, grouped by cell size.
"""
from __future__ import annotations

import heapq
from functools import lru_cache

import numpy as np
import torch

from .complexity import Cell, Evaluator


def splittable(cell: Cell, min_size: int) -> bool:
    """The official split rule: a cell ``(y0, x0, h, w)`` is split unless ``h - 1 <= min_size``
    and ``w - 1 <= min_size``."""
    return cell[2] - 1 > min_size or cell[3] - 1 > min_size


def _halves(cell: Cell) -> tuple[tuple[Cell, Cell], tuple[Cell, Cell] | None]:
    """Children of a cell: (column split, row split) for squares, else (the split, None)."""
    y0, x0, h, w = cell
    lr = ((y0, x0, h, w // 2), (y0, x0 + w // 2, h, w - w // 2))
    tb = ((y0, x0, h // 2, w), (y0 + h // 2, x0, h - h // 2, w))
    if w > h:
        return lr, None
    if w < h:
        return tb, None
    return lr, tb


def _children(cell: Cell) -> list[Cell]:
    first, second = _halves(cell)
    return list(first) + (list(second) if second else [])


@lru_cache(maxsize=None)
def max_cells(height: int, width: int, min_size: int = 8) -> int:
    """Number of cells reached when every splittable cell is split (1024 for 256 / 8)."""
    cell = (0, 0, height, width)
    if not splittable(cell, min_size):
        return 1
    (a, b), _ = _halves(cell)
    return max_cells(a[2], a[3], min_size) + max_cells(b[2], b[3], min_size)


class _PatchState:
    def __init__(self, patch: int, height: int, width: int, n: int):
        self.patch = patch
        self.n = n
        self.seq = 0
        self.root = (0, 0, height, width)
        self.heap: list[tuple[float, int, Cell]] = []  # splittable cells
        self.leaves: list[tuple[float, int, Cell]] = []  # cells that can never be split
        self.count = 1
        self.last: list[tuple[float, int, Cell]] | None = None  # children of the last pick

    def add(self, cell: Cell, c: float, min_size: int) -> tuple[float, int, Cell]:
        item = (-c, self.seq, cell)
        self.seq += 1
        if splittable(cell, min_size):
            heapq.heappush(self.heap, item)
        else:
            self.leaves.append(item)
        return item

    @property
    def done(self) -> bool:
        return self.count >= self.n

    def result(self) -> list[Cell]:
        if self.last is None:
            return [self.root]
        kids = self.last
        kid_set = {k[1] for k in kids}
        rest = sorted(i for i in self.heap + self.leaves if i[1] not in kid_set)
        return [i[2] for i in rest] + [k[2] for k in kids]


_SPEC_AREA = 64 * 64  # unknown cells at least this large are split ahead in the same round


def _speculate(s: _PatchState, cache: dict[Cell, float], min_size: int) -> list[Cell]:
    """Cells whose children are probably needed soon.

    Plays the next ``n - count`` picks ahead on a copy of the heap, estimating an unknown
    child's complexity as half its parent's (half the area, similar entropy). Returns the
    cells picked in that play whose children are not computed yet: known cells, and large
    unknown cells whose parent is returned too (their value arrives in the same round, so
    the top levels of the tree take one round, not one per level). A wrong guess costs an
    extra round or a few unused cells, never a wrong result.
    """
    heap = [(negc, seq, cell, True) for negc, seq, cell in s.heap]
    seq = s.seq
    want = []
    for _ in range(s.n - s.count):
        if not heap:
            break
        negc, _, cell, ready = heapq.heappop(heap)
        first, second = _halves(cell)
        kids = first + (second or ())
        if all(k in cache for k in kids):
            if second is not None and not (min(cache[first[0]], cache[first[1]])
                                           < min(cache[second[0]], cache[second[1]])):
                first = second
            vals = [cache[k] for k in first]
            spec = True
        else:
            spec = ready and (cell in cache or cell[2] * cell[3] >= _SPEC_AREA)
            if spec:
                want.append(cell)
            first = second or first
            vals = [-negc / 2, -negc / 2]
        for k, v in zip(first, vals):
            if splittable(k, min_size):
                heapq.heappush(heap, (-v, seq, k, spec))
            seq += 1
    return want


def _run_greedy(ev: Evaluator, states: list[_PatchState], min_size: int) -> None:
    ev.compute([(s.patch, s.root) for s in states])
    for s in states:
        s.add(s.root, ev.cache[s.patch][s.root], min_size)
    active = [s for s in states if not s.done]
    while active:
        req: list[tuple[int, Cell]] = []
        for s in active:
            req.extend((s.patch, k) for c in _speculate(s, ev.cache[s.patch], min_size) for k in _children(c))
        ev.compute(req)
        for s in active:
            cache = ev.cache[s.patch]
            while not s.done:
                if not s.heap:
                    raise AssertionError("no splittable cell; n_tokens was validated against max_cells")
                cell = s.heap[0][2]
                first, second = _halves(cell)
                if any(k not in cache for k in first + (second or ())):
                    break
                heapq.heappop(s.heap)
                if second is not None and not (
                    min(cache[first[0]], cache[first[1]]) < min(cache[second[0]], cache[second[1]])
                ):
                    first = second
                s.last = [s.add(k, cache[k], min_size) for k in first]
                s.count += 1
        active = [s for s in active if not s.done]



def greedy_cells(grey: torch.Tensor, n: int, weight: float, min_size: int,
                 bias: torch.Tensor | None) -> list[np.ndarray]:
    """Pure-torch partition of every patch of ``grey`` float32 ``[P,H,W]`` (bias float64
    ``[P,H,W]`` quantized, or None) -> list of int64 ``[n,4]`` cells ``(x0, y0, x1, y1)``."""
    p, h, w = grey.shape
    ev = Evaluator(grey, weight, bias)
    states = [_PatchState(i, h, w, n) for i in range(p)]
    _run_greedy(ev, states, min_size)
    out = []
    for s in states:
        cells = np.array(s.result(), dtype=np.int64).reshape(-1, 4)
        y0, x0, hh, ww = cells.T
        out.append(np.stack([x0, y0, x0 + ww - 1, y0 + hh - 1], axis=1))
    return out
