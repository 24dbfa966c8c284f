"""The dense reference render: the formula of docs/algorithms.md section 2, written out."""
from __future__ import annotations

import torch

from ..geometry import pixel_coords


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
