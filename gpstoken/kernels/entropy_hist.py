"""Gradient-magnitude histogram of resized cells (Triton); its torch twin is in :mod:`._torch_impl`.

Input: ``r`` float32 ``[K,64,64]``, each cell already resized to 64x64 (values in about
[0, 1]). Per cell: 3x3 Sobel derivatives with replicated borders, computed in float64 with
the official operation order (``gx = 2*D(mid) + (D(down) + D(up))`` with
``D = right - left``; ``gy = S(down) - S(up)`` with ``S = (left + 2*mid) + right``), the
magnitude ``sqrt(gx*gx + gy*gy)`` and its histogram with numpy semantics over 512 equal
bins of [-5.5, 5.5] (values above 5.5 dropped, last bin closed). Magnitudes are >= 0, so only
the upper 256 bins can be hit: the output is ``int32 [K,256]`` = bins 256..511.

Bin assignment is exact: with ``t = m * 512`` (exact in float64) the bin above 256 is the
largest ``q`` with ``11 * q <= t``, found from ``floor(t / 11)`` and corrected with exact
integer comparisons. This equals numpy's edge-corrected ``np.histogram`` binning.
"""
from __future__ import annotations

import torch

from . import triton_available
from ._torch_impl import HALF_BINS, gradient_hist_torch

if triton_available():
    import triton
    import triton.language as tl

    _jit = triton.jit
else:  # no Triton (macOS, Windows): the kernel is never launched, the torch twin runs

    def _jit(fn):
        return fn


SIZE = 64


@_jit
def _gradient_hist_kernel(r_ptr, out_ptr, SIZE_C: tl.constexpr, NBINS: tl.constexpr):
    cell = tl.program_id(0)
    rows = tl.arange(0, SIZE_C)[:, None]
    cols = tl.arange(0, SIZE_C)[None, :]
    base = r_ptr + cell * SIZE_C * SIZE_C
    up = tl.maximum(rows - 1, 0)
    down = tl.minimum(rows + 1, SIZE_C - 1)
    left = tl.maximum(cols - 1, 0)
    right = tl.minimum(cols + 1, SIZE_C - 1)
    # Row pass per neighbouring row (float64, exact for float32 inputs), then column pass.
    ul = tl.load(base + up * SIZE_C + left).to(tl.float64)
    uc = tl.load(base + up * SIZE_C + cols).to(tl.float64)
    ur = tl.load(base + up * SIZE_C + right).to(tl.float64)
    ml = tl.load(base + rows * SIZE_C + left).to(tl.float64)
    mr = tl.load(base + rows * SIZE_C + right).to(tl.float64)
    dl = tl.load(base + down * SIZE_C + left).to(tl.float64)
    dc = tl.load(base + down * SIZE_C + cols).to(tl.float64)
    dr = tl.load(base + down * SIZE_C + right).to(tl.float64)
    gx = 2.0 * (mr - ml) + ((dr - dl) + (ur - ul))
    gy = ((dl + 2.0 * dc) + dr) - ((ul + 2.0 * uc) + ur)
    m = tl.sqrt(gx * gx + gy * gy)  # float64 sqrt is correctly rounded
    t = m * 512.0
    q = tl.floor(t / 11.0)
    q = tl.where(q * 11.0 > t, q - 1.0, q)
    q = tl.where((q + 1.0) * 11.0 <= t, q + 1.0, q)
    q = tl.minimum(q, NBINS - 1.0)  # m == 5.5 lands in the closed last bin
    # Values above 5.5 go to an overflow bin that is not stored.
    qi = tl.where(t <= 2816.0, q.to(tl.int32), NBINS)
    hist = tl.histogram(tl.reshape(qi, [SIZE_C * SIZE_C]), 2 * NBINS)
    idx = tl.arange(0, 2 * NBINS)
    tl.store(out_ptr + cell * NBINS + idx, hist, mask=idx < NBINS)


def gradient_hist_triton(r: torch.Tensor) -> torch.Tensor:
    """Triton launch: ``r`` float32 ``[K,64,64]`` (contiguous) -> int32 ``[K,256]`` counts."""
    r = r.contiguous().float()
    out = torch.empty(r.shape[0], HALF_BINS, dtype=torch.int32, device=r.device)
    if r.shape[0]:
        _gradient_hist_kernel[(r.shape[0],)](r, out, SIZE_C=SIZE, NBINS=HALF_BINS)
    return out


def gradient_hist(r: torch.Tensor) -> torch.Tensor:
    """Dispatch: CUDA tensors -> Triton kernel (when Triton is installed), else the torch twin."""
    if r.is_cuda and triton_available():
        return gradient_hist_triton(r)
    return gradient_hist_torch(r)


def aot_specs() -> list[tuple[object, dict[str, str], dict[str, int]]]:
    """How to compile each ``@triton.jit`` function of this module ahead of time."""
    return [
        (
            _gradient_hist_kernel,
            {"r_ptr": "*fp32", "out_ptr": "*i32", "SIZE_C": "constexpr", "NBINS": "constexpr"},
            {"SIZE_C": SIZE, "NBINS": HALF_BINS},
        )
    ]
