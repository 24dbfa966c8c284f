"""Cell complexity ``E ** weight * h * w + sum(bias over the cell)`` (docs/algorithms.md section 1).

``E`` is the entropy of the gradient-magnitude histogram of the cell resized to 64x64. The
:class:`Evaluator` computes and caches it for batches of cells of a stack of patches: the Triton
(or torch twin) histogram on CUDA, :mod:`gpstoken.partition.fast_hist` on CPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from gpstoken.kernels.entropy_hist import gradient_hist

from .entropy import entropy
from .fast_hist import MARGIN, Workspace, fast_counts, value_bound
from .resize import resize

Cell = tuple[int, int, int, int]  # internal: (y0, x0, h, w)
_CHUNK = 128  # cells per histogram call (keeps temporaries in cache)


def unit_grey(grey: torch.Tensor) -> torch.Tensor:
    """float32 grey in [-1,1] -> ``(g+1)/2`` in [0,1] (float32), as the official pipeline maps it."""
    return (grey.float() + 1.0) / 2.0


def bias_integral(bias: torch.Tensor | None) -> np.ndarray | None:
    """float64 ``[P,H+1,W+1]`` integral image of a quantized bias ``[P,H,W]`` (exact cell sums);
    None for no bias."""
    if bias is None:
        return None
    ii = torch.zeros(bias.shape[0], bias.shape[1] + 1, bias.shape[2] + 1, dtype=torch.float64)
    ii[:, 1:, 1:] = bias.cpu().double().cumsum(1).cumsum(2)
    return ii.numpy()


class Evaluator:
    """Computes and caches complexities of cells for a stack of grey patches."""

    def __init__(self, grey: torch.Tensor, weight: float, bias: torch.Tensor | None):
        # grey: float32 [P,H,W]; bias: float64 [P,H,W] (already quantized) or None
        self.v = unit_grey(grey)
        self.tiles: dict[tuple[int, int], torch.Tensor] = {}
        self.ws = Workspace()
        self.margin: float | None = None
        self.weight = weight
        self.cache: list[dict[Cell, float]] = [{} for _ in range(grey.shape[0])]
        self.integral = bias_integral(bias)

    def _blocks(self, items: list[tuple[int, Cell]], h: int, w: int) -> torch.Tensor:
        """float32 ``[K,h,w]`` pixels of same-sized cells (values ``(g+1)/2``)."""
        dev = self.v.device
        p, hh, ww = self.v.shape
        if hh % h == 0 and ww % w == 0 and all(c[0] % h == 0 and c[1] % w == 0 for _, c in items):
            # cells on their own size's grid (always so in a 256 patch): rows of a tile stack
            if (h, w) not in self.tiles:
                self.tiles[(h, w)] = (self.v.view(p, hh // h, h, ww // w, w).permute(0, 1, 3, 2, 4)
                                      .reshape(-1, h, w))
            idx = torch.tensor([(i * (hh // h) + c[0] // h) * (ww // w) + c[1] // w for i, c in items],
                               device=dev)
            return self.tiles[(h, w)].index_select(0, idx)
        pi = torch.tensor([i for i, _ in items], device=dev)
        rows = torch.tensor([c[0] for _, c in items], device=dev)[:, None] + torch.arange(h, device=dev)
        cols = torch.tensor([c[1] for _, c in items], device=dev)[:, None] + torch.arange(w, device=dev)
        return self.v[pi[:, None, None], rows[:, :, None], cols[:, None, :]]

    def compute(self, requests: list[tuple[int, Cell]]) -> None:
        """Fill the cache for ``(patch, cell)`` requests (duplicates allowed).

        All requested cells are evaluated together: one float32 pass per cell size, then one
        exact pass, one histogram and one entropy evaluation for everything.
        """
        groups: dict[tuple[int, int], dict[tuple[int, Cell], None]] = {}
        for pc in requests:
            if pc[1] not in self.cache[pc[0]]:
                groups.setdefault(pc[1][2:], {})[pc] = None
        if not groups:
            return
        items = [list(g) for g in groups.values()]
        blocks = [self._blocks(it, h, w) for (h, w), it in zip(groups, items)]
        if self.v.is_cuda:
            counts = torch.cat([gradient_hist(resize(b[s:s + _CHUNK])).cpu().to(torch.int64)
                                for b in blocks for s in range(0, b.shape[0], _CHUNK)])
        else:
            if self.margin is None:
                self.margin = MARGIN * value_bound(self.v)
            counts = fast_counts(blocks, self.margin, self.ws)
        ent = entropy(counts)
        flat = [pc for it in items for pc in it]
        pw = [math.pow(e, self.weight) for e in ent]
        if self.integral is not None:
            ii = self.integral
            p, y0, x0, h, w = (np.array(c) for c in zip(*[(q, *cell) for q, cell in flat]))
            bias = ((ii[p, y0 + h, x0 + w] - ii[p, y0, x0 + w]) - (ii[p, y0 + h, x0] - ii[p, y0, x0])).tolist()
            for (q, cell), e, bb in zip(flat, pw, bias):
                self.cache[q][cell] = e * cell[2] * cell[3] + bb
        else:
            for (q, cell), e in zip(flat, pw):
                self.cache[q][cell] = e * cell[2] * cell[3]
