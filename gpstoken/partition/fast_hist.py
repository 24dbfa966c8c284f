"""CPU fast gradient histogram: float32 estimate, exact recomputation near bin edges.

Equal to ``gradient_hist(resize(cells))`` bin for bin (:mod:`gpstoken.kernels.entropy_hist`,
:mod:`gpstoken.partition.resize`), several times faster on CPU: every pixel's bin is first
estimated in float32 with the resize and Sobel folded into two separable linear maps
(polyphase taps, all cells of a size at once); only pixels whose estimate lies within a proven
error margin of a bin edge (~0.1%) are recomputed with the exact official operations on their
3x3 neighbourhood (see the comment above ``MARGIN``).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from gpstoken.kernels.entropy_hist import HALF_BINS

from .resize import RESIZE, exact_resize_axis, lerp32, resize_coefficients

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
# for M >= 1. A pixel whose estimate is farther than ``MARGIN * max(M, 1)`` from every integer
# has a certain bin (measured error on photos: ~3e-5); the others (~0.1%) are recomputed with
# the exact float64 procedure (``_exact_inputs`` + ``_exact_from_inputs``) on their 3x3 neighbourhood.
# t = 0 is not an issue: t >= 0, so bin 0 has no lower edge to cross.
MARGIN = 6e-4
_T_SCALE = 512.0 / 11.0
_FAST_CHUNK = 256  # cells per float32 batch (per-call overheads dominate below ~128)


def _axis_matrices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Real-arithmetic ``(D @ U, S @ U)`` for one axis ``n -> 64`` (``64 x n`` float64 each)."""
    i0, i1, wt = (t.cpu().numpy() for t in resize_coefficients(n, "cpu"))
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

    Axes longer than 64 are first resized exactly (see ``fast_counts``) and then use the
    identity resize. ``last``: the pass that produces gx, gy carries the ``512/11`` scale.
    """
    d, s = _axis_matrices(min(n, RESIZE))
    scale = _T_SCALE if last else 1.0
    return _AxisOp(d, scale), _AxisOp(s, scale)


def _exact_inputs(blocks: torch.Tensor, cell: torch.Tensor, i: torch.Tensor,
                  j: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Source pixels and weights the official resize uses for the 3x3 neighbourhood of resized
    pixels ``(i, j)`` of cells ``cell``: ``a, b`` float32 ``[N,3,2,3]`` (row up/mid/down, its two
    source rows, column left/mid/right; ``a`` first and ``b`` second source column), column
    weights float64 ``[N,1,1,3]`` and row weights ``[N,3,1]``. Replicated borders: clamped."""
    _, h, w = blocks.shape
    c0, c1, ca = resize_coefficients(w, "cpu")
    r0, r1, rb = resize_coefficients(h, "cpu")
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
    rows, float32 fma each, as :func:`.resize.resize`), Sobel in float64 with the operation order of
    :func:`gpstoken.kernels.entropy_hist.gradient_hist_torch`, and its exact binning. Every
    step is elementwise IEEE arithmetic, so the result is bit-identical.
    """
    cols = lerp32(a, b, ca)  # column pass [N,3,2,3]
    r = lerp32(cols[:, :, 0], cols[:, :, 1], rb).double()  # row pass [N,3,3]
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


class Workspace:
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


def _fast_keys(xp: torch.Tensor, margin: float, ws: Workspace, keys: torch.Tensor) -> torch.Tensor:
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


def value_bound(v: torch.Tensor) -> float:
    """The ``M`` of the error bound: resized values are convex combinations of ``v``."""
    return max(1.0, float(v.abs().max())) if v.numel() else 1.0


def fast_counts(groups: list[torch.Tensor], margin: float, ws: Workspace | None = None) -> torch.Tensor:
    """CPU: ``int64 [sum K,256]`` upper-bin counts of groups of float32 cells ``[K,h,w]``.

    Equal to ``gradient_hist(resize(blocks))`` per group: float32 estimate of every pixel's
    bin (in chunks of ``_FAST_CHUNK`` cells), then one exact recomputation of all uncertain
    pixels and one histogram for all groups (fixed per-call costs paid once).
    ``margin = MARGIN * M`` with ``M`` from :func:`value_bound` of (a superset of) the cells.
    """
    ws = ws or Workspace()
    total = sum(g.shape[0] for g in groups)
    keys = torch.empty(total, RESIZE * RESIZE, dtype=torch.int32)
    pending, base = [], 0
    for blocks in groups:
        kk, h, w = blocks.shape
        x = blocks
        if w > RESIZE:  # long axes: the exact official resize pass first (few such cells)
            x = exact_resize_axis(x, 2)
        if h > RESIZE:
            x = exact_resize_axis(x, 1)
        xp = _pad_replicate(x)
        unsure = torch.cat([
            _fast_keys(xp[s:s + _FAST_CHUNK], margin, ws, keys[base + s:base + min(s + _FAST_CHUNK, kk)])
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
