"""Splatting render of GPS tokens into a feature map (algorithms.md section 2).

``render(geometry [B,N,5], features [B,N,C], size=(h,w), support=3.0) -> float [B,C,h,w]``

Pixel (i, j) of an h x w map sits at ``x = 2j/(w-1) - 1``, ``y = 2i/(h-1) - 1``. A token
contributes ``v * f`` where ``v`` is the unnormalised Gaussian value, and only where
``|dx| <= support*sigma_x`` and ``|dy| <= support*sigma_y``.
"""
from __future__ import annotations

import torch


def pixel_coords(n: int, device=None) -> torch.Tensor:
    """Normalised centres of ``n`` pixels along one axis, float32 (computed in float64)."""
    return (torch.arange(n, dtype=torch.float64, device=device) * 2.0 / (n - 1) - 1.0).float()


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


def render(
    geometry: torch.Tensor, features: torch.Tensor, size: tuple[int, int], *, support: float = 3.0
) -> torch.Tensor:
    """Splat Gaussians into a feature map, with autograd.

    geometry: float [B,N,5] (sigma_x, sigma_y, rho, mu_x, mu_y); features: float [B,N,C];
    size: (h, w) of the output. Returns float [B,C,h,w].
    """
    return render_dense(geometry, features, size, support)
