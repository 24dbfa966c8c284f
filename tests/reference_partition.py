"""Literal, slow reference of the entropy-driven partition (algorithms.md section 1).

A straightforward transcription with the official list semantics: a Python list of
candidate cells, a *stable* sort by complexity (largest first) every iteration, the first
splittable cell is removed and its two halves are appended at the end. Each complexity is
computed on its own with numpy (``np.histogram``), one cell at a time.

Resize detail that matters for bit parity: each bilinear pass is a float32
``fma(x1 - x0, t, x0)`` (horizontal pass first); log2 is libm's (``math.log2``).

Used by the tests (to cross-check the fast path in ``gpstoken.partition``) and by
``benchmarks/bench_partition.py`` (as the baseline). Not part of the package.

Cells are ``(x0, y0, x1, y1)`` inclusive pixel indices (x = column, y = row).
"""
from __future__ import annotations

import math

import numpy as np
import torch

RESIZE = 64
BINS = 512
RANGE = (-5.5, 5.5)


def grey_of(image: torch.Tensor) -> np.ndarray:
    """``[3,H,W]`` RGB in [-1,1] -> float32 ``[H,W]`` grey ``0.299 R + 0.587 G + 0.114 B``."""
    x = image.float()
    return (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).numpy()


def resize_coefficients(size: int, out: int = RESIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR source indices and weights: ``(first index, second index, weight)``.

    Output pixel ``d`` samples ``(d + 0.5) * size / out - 0.5`` (computed in float64, rounded
    to float32), clamped to the first/last source pixel (weight 0 there).
    """
    scale = 1.0 / (out / size)
    i0 = np.zeros(out, np.int64)
    i1 = np.zeros(out, np.int64)
    wt = np.zeros(out, np.float32)
    for d in range(out):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(np.floor(f))
        f = np.float32(f - np.float32(s))
        if s < 0:
            s, f = 0, np.float32(0.0)
        if s >= size - 1:
            s, f = size - 1, np.float32(0.0)
        i0[d], i1[d], wt[d] = s, min(s + 1, size - 1), f
    return i0, i1, wt


def lerp32(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """float32 ``fma(b - a, t, a)`` (one rounding after the multiply-add), via float64."""
    d = (b - a).astype(np.float32)
    return (d.astype(np.float64) * t.astype(np.float64) + a.astype(np.float64)).astype(np.float32)


def resize_linear(v: np.ndarray, out: int = RESIZE) -> np.ndarray:
    """Bilinear resize of a float32 ``[h,w]`` block to ``[out,out]``: rows first, then columns.

    Each pass is ``lerp32(x[i0], x[i1], weight)`` which is what the official pipeline computes
    (checked bit for bit against the fixture complexities).
    """
    h, w = v.shape
    i0, i1, a = resize_coefficients(w, out)
    t = lerp32(v[:, i0], v[:, i1], np.broadcast_to(a, (h, out)))
    j0, j1, b = resize_coefficients(h, out)
    return lerp32(t[j0], t[j1], np.broadcast_to(b[:, None], (out, out)))


def sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel x and y derivatives in float64 with replicated borders.

    Same operation order as a separable filter that runs the row kernel first:
    ``gx = 2*D(mid) + (D(up) + D(down))`` with ``D = right - left`` and
    ``gy = S(down) - S(up)`` with ``S = (left + 2*mid) + right``.
    """
    p = np.pad(img.astype(np.float64), 1, mode="edge")
    left, mid, right = p[:, :-2], p[:, 1:-1], p[:, 2:]
    d = right - left
    s = (left + 2.0 * mid) + right
    gx = 2.0 * d[1:-1] + (d[2:] + d[:-2])
    gy = s[2:] - s[:-2]
    return gx, gy


def entropy_of_block(block: np.ndarray) -> float:
    """Gradient-magnitude entropy (bits) of a float32 grey block in [-1,1]."""
    v = (block + np.float32(1.0)) / np.float32(2.0)
    gx, gy = sobel(resize_linear(v))
    mag = np.sqrt(gx**2 + gy**2)
    hist, _ = np.histogram(mag, bins=BINS, range=RANGE)
    p = hist / (hist.sum() + 1e-5)
    log2 = np.array([math.log2(q + 1e-10) for q in p.tolist()])  # libm log2, as the official run
    return float(-np.sum(p * log2))


def complexity(grey: np.ndarray, cell: tuple[int, int, int, int], weight: float,
               bias: np.ndarray | None) -> float:
    """``E ** weight * h * w + sum(bias over the cell)`` for an inclusive cell."""
    x0, y0, x1, y1 = cell
    block = grey[y0:y1 + 1, x0:x1 + 1]
    h, w = block.shape
    c = np.float64(entropy_of_block(block)) ** weight * h * w
    if bias is not None:
        c = c + np.float64(bias[y0:y1 + 1, x0:x1 + 1].sum(dtype=np.float64))
    return float(c)


def split_cols(cell):
    x0, y0, x1, y1 = cell
    half = (x1 - x0 + 1) // 2
    return (x0, y0, x0 + half - 1, y1), (x0 + half, y0, x1, y1)


def split_rows(cell):
    x0, y0, x1, y1 = cell
    half = (y1 - y0 + 1) // 2
    return (x0, y0, x1, y0 + half - 1), (x0, y0 + half, x1, y1)


def reference_partition(grey: np.ndarray, n_tokens: int, *, weight: float = 2.5, min_size: int = 8,
                        bias: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Partition a grey ``[H,W]`` float32 block into ``n_tokens`` cells, official order.

    Returns ``(cells int64 [n,4], complexities float64 [n])``. Raises ``ValueError`` when no
    cell is splittable before ``n_tokens`` cells are reached.
    """
    H, W = grey.shape
    root = (0, 0, W - 1, H - 1)
    cands = [(root, complexity(grey, root, weight, bias))]
    while len(cands) < n_tokens:
        cands = sorted(cands, key=lambda item: -item[1])  # stable
        pick = None
        for i, (cell, _) in enumerate(cands):
            h, w = cell[3] - cell[1] + 1, cell[2] - cell[0] + 1
            if h - 1 > min_size or w - 1 > min_size:
                pick = i
                break
        if pick is None:
            raise ValueError(f"n_tokens={n_tokens}: no splittable cell left at {len(cands)} cells")
        cell, _ = cands.pop(pick)
        h, w = cell[3] - cell[1] + 1, cell[2] - cell[0] + 1
        if w > h:
            halves = split_cols(cell)
            kids = [(c, complexity(grey, c, weight, bias)) for c in halves]
        elif w < h:
            halves = split_rows(cell)
            kids = [(c, complexity(grey, c, weight, bias)) for c in halves]
        else:
            lr = [(c, complexity(grey, c, weight, bias)) for c in split_cols(cell)]
            tb = [(c, complexity(grey, c, weight, bias)) for c in split_rows(cell)]
            kids = lr if min(k[1] for k in lr) < min(k[1] for k in tb) else tb
        cands.extend(kids)
    cells = np.array([c for c, _ in cands], dtype=np.int64).reshape(-1, 4)
    comps = np.array([v for _, v in cands], dtype=np.float64)
    return cells, comps
