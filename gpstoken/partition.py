"""Entropy-driven adaptive partition (docs/algorithms.md section 1), exact official semantics.

Each 256x256 patch is split greedily into ``n_tokens`` rectangular cells. The complexity of a
cell is ``E ** weight * h * w + sum(bias over the cell)`` where ``E`` is the entropy of the
gradient-magnitude histogram of the cell resized to 64x64.

Fast path, equivalent to the official list-and-stable-sort loop:

* the official order (stable sort by complexity, children appended at the end) is the order
  of ``(-complexity, insertion number)``, so the pick is the top of a heap of splittable cells;
* the final order is every cell present before the last pick, sorted by that key, minus the
  last pick, followed by its two halves;
* complexities depend only on the cell, so they are computed in batches: every round, the
  children of the cells that can still be picked (the top ``remaining`` of each heap) are
  computed together, for all patches of all images, grouped by cell size.

Bit parity with the official pipeline (checked against the fixtures): the bilinear resize is
two float32 ``fma(x1 - x0, t, x0)`` passes (columns first); Sobel, magnitude and binning in
float64 (:mod:`gpstoken.kernels.entropy_hist`); numpy's pairwise summation of the entropy
terms; libm ``log2`` and ``pow``. The float32 fma is evaluated in float64 and rounded once
more; that is exact unless a cell mixes values whose exponents differ by more than ~24
(impossible for images that come from 8-bit data).

CPU: the native path (``gpstoken/csrc/cpartition.c``, built at install time when a C compiler
is present; see :func:`native_available`) runs the same exact arithmetic and the greedy loop
in C, patches in parallel threads. The pure-torch path below is its reference and the
fallback; both give identical cells (tested).

Pure-torch CPU speed (the histogram is where the time goes): every pixel's bin is first estimated in
float32 with the resize and Sobel folded into two separable linear maps (polyphase taps,
all cells of a size at once); only pixels whose estimate lies within a proven error margin
of a bin edge (~0.1%) are recomputed with the exact official operations on their 3x3
neighbourhood (see the comment above ``_MARGIN``). The entropy terms of full histograms
come from a 4097-entry table of the same float64 values. On CUDA the Triton kernel runs the
exact computation for every pixel.
"""
from __future__ import annotations

import heapq
import importlib
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from gpstoken.geometry import GEOMETRY, PATCH, REGION, cells_to_arrays, split_patches
from gpstoken.images import pad_to_patches, to_tensor
from gpstoken.kernels.entropy_hist import HALF_BINS, gradient_hist
from gpstoken.layout import Layout

_native: Any  # the compiled extension, or None without it
try:
    _native = importlib.import_module("gpstoken._cpartition")
except ImportError:  # built without a C compiler: the pure-torch path is used
    _native = None

RESIZE = 64
MAX_ENTROPY = 9.0  # log2(512): the largest possible histogram entropy
BIAS_QUANTUM = 2.0**-24  # bias maps are rounded to this grid so cell sums are exact
MAX_ABS_BIAS = 2.0**12  # per pixel, keeps every cell sum exact in float64
_CHUNK = 128  # cells per histogram call (keeps temporaries in cache)

Cell = tuple[int, int, int, int]  # internal: (y0, x0, h, w)


# --------------------------------------------------------------------------- complexity
@lru_cache(maxsize=None)
def _resize_coefficients(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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


def _lerp32(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """float32 ``fma(b - a, t, a)`` evaluated in float64 (``t`` float64, broadcastable)."""
    return torch.addcmul(a.double(), (b - a).double(), t).float()


def _resize(blocks: torch.Tensor) -> torch.Tensor:
    """``[K,h,w]`` float32 -> ``[K,64,64]`` float32, the official bilinear resize."""
    _, h, w = blocks.shape
    dev = str(blocks.device)
    i0, i1, a = _resize_coefficients(w, dev)
    t = _lerp32(blocks.index_select(2, i0), blocks.index_select(2, i1), a)
    j0, j1, b = _resize_coefficients(h, dev)
    return _lerp32(t.index_select(1, j0), t.index_select(1, j1), b[:, None])


# ---- fast CPU histogram: float32 estimate + exact recomputation near bin edges ----------
#
# The magnitude histogram only needs each pixel's bin. In real arithmetic the resize and the
# Sobel filter are linear maps, so ``gx = (Sy Uy) X (Dx Ux)^T`` and ``gy = (Dy Uy) X (Sx Ux)^T``
# (``U`` resize matrices, ``D``/``S`` the Sobel difference/smoothing with replicated borders).
# We evaluate these maps in float32 (cheap, vectorised over all cells of a group) and get
# ``t = magnitude * 512 / 11`` in bin units: the exact bin is ``floor(t_exact)``.
#
# Error bound (u = 2**-24, |values| <= M): each official float32 resize pass rounds the
# difference (relative u, difference <= 2M) and the fma (u * M), so the official resized pixels
# are within 6uM of the real resize, and its gx, gy (Sobel taps sum to 8 in absolute value)
# within 48uM. Our float32 passes (3 taps each, coefficient sums <= 2 for a difference and <= 4
# for a smoothing, partial sums <= 8M) are within another ~50uM, so
# ``|t_float32 - t_exact| <= 46.5 * sqrt(2) * 100uM + (rounding of t, < 200u) < 4.5e-4 * M``
# for M >= 1. A pixel whose estimate is farther than ``_MARGIN * max(M, 1)`` from every integer
# has a certain bin (measured error on photos: ~3e-5); the others (~0.1%) are recomputed with
# the exact float64 procedure (``_exact_bins``) on their 3x3 neighbourhood.
# t = 0 is not an issue: t >= 0, so bin 0 has no lower edge to cross.
_MARGIN = 6e-4
_T_SCALE = 512.0 / 11.0
_FAST_CHUNK = 256  # cells per float32 batch (per-call overheads dominate below ~128)


def _axis_matrices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Real-arithmetic ``(D @ U, S @ U)`` for one axis ``n -> 64`` (``64 x n`` float64 each)."""
    i0, i1, wt = (t.cpu().numpy() for t in _resize_coefficients(n, "cpu"))
    u = np.zeros((RESIZE, n))
    for d in range(RESIZE):
        u[d, i0[d]] += 1.0 - wt[d]
        u[d, i1[d]] += wt[d]
    lo = np.maximum(np.arange(RESIZE) - 1, 0)
    hi = np.minimum(np.arange(RESIZE) + 1, RESIZE - 1)
    return u[hi] - u[lo], (u[lo] + 2.0 * u[np.arange(RESIZE)]) + u[hi]


class _AxisOp:
    """A ``64 x n`` linear map applied along one axis of a replicate-padded (``n + 2``) source.

    When the map is polyphase (output ``s*m + p`` = the same 3 taps of padded inputs
    ``m..m+2`` for every ``m``; true for ``n`` dividing 64, i.e. every cell of a 256 patch),
    it is applied with one broadcast multiply-add per tap and the output is stored phase-major
    (slot ``p*n + m`` holds output ``s*m + p``); ``perm[slot]`` gives the true index. Any
    other size uses a dense matrix product (output in natural order).
    """

    def __init__(self, m: np.ndarray, scale: float):
        n = m.shape[1]
        self.n = n
        pad = np.zeros((n + 2, n))  # replicate padding as a matrix: padded = pad @ x
        pad[np.arange(n) + 1, np.arange(n)] = 1.0
        pad[0, 0] = pad[n + 1, n - 1] = 1.0
        self.taps: list[tuple[int, torch.Tensor]] | None = None
        self.perm = np.arange(RESIZE)
        if RESIZE % n == 0 and n >= 3:
            s = RESIZE // n
            mid = n // 2
            ker = m[s * mid:s * mid + s, mid - 1:mid + 2]  # [s, 3] taps of an interior output
            mp = np.zeros((RESIZE, n + 2))
            for q in range(n):
                mp[s * q:s * q + s, q:q + 3] = ker
            if np.array_equal(mp @ pad, m):
                # taps[k]: coefficient of padded input m + k for each phase, float32 [s, 1]
                self.taps = [(k, torch.from_numpy(ker[:, k] * scale).float()[:, None])
                             for k in range(3) if ker[:, k].any()]
                self.perm = np.array([s * q + p for p in range(s) for q in range(n)])
        if self.taps is None:
            mp = np.zeros((RESIZE, n + 2))
            mp[:, 1:n + 1] = m
            self.dense = torch.from_numpy(mp * scale).float()

    def apply(self, x: torch.Tensor, dim: int, out: torch.Tensor) -> torch.Tensor:
        """``x`` with ``n + 2`` entries along ``dim`` (1 or 2 of a 3-d tensor) -> ``out`` with 64."""
        if self.taps is None:
            if dim == 2:
                return torch.matmul(x, self.dense.t(), out=out)
            return torch.matmul(self.dense, x, out=out)
        n = self.n
        s = RESIZE // n
        (k0, c0), rest = self.taps[0], self.taps[1:]
        if dim == 2:  # x [K,R,n+2] -> out [K,R,64] viewed [K,R,s,n]; one broadcast op per tap
            ov = out.view(out.shape[0], out.shape[1], s, n)
            torch.mul(x[:, :, None, k0:k0 + n], c0, out=ov)
            for k, c in rest:
                ov.addcmul_(x[:, :, None, k:k + n], c)
        else:  # x [K,n+2,64] -> out [K,64,64] viewed [K,s,n,64]
            ov = out.view(out.shape[0], s, n, out.shape[2])
            torch.mul(x[:, None, k0:k0 + n], c0[:, :, None], out=ov)
            for k, c in rest:
                ov.addcmul_(x[:, None, k:k + n], c[:, :, None])
        return out


@lru_cache(maxsize=None)
def _axis_ops(n: int, last: bool) -> tuple[_AxisOp, _AxisOp]:
    """(difference, smoothing) maps for an axis of ``min(n, 64)`` source pixels.

    Axes longer than 64 are first resized exactly (see ``_fast_counts``) and then use the
    identity resize. ``last``: the pass that produces gx, gy carries the ``512/11`` scale.
    """
    d, s = _axis_matrices(min(n, RESIZE))
    scale = _T_SCALE if last else 1.0
    return _AxisOp(d, scale), _AxisOp(s, scale)


def _exact_resize_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Exact official resize pass along ``dim`` (1 rows, 2 columns) of float32 ``[K,h,w]``."""
    i0, i1, t = _resize_coefficients(x.shape[dim], str(x.device))
    if dim == 1:
        t = t[:, None]
    return _lerp32(x.index_select(dim, i0), x.index_select(dim, i1), t)


def _exact_inputs(blocks: torch.Tensor, cell: torch.Tensor, i: torch.Tensor,
                  j: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Source pixels and weights the official resize uses for the 3x3 neighbourhood of resized
    pixels ``(i, j)`` of cells ``cell``: ``a, b`` float32 ``[N,3,2,3]`` (row up/mid/down, its two
    source rows, column left/mid/right; ``a`` first and ``b`` second source column), column
    weights float64 ``[N,1,1,3]`` and row weights ``[N,3,1]``. Replicated borders: clamped."""
    _, h, w = blocks.shape
    c0, c1, ca = _resize_coefficients(w, "cpu")
    r0, r1, rb = _resize_coefficients(h, "cpu")
    off = torch.tensor([-1, 0, 1])
    ii = (i[:, None] + off).clamp_(0, RESIZE - 1)  # [N,3] up, mid, down
    jj = (j[:, None] + off).clamp_(0, RESIZE - 1)  # [N,3] left, mid, right
    ys = torch.stack([r0[ii], r1[ii]], -1)[:, :, :, None]  # [N,3,2,1] source rows
    k = cell[:, None, None, None]
    a = blocks[k, ys, c0[jj][:, None, None, :]]
    b = blocks[k, ys, c1[jj][:, None, None, :]]
    return a, b, ca[jj][:, None, None, :], rb[ii][:, :, None]


def _exact_from_inputs(a: torch.Tensor, b: torch.Tensor, ca: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """Exact upper-half bin (0..255, 256 = above 5.5) from :func:`_exact_inputs`.

    Repeats the official computation on the 3x3 neighbourhood only: the resize (columns then
    rows, float32 fma each, as :func:`_resize`), Sobel in float64 with the operation order of
    :func:`gpstoken.kernels.entropy_hist.gradient_hist_torch`, and its exact binning. Every
    step is elementwise IEEE arithmetic, so the result is bit-identical.
    """
    cols = _lerp32(a, b, ca)  # column pass [N,3,2,3]
    r = _lerp32(cols[:, :, 0], cols[:, :, 1], rb).double()  # row pass [N,3,3]
    d = r[:, :, 2] - r[:, :, 0]
    s = (r[:, :, 0] + 2.0 * r[:, :, 1]) + r[:, :, 2]
    gx = 2.0 * d[:, 1] + (d[:, 2] + d[:, 0])
    gy = s[:, 2] - s[:, 0]
    t = (gx * gx + gy * gy).sqrt() * 512.0
    q = torch.floor(t / 11.0)
    q -= (q * 11.0 > t).to(q.dtype)
    q += ((q + 1.0) * 11.0 <= t).to(q.dtype)
    q.clamp_(max=255)
    q.masked_fill_(t > 2816.0, 256)
    return q.to(torch.int64)


def _exact_bins(blocks: torch.Tensor, cell: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Exact bin of resized pixels ``(i, j)`` (row, column) of cells ``blocks[cell]``."""
    return _exact_from_inputs(*_exact_inputs(blocks, cell, i, j))


class _Workspace:
    """Reusable float32/int32 buffers (fresh multi-MiB tensors cost page faults every call)."""

    def __init__(self):
        self.bufs: dict[tuple[str, torch.dtype], torch.Tensor] = {}  # one buffer per name, grown as needed

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n = math.prod(shape)
        key = (name, dtype)
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self.bufs[key] = torch.empty(n, dtype=dtype)
        return buf[:n].view(shape)


def _pad_replicate(x: torch.Tensor) -> torch.Tensor:
    """``[K,h,w]`` -> ``[K,h+2,w+2]`` with the border pixels repeated."""
    xp = torch.empty(x.shape[0], x.shape[1] + 2, x.shape[2] + 2, dtype=x.dtype)
    xp[:, 1:-1, 1:-1] = x
    xp[:, 1:-1, 0] = x[:, :, 0]
    xp[:, 1:-1, -1] = x[:, :, -1]
    xp[:, 0] = xp[:, 1]
    xp[:, -1] = xp[:, -2]
    return xp


def _fast_keys(xp: torch.Tensor, margin: float, ws: _Workspace, keys: torch.Tensor) -> torch.Tensor:
    """Approximate bins of padded float32 cells ``xp [K,h+2,w+2]`` (``h, w <= 64``).

    Writes ``keys [K,4096]`` int32 = bin (0..256, 256 = above 5.5) of every resized pixel, in
    the phase-major pixel order of the axis maps; returns ``[N,2]`` (cell, slot) of the pixels
    whose bin is not certain.
    """
    kk, h, w = xp.shape[0], xp.shape[1] - 2, xp.shape[2] - 2
    hd, hs = _axis_ops(w, False)
    vd, vs = _axis_ops(h, True)
    rows_d = hd.apply(xp, 2, ws.get("rows_d", (kk, h + 2, RESIZE)))
    rows_s = hs.apply(xp, 2, ws.get("rows_s", (kk, h + 2, RESIZE)))
    gx = vs.apply(rows_d, 1, ws.get("gx", (kk, RESIZE, RESIZE)))
    gy = vd.apply(rows_s, 1, ws.get("gy", (kk, RESIZE, RESIZE)))
    t = gx.mul_(gx).addcmul_(gy, gy).sqrt_().view(kk, -1)
    lo = torch.sub(t, margin, out=gy.view(kk, -1))
    keys.copy_(lo)  # float -> int truncates: the bin of t - margin (0 for -margin < t - margin < 0)
    hi = ws.get("hi", (kk, RESIZE * RESIZE), torch.int32).copy_(t.add_(margin))
    ne = torch.ne(keys, hi, out=ws.get("ne", (kk, RESIZE * RESIZE), torch.bool))
    keys.clamp_(max=HALF_BINS)
    # Uncertain pixels are rare: find the nonzero 8-byte words first, then the bytes in them.
    words = ne.view(torch.uint8).view(kk, -1, 8).view(torch.int64)[..., 0].nonzero()
    if not words.numel():
        return words
    hit = ne.view(kk, -1, 8)[words[:, 0], words[:, 1]].nonzero()
    word = words[hit[:, 0]]
    return torch.stack([word[:, 0], word[:, 1] * 8 + hit[:, 1]], 1)


def _value_bound(v: torch.Tensor) -> float:
    """The ``M`` of the error bound: resized values are convex combinations of ``v``."""
    return max(1.0, float(v.abs().max())) if v.numel() else 1.0


def _fast_counts(groups: list[torch.Tensor], margin: float, ws: _Workspace | None = None) -> torch.Tensor:
    """CPU: ``int64 [sum K,256]`` upper-bin counts of groups of float32 cells ``[K,h,w]``.

    Equal to ``gradient_hist(_resize(blocks))`` per group: float32 estimate of every pixel's
    bin (in chunks of ``_FAST_CHUNK`` cells), then one exact recomputation of all uncertain
    pixels and one histogram for all groups (fixed per-call costs paid once).
    ``margin = _MARGIN * M`` with ``M`` from :func:`_value_bound` of (a superset of) the cells.
    """
    ws = ws or _Workspace()
    total = sum(g.shape[0] for g in groups)
    keys = torch.empty(total, RESIZE * RESIZE, dtype=torch.int32)
    pending, base = [], 0
    for blocks in groups:
        kk, h, w = blocks.shape
        x = blocks
        if w > RESIZE:  # long axes: the exact official resize pass first (few such cells)
            x = _exact_resize_axis(x, 2)
        if h > RESIZE:
            x = _exact_resize_axis(x, 1)
        xp = _pad_replicate(x)
        unsure = torch.cat([_fast_keys(xp[s:s + _FAST_CHUNK], margin, ws, keys[base + s:base + min(s + _FAST_CHUNK, kk)])
                            + torch.tensor([s, 0]) for s in range(0, kk, _FAST_CHUNK)])
        if unsure.numel():
            cell, f = unsure[:, 0], unsure[:, 1]
            rows = torch.from_numpy(_axis_ops(h, True)[1].perm)[f // RESIZE]
            cols = torch.from_numpy(_axis_ops(w, False)[0].perm)[f % RESIZE]
            pending.append((cell + base, f, _exact_inputs(blocks, cell, rows, cols)))
        base += kk
    if pending:
        cell = torch.cat([p[0] for p in pending])
        f = torch.cat([p[1] for p in pending])
        inputs = [torch.cat([p[2][i] for p in pending]) for i in range(4)]
        keys[cell, f] = _exact_from_inputs(*inputs).to(torch.int32)
    keys += torch.arange(0, total * (HALF_BINS + 1), HALF_BINS + 1, dtype=torch.int32)[:, None]
    counts = torch.bincount(keys.view(-1), minlength=total * (HALF_BINS + 1))
    return counts.view(total, HALF_BINS + 1)[:, :HALF_BINS]


@lru_cache(maxsize=None)
def _full_terms() -> torch.Tensor:
    """``p * log2(p + 1e-10)`` for ``p = c / (4096 + 1e-5)``, ``c = 0..4096`` (float64 [4097]).

    A cell whose 4096 magnitudes all lie in [0, 5.5] has total 4096, so its terms are rows
    of this table: the same torch division and product, and libm log2, as ``_entropy``.
    """
    p = torch.arange(RESIZE * RESIZE + 1, dtype=torch.int64).double() / (
        torch.tensor(float(RESIZE * RESIZE), dtype=torch.float64) + 1e-5)
    logs = torch.tensor([math.log2(v + 1e-10) for v in p.tolist()], dtype=torch.float64)
    return p * logs


def _entropy(counts: torch.Tensor) -> list[float]:
    """Entropy (bits) per row of ``[K,256]`` upper-bin counts, exactly as numpy computes it.

    ``p = hist / (hist.sum() + 1e-5)``; ``E = -np.sum(p * log2(p + 1e-10))`` with libm log2 and
    numpy's pairwise summation over the 512 bins (the 256 lower bins are empty: their terms
    are -0.0 and leave the sum unchanged).
    """
    counts = counts.cpu().to(torch.int64)
    total = counts.sum(1, keepdim=True)
    full = (total[:, 0] == RESIZE * RESIZE)
    if bool(full.all()):
        terms = _full_terms()[counts]
    else:
        p = counts.double() / (total.double() + 1e-5)
        uniq, inv = torch.unique(p, return_inverse=True)
        logs = torch.tensor([math.log2(v + 1e-10) for v in uniq.tolist()], dtype=torch.float64)
        terms = p * logs[inv]
    # numpy pairwise sum: blocks of 128 with 8 running accumulators, blocks added as a tree.
    r = terms.view(-1, 2, 16, 8)
    acc = r[:, :, 0]
    for i in range(1, 16):
        acc = acc + r[:, :, i]
    blk = ((acc[..., 0] + acc[..., 1]) + (acc[..., 2] + acc[..., 3])) + (
        (acc[..., 4] + acc[..., 5]) + (acc[..., 6] + acc[..., 7]))
    return (-(blk[:, 0] + blk[:, 1])).tolist()


def _unit_grey(grey: torch.Tensor) -> torch.Tensor:
    """float32 grey in [-1,1] -> ``(g+1)/2`` in [0,1] (float32), as the official pipeline maps it."""
    return (grey.float() + 1.0) / 2.0


def _bias_integral(bias: torch.Tensor | None) -> np.ndarray | None:
    """float64 ``[P,H+1,W+1]`` integral image of a quantized bias ``[P,H,W]`` (exact cell sums);
    None for no bias."""
    if bias is None:
        return None
    ii = torch.zeros(bias.shape[0], bias.shape[1] + 1, bias.shape[2] + 1, dtype=torch.float64)
    ii[:, 1:, 1:] = bias.cpu().double().cumsum(1).cumsum(2)
    return ii.numpy()


class _Evaluator:
    """Computes and caches complexities of cells for a stack of grey patches."""

    def __init__(self, grey: torch.Tensor, weight: float, bias: torch.Tensor | None):
        # grey: float32 [P,H,W]; bias: float64 [P,H,W] (already quantized) or None
        self.v = _unit_grey(grey)
        self.tiles: dict[tuple[int, int], torch.Tensor] = {}
        self.ws = _Workspace()
        self.margin: float | None = None
        self.weight = weight
        self.cache: list[dict[Cell, float]] = [{} for _ in range(grey.shape[0])]
        self.integral = _bias_integral(bias)

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
            counts = torch.cat([gradient_hist(_resize(b[s:s + _CHUNK])).cpu().to(torch.int64)
                                for b in blocks for s in range(0, b.shape[0], _CHUNK)])
        else:
            if self.margin is None:
                self.margin = _MARGIN * _value_bound(self.v)
            counts = _fast_counts(blocks, self.margin, self.ws)
        ent = _entropy(counts)
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


# --------------------------------------------------------------------------- greedy loop
def _splittable(cell: Cell, min_size: int) -> bool:
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
    if not _splittable(cell, min_size):
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
        if _splittable(cell, min_size):
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
            if _splittable(k, min_size):
                heapq.heappush(heap, (-v, seq, k, spec))
            seq += 1
    return want


def _run_greedy(ev: _Evaluator, states: list[_PatchState], min_size: int) -> None:
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


# --------------------------------------------------------------------------- validation
def _check_common(n_tokens: Any, weight: Any, min_size: Any) -> tuple[int, float, int]:
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)):
        raise TypeError(f"n_tokens: expected an int >= 1 (tokens per 256x256 patch), got {type(n_tokens).__name__}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens: must be >= 1 (tokens per 256x256 patch), got {n_tokens}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating, np.integer)):
        raise TypeError(f"weight: expected a positive float (entropy exponent, official 2.5), got {type(weight).__name__}")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight: must be a finite float > 0 (entropy exponent, official 2.5), got {weight}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)):
        raise TypeError(f"min_size: expected an int >= 1 (official 8), got {type(min_size).__name__}")
    if min_size < 1:
        raise ValueError(f"min_size: must be an int >= 1 (official 8), got {min_size}")
    return int(n_tokens), float(weight), int(min_size)


def _check_reachable(n_tokens: int, height: int, width: int, min_size: int) -> None:
    top = max_cells(height, width, min_size)
    if n_tokens > top:
        raise ValueError(
            f"n_tokens: a {height}x{width} patch can be split into at most {top} cells with "
            f"min_size={min_size}, got n_tokens={n_tokens}; use n_tokens <= {top}"
        )


def _quantize_bias(bias: torch.Tensor, name: str) -> torch.Tensor:
    bias = bias.double()
    if not torch.isfinite(bias).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    if bias.abs().max() > MAX_ABS_BIAS:
        raise ValueError(f"{name}: per-pixel values must lie in [-{MAX_ABS_BIAS:g}, {MAX_ABS_BIAS:g}]")
    return torch.round(bias / BIAS_QUANTUM) * BIAS_QUANTUM


# --------------------------------------------------------------------------- public API
def grey_of(images: torch.Tensor) -> torch.Tensor:
    """``[B,3,H,W]`` RGB in [-1,1] -> float32 ``[B,H,W]`` grey ``0.299 R + 0.587 G + 0.114 B``."""
    x = images.float()
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


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
    n_tokens, weight, min_size = _check_common(n_tokens, weight, min_size)
    g = _check_grey(grey)
    b = None
    if bias is not None:
        b = torch.as_tensor(bias)
        if tuple(b.shape) != tuple(g.shape):
            raise ValueError(f"bias: expected shape {tuple(g.shape)} like grey, got {tuple(b.shape)}")
        b = _quantize_bias(b, "bias")[None]
    return _partition_stack(g[None], n_tokens, weight, min_size, b)[0]


def complexities(grey: np.ndarray | torch.Tensor, cells: np.ndarray, *, weight: float = 2.5,
                 bias: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Complexity ``E ** weight * h * w + sum(bias over the cell)`` of each cell, float64 ``[n]``.

    ``grey`` float ``[H,W]`` in [-1,1]; ``cells`` int ``[n,4]`` inclusive ``(x0, y0, x1, y1)``.
    """
    g = _check_grey(grey)
    b = None if bias is None else _quantize_bias(torch.as_tensor(bias), "bias")[None]
    cells = np.asarray(cells)
    keys = [(int(y0), int(x0), int(y1 - y0 + 1), int(x1 - x0 + 1)) for x0, y0, x1, y1 in cells]
    for i, (y0, x0, h, w) in enumerate(keys):
        if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > g.shape[0] or x0 + w > g.shape[1]:
            raise ValueError(f"cells[{i}]: {tuple(cells[i])} is empty or outside the "
                             f"{g.shape[0]}x{g.shape[1]} image")
    if _use_native(g):
        out = np.empty(len(keys), np.float64)
        spec = np.array([(0, *k) for k in keys], dtype=np.int32).reshape(-1, 5)
        v = _native_grey(g[None])
        _native.complexities(v, 1, *g.shape, _bias_integral(b), spec, len(keys),
                             float(weight), torch.get_num_threads(), out)
        return out
    ev = _Evaluator(g[None], float(weight), b)
    ev.compute([(0, k) for k in keys])
    return np.array([ev.cache[0][k] for k in keys], dtype=np.float64)


def native_available() -> bool:
    """Whether the native CPU partition (``gpstoken._cpartition``) was built at install time.

    Without it (no C compiler when installing) results are the same, only slower: the
    pure-torch path runs instead.
    """
    return _native is not None


def _use_native(grey: torch.Tensor) -> bool:
    return _native is not None and not grey.is_cuda


def _native_grey(grey: torch.Tensor) -> np.ndarray:
    """``(g+1)/2`` of float32 grey as the C-contiguous array the native module reads."""
    return _unit_grey(grey).contiguous().cpu().numpy()


def _check_grey(grey: np.ndarray | torch.Tensor) -> torch.Tensor:
    g = torch.as_tensor(grey)
    if g.ndim != 2 or not g.is_floating_point():
        raise ValueError(f"grey: expected a float [H,W] array, got shape {tuple(g.shape)} dtype {g.dtype}")
    if not torch.isfinite(g).all():
        raise ValueError("grey: contains NaN or Inf values")
    return g.float()


def _partition_stack(grey: torch.Tensor, n: int, weight: float, min_size: int,
                     bias: torch.Tensor | None) -> list[np.ndarray]:
    """Partition every ``[H,W]`` patch of ``grey [P,H,W]`` -> list of int64 ``[n,4]`` cells."""
    p, h, w = grey.shape
    _check_reachable(n, h, w, min_size)
    if _use_native(grey):
        native_out = np.empty((p, n, 4), np.int32)
        _native.partition(_native_grey(grey), p, h, w, _bias_integral(bias), n, min_size,
                          float(weight), torch.get_num_threads(), native_out)
        return list(native_out.astype(np.int64))
    ev = _Evaluator(grey, weight, bias)
    states = [_PatchState(i, h, w, n) for i in range(p)]
    _run_greedy(ev, states, min_size)
    out = []
    for s in states:
        cells = np.array(s.result(), dtype=np.int64).reshape(-1, 4)
        y0, x0, hh, ww = cells.T
        out.append(np.stack([x0, y0, x0 + ww - 1, y0 + hh - 1], axis=1))
    return out


def priority_bias(priority: Any, height: int, width: int, weight: float = 2.5,
                  strength: float = 1.0) -> torch.Tensor:
    """Per-pixel bias map float64 ``[height, width]`` from a priority mask or boxes.

    ``priority`` is an ``[H,W]`` mask (bool, or float weights in [0, 1]) or a sequence of
    pixel boxes ``(x0, y0, x1, y1)`` (inclusive, clipped to the image). A pixel of weight
    ``a`` gets ``a * strength * 9 ** weight``: ``9 ** weight`` is the largest entropy term
    per pixel (entropy <= log2(512) = 9), so a fully prioritised cell outranks any cell of
    the same size outside the priority region and is split first.
    """
    scale = strength * MAX_ENTROPY**weight
    if isinstance(priority, (np.ndarray, torch.Tensor)):
        m = torch.as_tensor(priority)
        if tuple(m.shape) != (height, width):
            raise ValueError(f"priority: mask must have the image's shape {(height, width)}, got {tuple(m.shape)}")
        m = m.double()
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError("priority: mask values must be bool or floats in [0, 1]")
        return m.cpu() * scale
    if isinstance(priority, Sequence) and not isinstance(priority, (str, bytes)):
        m = torch.zeros(height, width, dtype=torch.float64)
        for i, box in enumerate(priority):
            if not isinstance(box, Sequence) or len(box) != 4 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box
            ):
                raise ValueError(f"priority[{i}]: a box must be 4 ints (x0, y0, x1, y1) in pixels, got {box!r}")
            x0, y0, x1, y1 = (int(v) for v in box)
            if x1 < x0 or y1 < y0:
                raise ValueError(f"priority[{i}]: box needs x0 <= x1 and y0 <= y1, got {box!r}")
            m[max(y0, 0):max(y1 + 1, 0), max(x0, 0):max(x1 + 1, 0)] = scale
        return m
    raise TypeError(
        f"priority: expected an [H,W] mask (numpy/torch, bool or float in [0,1]) or a list of "
        f"(x0, y0, x1, y1) boxes, got {type(priority).__name__}"
    )


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
    n_tokens, weight, min_size = _check_common(n_tokens, weight, min_size)
    _check_reachable(n_tokens, PATCH, PATCH, min_size)
    x = images
    bsz, _, h, w = x.shape
    bias = None
    if priority is not None:
        b = priority_bias(priority, h, w, weight)
        b = torch.nn.functional.pad(b, (0, (-w) % PATCH, 0, (-h) % PATCH))
        bias = _quantize_bias(b, "priority")
    xp, grid = pad_to_patches(x)
    patches = split_patches(xp, grid)  # [B*k*m, 3, 256, 256]
    grey = grey_of(patches)
    if bias is not None:
        bias = split_patches(bias[None, None], grid)[:, 0].repeat(bsz, 1, 1)
    cells = _partition_stack(grey, n_tokens, weight, min_size, bias)
    arrays = [cells_to_arrays(c, PATCH, PATCH) for c in cells]
    per_img = grid[0] * grid[1] * n_tokens
    geometry = torch.from_numpy(np.concatenate([g for g, _ in arrays])).view(bsz, per_img, GEOMETRY)
    regions = torch.from_numpy(np.concatenate([r for _, r in arrays])).view(bsz, per_img, REGION)
    return Layout(geometry=geometry, regions=regions, image_size=(h, w), grid=grid)
