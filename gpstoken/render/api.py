"""Public render (checked by :mod:`gpstoken.validate`) and :func:`splat` (unchecked, for models):
the dispatch between the culled torch path, the Triton kernels and the dense reference."""
from __future__ import annotations

import os

import torch

from .. import validate
from ..kernels import triton_available
from ..kernels._torch_impl import CulledRender
from ..kernels._wrapper import TritonSplat
from .dense import render_dense

BACKENDS = ("auto", "torch", "triton", "dense")


def render(
    geometry: torch.Tensor,
    features: torch.Tensor,
    size: tuple[int, int],
    *,
    support: float = 3.0,
    backend: str = "auto",
) -> torch.Tensor:
    """Splat Gaussians into a feature map, with autograd to sigma, rho, mu and the features.

    Args:
        geometry: float [B,N,5] = (sigma_x, sigma_y, rho, mu_x, mu_y) in normalised units
            (the map spans [-1, 1] from the first to the last pixel centre). Requires
            sigma > 0, |rho| < 1, all finite; centres may lie outside [-1, 1].
        features: float [B,N,C], finite.
        size: (h, w), each >= 2 (the pixel centres ``2i/(h-1) - 1`` need two pixels).
        support: cut-off factor s > 0; a token touches only pixels with |dx| <= s*sigma_x and
            |dy| <= s*sigma_y. ``math.inf`` disables the cut-off. The box is constant for
            gradients (as in the official kernel).
        backend: ``"auto"`` (Triton on CUDA, when installed, for float16/bfloat16/float32 inputs, the culled
            torch path otherwise), ``"torch"`` (culled), ``"triton"`` (needs CUDA tensors or
            ``TRITON_INTERPRET=1``) or ``"dense"`` (the reference ``render_dense``).

    Returns:
        [B,C,h,w] in ``features.dtype``. Arithmetic is float32, except float64 when either
        input is float64 on the torch/dense paths (the Triton path is always float32).
        float16/bfloat16 inputs are upcast to float32; only the result is rounded back.
        The culled and Triton paths are once-differentiable (no double backward).

    Raises:
        ValueError: wrong shapes, dtypes, devices, size, support or backend, or an invalid
            token; the message names the first bad token (b, n) and field. Values are checked
            by :func:`gpstoken.validate.render_inputs` with one fused reduction (one host
            sync), so no NaN is ever produced silently. Models call :func:`splat` instead.
    """
    h, w = validate.render_inputs(geometry, features, size, support)
    return splat(geometry, features, (h, w), support=float(support), backend=backend)


def splat(geometry: torch.Tensor, features: torch.Tensor, size: tuple[int, int], *, support: float = 3.0,
          backend: str = "auto") -> torch.Tensor:
    """:func:`render` without the value checks: for models, which trust their inputs.

    Same arguments and result as :func:`render`; invalid tokens (sigma <= 0, ``|rho| >= 1``,
    NaN) give NaN or garbage instead of an error. No host sync on the torch/Triton paths'
    entry, so it may run every training step.
    """
    if backend not in BACKENDS:
        raise ValueError(f"render: backend must be one of {BACKENDS}, got {backend!r}")
    h, w = size
    wide = torch.float64 in (geometry.dtype, features.dtype)
    if backend == "auto":
        backend = "triton" if geometry.is_cuda and not wide and triton_available() else "torch"
    if geometry.shape[0] * geometry.shape[1] == 0:
        backend = "dense"  # no tokens: the reference handles empty tensors (a zero map)
    if backend == "triton":
        if not triton_available():
            raise ValueError("render: backend='triton' needs Triton (pip install triton, Linux); use backend='torch'")
        if not geometry.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("render: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
        g32 = geometry.float().contiguous()
        f32 = features.float().contiguous()
        return TritonSplat.apply(g32, f32, h, w, support).to(features.dtype)
    dtype = torch.float64 if wide else torch.float32
    g = geometry.to(dtype).contiguous()
    f = features.to(dtype).contiguous()
    if backend == "dense":
        out = render_dense(g, f, (h, w), support)
    else:
        out = CulledRender.apply(g, f, h, w, support)
    return out.to(features.dtype)
