"""Triton backward splatting kernel (docs/algorithms.md section 2; the cut-off box is constant).

One program owns one token. It first finds the token's pixel box exactly (the pixels passing
``|x_j - mu_x| <= support*sigma_x`` form one interval because ``x_j - mu_x`` is monotone in j;
counting over the O(h + w) pixel centres gives its ends), then walks the box in chunks of
``BLOCK_P``, re-applying the cut-off test, and accumulates the gradients of its 5 geometry numbers
and C features. Each program writes only its own token's rows, so no atomics are needed and the
result is deterministic.

With ``u = dx/sx``, ``t = dy/sy``, ``a = 1/(2(1-rho^2))``, ``q = u^2 - 2 rho u t + t^2``,
``v = exp(-a q)`` and ``gv = v * <grad_out[pixel], f>``:
``d/dmu_x = 2a(u - rho t)/sx * gv``, ``d/dmu_y = 2a(t - rho u)/sy * gv``,
``d/dsigma_x = u * d/dmu_x``, ``d/dsigma_y = t * d/dmu_y``, ``d/drho = 2a(u t - 2 rho a q) * gv``,
``d/df = v * grad_out[pixel]``.

Torch twin: ``gpstoken.kernels._torch_impl.CulledRender.backward``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .splat_forward import launch_dims, load_gaussian


@triton.jit
def _box_span(coords_ptr, size, mu, half, BLOCK_P: tl.constexpr):
    """Box ends along one axis: (number of pixel centres before the box, number inside it)."""
    first = tl.zeros((), dtype=tl.int32)
    count = tl.zeros((), dtype=tl.int32)
    for k0 in range(0, size, BLOCK_P):
        k = k0 + tl.arange(0, BLOCK_P)
        d = tl.load(coords_ptr + k, mask=k < size, other=0.0) - mu
        first += tl.sum(((k < size) & (d < -half)).to(tl.int32), axis=0)
        count += tl.sum(((k < size) & (tl.abs(d) <= half)).to(tl.int32), axis=0)
    return first, count


@triton.jit
def splat_backward_kernel(
    geo_ptr, feat_ptr, xs_ptr, ys_ptr, gout_ptr, ggeo_ptr, gfeat_ptr,
    N, C, H, W, support,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """geo [B,N,5], feat [B,N,C], xs [W], ys [H], grad_out [B,C,H,W] -> grad_geo [B,N,5],
    grad_feat [B,N,C] (all float32 contiguous). Grid: (B*N,).
    """
    tok = tl.program_id(0)
    b = tok // N
    sx, sy, rho, mx, my, hx, hy = load_gaussian(geo_ptr, tok, support)
    a = 0.5 / (1.0 - rho * rho)
    c0, nx = _box_span(xs_ptr, W, mx, hx, BLOCK_P)
    r0, ny = _box_span(ys_ptr, H, my, hy, BLOCK_P)
    count = nx * ny
    nx_div = tl.maximum(nx, 1)
    acc_sx = tl.zeros((BLOCK_P,), dtype=tl.float32)
    acc_sy = tl.zeros((BLOCK_P,), dtype=tl.float32)
    acc_rho = tl.zeros((BLOCK_P,), dtype=tl.float32)
    acc_mx = tl.zeros((BLOCK_P,), dtype=tl.float32)
    acc_my = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for ch0 in range(0, C, BLOCK_C):
        ch = ch0 + tl.arange(0, BLOCK_C)
        chmask = ch < C
        f = tl.load(feat_ptr + tok * C + ch, mask=chmask, other=0.0)
        acc_f = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for p0 in range(0, count, BLOCK_P):
            idx = p0 + tl.arange(0, BLOCK_P)
            pmask = idx < count
            rows = r0 + idx // nx_div
            cols = c0 + idx % nx_div
            x = tl.load(xs_ptr + cols, mask=pmask, other=0.0)
            y = tl.load(ys_ptr + rows, mask=pmask, other=0.0)
            dx = x - mx
            dy = y - my
            inside = pmask & (tl.abs(dx) <= hx) & (tl.abs(dy) <= hy)
            u = dx / sx
            t = dy / sy
            q = u * u - 2.0 * rho * u * t + t * t
            v = tl.where(inside, tl.exp(-a * q), 0.0)
            # Where v == 0 the pixel contributes nothing; zero u, t, q so 0 * inf cannot occur.
            live = v > 0.0
            u = tl.where(live, u, 0.0)
            t = tl.where(live, t, 0.0)
            q = tl.where(live, q, 0.0)
            g_off = ((b * C + ch[None, :]) * H + rows[:, None]) * W + cols[:, None]
            g = tl.load(gout_ptr + g_off, mask=inside[:, None] & chmask[None, :], other=0.0)
            acc_f += tl.sum(v[:, None] * g, axis=0)
            gv = v * tl.sum(g * f[None, :], axis=1)
            dmx = 2.0 * a * (u - rho * t) / sx * gv
            dmy = 2.0 * a * (t - rho * u) / sy * gv
            acc_mx += dmx
            acc_my += dmy
            acc_sx += u * dmx
            acc_sy += t * dmy
            acc_rho += 2.0 * a * (u * t - 2.0 * rho * a * q) * gv
        tl.store(gfeat_ptr + tok * C + ch, acc_f, mask=chmask)
    tl.store(ggeo_ptr + tok * 5, tl.sum(acc_sx, axis=0))
    tl.store(ggeo_ptr + tok * 5 + 1, tl.sum(acc_sy, axis=0))
    tl.store(ggeo_ptr + tok * 5 + 2, tl.sum(acc_rho, axis=0))
    tl.store(ggeo_ptr + tok * 5 + 3, tl.sum(acc_mx, axis=0))
    tl.store(ggeo_ptr + tok * 5 + 4, tl.sum(acc_my, axis=0))


def splat_backward(
    geometry: torch.Tensor, features: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
    support: float, grad_out: torch.Tensor,
    *, block_p: int = 256, block_c: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch :func:`splat_backward_kernel`.

    geometry float32 [B,N,5], features float32 [B,N,C], xs float32 [w], ys float32 [h] (pixel
    centres, increasing), grad_out float32 [B,C,h,w], all contiguous on one device; support > 0.
    Returns (grad_geometry [B,N,5], grad_features [B,N,C]) float32. Block sizes must be powers of two.
    """
    B, N, C, H, W, block_c = launch_dims(features, xs, ys, block_c, "splat_backward")
    grad_geo = torch.empty((B, N, 5), dtype=torch.float32, device=features.device)
    grad_feat = torch.empty((B, N, C), dtype=torch.float32, device=features.device)
    splat_backward_kernel[(B * N,)](
        geometry, features, xs, ys, grad_out, grad_geo, grad_feat, N, C, H, W, float(support),
        BLOCK_P=block_p, BLOCK_C=block_c,
    )
    return grad_geo, grad_feat


def aot_specs() -> list[tuple[object, dict[str, str], dict[str, int]]]:
    """(kernel, signature, constexprs) triples compiled ahead of time by the tests."""
    sig = {
        "geo_ptr": "*fp32", "feat_ptr": "*fp32", "xs_ptr": "*fp32", "ys_ptr": "*fp32",
        "gout_ptr": "*fp32", "ggeo_ptr": "*fp32", "gfeat_ptr": "*fp32",
        "N": "i32", "C": "i32", "H": "i32", "W": "i32", "support": "fp32",
        "BLOCK_P": "constexpr", "BLOCK_C": "constexpr",
    }
    return [
        (splat_backward_kernel, sig, {"BLOCK_P": 256, "BLOCK_C": 16}),
        (splat_backward_kernel, sig, {"BLOCK_P": 128, "BLOCK_C": 32}),
    ]
