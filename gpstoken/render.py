"""Splatting render of GPS tokens into a feature map (docs/algorithms.md section 2).

``render(geometry [B,N,5], features [B,N,C], size=(h,w), support=3.0) -> [B,C,h,w]``

Pixel (i, j) of an h x w map sits at ``x = 2j/(w-1) - 1``, ``y = 2i/(h-1) - 1``. A token
contributes ``v * f`` where ``v`` is the unnormalised Gaussian value, and only where
``|dx| <= support*sigma_x`` and ``|dy| <= support*sigma_y``.

Three implementations of the same formula:

* ``render_dense``: the reference, O(B*N*h*w) memory; every other path is tested against it.
* culled torch path (``backend="torch"``, :class:`gpstoken.kernels._torch_impl.CulledRender`,
  the twin of the kernels): only the (token, pixel) pairs inside each token's cut-off box are
  evaluated; memory and time are proportional to the covered pixels.
* Triton kernels (``backend="triton"``, ``gpstoken/kernels/splat_*.py``): a pixel-tiled
  forward and a per-token backward, both deterministic.
"""
from __future__ import annotations

import os

import torch

from . import validate
from .geometry import pixel_coords
from .kernels import triton_available
from .kernels._torch_impl import CulledRender, device_pixel_coords
from .kernels._torch_impl import pixel_bounds as pixel_bounds  # public here (tests, users)

BACKENDS = ("auto", "torch", "triton", "dense")


def render_dense(
    geometry: torch.Tensor, features: torch.Tensor, size: tuple[int, int], support: float = 3.0
) -> torch.Tensor:
    """Reference O(B*N*h*w*C) dense render; the formula every other path is tested against.

    geometry: float [B,N,5] (sigma_x, sigma_y, rho, mu_x, mu_y); features: float [B,N,C].
    Returns float [B,C,h,w]. The cut-off box is treated as constant for gradients.
    """
    h, w = size
    sx, sy, rho, mx, my = geometry.unbind(-1)  # [B,N]
    xs = pixel_coords(w, geometry.device)
    ys = pixel_coords(h, geometry.device)
    dx = xs.view(1, 1, 1, w) - mx[..., None, None]  # [B,N,1,w]
    dy = ys.view(1, 1, h, 1) - my[..., None, None]  # [B,N,h,1]
    sx_, sy_, rho_ = sx[..., None, None], sy[..., None, None], rho[..., None, None]
    q = dx**2 / sx_**2 - 2 * rho_ * dx * dy / (sx_ * sy_) + dy**2 / sy_**2
    v = torch.exp(-q / (2 * (1 - rho_**2)))
    inside = (dx.abs() <= support * sx_) & (dy.abs() <= support * sy_)
    v = torch.where(inside.detach(), v, torch.zeros((), dtype=v.dtype, device=v.device))
    return torch.einsum("bnhw,bnc->bchw", v, features)


class _TritonRender(torch.autograd.Function):
    """Triton forward/backward kernels (float32, contiguous inputs)."""

    @staticmethod
    def forward(ctx, geometry: torch.Tensor, features: torch.Tensor, h: int, w: int, support: float):
        from .kernels.splat_forward import splat_forward

        dev = geometry.device
        xs, ys = device_pixel_coords(w, dev), device_pixel_coords(h, dev)
        # The interpreter runs one program at a time: use few, large tiles there.
        bh, bw = (16, 16) if dev.type == "cuda" else (min(64, _pow2(h)), min(64, _pow2(w)))
        out = splat_forward(geometry, features, xs, ys, support, block_h=bh, block_w=bw)
        ctx.save_for_backward(geometry, features, xs, ys)
        ctx.support = support
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        from .kernels.splat_backward import splat_backward

        geometry, features, xs, ys = ctx.saved_tensors
        block_p = 256 if geometry.is_cuda else 1024
        grad_geo, grad_feat = splat_backward(
            geometry, features, xs, ys, ctx.support, grad_out.float().contiguous(), block_p=block_p
        )
        return grad_geo, grad_feat, None, None, None


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


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
        return _TritonRender.apply(g32, f32, h, w, support).to(features.dtype)
    dtype = torch.float64 if wide else torch.float32
    g = geometry.to(dtype).contiguous()
    f = features.to(dtype).contiguous()
    if backend == "dense":
        out = render_dense(g, f, (h, w), support)
    else:
        out = CulledRender.apply(g, f, h, w, support)
    return out.to(features.dtype)
