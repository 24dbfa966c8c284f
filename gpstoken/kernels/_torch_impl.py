"""Pure-torch twins of the Triton kernels in this package (gsplat's ``_torch_impl`` habit).

Each function or autograd op here computes what a kernel computes, with the same
arithmetic, and is what the kernel is tested against (``TRITON_INTERPRET=1`` on a CPU). They
are also the CPU paths. No triton import here: the twins work without it.

* :func:`gradient_hist_torch`: twin of ``entropy_hist._gradient_hist_kernel``;
* :class:`CulledRender`: twin of ``splat_forward`` / ``splat_backward`` (the culled render
  with its hand-written backward), with :func:`pixel_bounds` for the exact cut-off boxes.
"""
from __future__ import annotations

import functools
import warnings

import torch

from ..geometry import GEOMETRY, pixel_coords

HALF_BINS = 256  #: upper histogram bins that gradient magnitudes can reach (of 512)


def gradient_hist_torch(r: torch.Tensor) -> torch.Tensor:
    """Torch twin of the kernel: ``r`` float32 ``[K,64,64]`` -> int32 ``[K,256]`` counts."""
    k = r.shape[0]
    p = torch.nn.functional.pad(r.double()[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    d = p[:, :, 2:] - p[:, :, :-2]
    s = (p[:, :, :-2] + 2.0 * p[:, :, 1:-1]) + p[:, :, 2:]
    gx = 2.0 * d[:, 1:-1] + (d[:, 2:] + d[:, :-2])
    gy = s[:, 2:] - s[:, :-2]
    t = (gx * gx + gy * gy).sqrt_().mul_(512.0)
    q = torch.floor(t / 11.0)
    q -= (q * 11.0 > t).to(q.dtype)
    q += ((q + 1.0) * 11.0 <= t).to(q.dtype)
    q.clamp_(max=HALF_BINS - 1)
    q.masked_fill_(t > 2816.0, HALF_BINS)  # above 5.5: an overflow bin, dropped below
    qi = q.to(torch.int64) + torch.arange(k, device=r.device)[:, None, None] * (HALF_BINS + 1)
    counts = torch.bincount(qi.view(-1), minlength=k * (HALF_BINS + 1))
    return counts.view(k, HALF_BINS + 1)[:, :HALF_BINS].to(torch.int32)


@functools.lru_cache(maxsize=64)
def device_pixel_coords(n: int, device: torch.device) -> torch.Tensor:
    """Cached :func:`pixel_coords` (read-only use) to save small kernel launches per call.

    Built outside inference mode: a cached inference tensor would break later autograd use.
    """
    with torch.inference_mode(False):
        return pixel_coords(n, device)


def pixel_bounds(geometry: torch.Tensor, h: int, w: int, support: float) -> torch.Tensor:
    """Exact inclusive pixel ranges of each token's cut-off box.

    geometry: float [..., 5] (finite, sigma > 0); the test is evaluated in geometry's dtype
    exactly as ``render_dense`` does (``|x_j - mu_x| <= support * sigma_x``), on the
    O(h + w) pixel centres of each token. Because ``x_j - mu_x`` is monotone in j, the pixels
    passing the test form one interval per axis. Returns int64 [..., 4] =
    (row_first, row_last, col_first, col_last); empty (last = first - 1) when the box misses
    the map.
    """
    g = geometry.detach()
    sx, sy, _, mx, my = g.unbind(-1)

    def axis(mu: torch.Tensor, sigma: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = device_pixel_coords(n, g.device).to(g.dtype) - mu[..., None]  # [..., n]
        half = (support * sigma)[..., None]
        first = (d < -half).sum(-1)  # pixels left of (above) the box
        return first, first + (d.abs() <= half).sum(-1) - 1

    r0, r1 = axis(my, sy, h)
    c0, c1 = axis(mx, sx, w)
    return torch.stack((r0, r1, c0, c1), dim=-1)


def _cover_pairs(
    geometry: torch.Tensor, h: int, w: int, support: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat list of the (token, pixel) pairs inside the cut-off boxes, token-major, pixels
    row-major within a token.

    geometry [B,N,5]. Returns (tok [P] index into B*N, row [P], col [P], crow [B*N+1]) int64;
    the pairs of token k are ``crow[k]:crow[k+1]``.
    """
    bounds = pixel_bounds(geometry, h, w, support).reshape(-1, 4)
    r0, r1, c0, c1 = bounds.unbind(-1)
    nx = (c1 - c0 + 1).clamp_min(0)
    count = (r1 - r0 + 1).clamp_min(0) * nx
    crow = torch.zeros(count.numel() + 1, dtype=torch.long, device=geometry.device)
    torch.cumsum(count, 0, out=crow[1:])
    total = int(crow[-1])
    tok = torch.repeat_interleave(torch.arange(count.numel(), device=geometry.device), count, output_size=total)
    off = torch.arange(total, device=geometry.device) - crow[:-1].index_select(0, tok)
    nx_t = nx.index_select(0, tok)
    row = r0.index_select(0, tok) + torch.div(off, nx_t, rounding_mode="floor")
    col = c0.index_select(0, tok) + off % nx_t
    return tok, row, col, crow


def _pair_csr(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    """[B*N, n_cols] CSR matrix with one row per token (rows of the token-major pair list)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols, values, (crow.numel() - 1, n_cols))


class CulledRender(torch.autograd.Function):
    """Culled pure-torch render with a hand-written backward (twin of the Triton kernels).

    Work and memory are O(P*C) for P covered (token, pixel) pairs. Per-token sums over pairs
    use CSR products whose rows are tokens (pairs are token-major).
    """

    @staticmethod
    def forward(ctx, geometry: torch.Tensor, features: torch.Tensor, h: int, w: int, support: float):
        B, N, C = features.shape
        dev = geometry.device
        tok, row, col, crow = _cover_pairs(geometry, h, w, support)
        sx, sy, rho, mx, my = (x.contiguous() for x in geometry.reshape(B * N, GEOMETRY).unbind(-1))
        xs = device_pixel_coords(w, dev).to(geometry.dtype)
        ys = device_pixel_coords(h, dev).to(geometry.dtype)
        # Every pair passes the cut-off test (pixel_bounds is exact), so no mask is needed.
        u = (xs.index_select(0, col) - mx.index_select(0, tok)) / sx.index_select(0, tok)
        t = (ys.index_select(0, row) - my.index_select(0, tok)) / sy.index_select(0, tok)
        rho_t = rho.index_select(0, tok)
        q = u * u - 2.0 * rho_t * u * t + t * t
        v = torch.exp(q * (-0.5 / (1.0 - rho * rho)).index_select(0, tok))
        pix = torch.div(tok, N, rounding_mode="floor") * (h * w) + row * w + col
        feat = features.reshape(B * N, C)
        out = torch.zeros(B * h * w, C, dtype=features.dtype, device=dev)
        out.index_add_(0, pix, feat.index_select(0, tok) * v[:, None])
        ctx.save_for_backward(geometry, features, tok, pix, crow, v, u, t, q)
        ctx.size = (h, w)
        return out.view(B, h, w, C).permute(0, 3, 1, 2).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        geometry, features, tok, pix, crow, v, u, t, q = ctx.saved_tensors
        B, N, C = features.shape
        h, w = ctx.size
        live = v > 0  # zero u, t, q where v == 0 so 0 * inf cannot occur
        u = torch.where(live, u, 0.0)
        t = torch.where(live, t, 0.0)
        q = torch.where(live, q, 0.0)
        g = grad_out.permute(0, 2, 3, 1).reshape(B * h * w, C).to(features.dtype)  # channels-last
        feat = features.reshape(B * N, C)
        # grad_f[k] = sum_p v_p g[pix_p];  <g[pix_p], f[tok_p]> is a sampled product (SDDMM).
        grad_feat = _pair_csr(crow, pix, v, B * h * w) @ g
        dots = torch.sparse.sampled_addmm(_pair_csr(crow, pix, torch.zeros_like(v), B * h * w), feat, g.t(), beta=0.0)
        gv = v * dots.values()
        sx, sy, rho, _, _ = geometry.reshape(B * N, GEOMETRY).unbind(-1)
        rho_t = rho.contiguous().index_select(0, tok)
        # Per pair: e1 = u - rho t, e2 = t - rho u. Per token (a2 = 2a = 1/(1-rho^2)):
        # d_mu_x = a2/sx * sum(gv e1), d_sigma_x = a2/sx * sum(gv e1 u), likewise y with e2, t;
        # d_rho = a2 * (sum(gv u t) - rho a2 sum(gv q)).
        e1 = u - rho_t * t
        e2 = t - rho_t * u
        cols = torch.empty(v.numel(), 6, dtype=v.dtype, device=v.device)
        torch.mul(gv, e1, out=cols[:, 0])
        torch.mul(cols[:, 0], u, out=cols[:, 1])
        torch.mul(gv, e2, out=cols[:, 2])
        torch.mul(cols[:, 2], t, out=cols[:, 3])
        torch.mul(gv * u, t, out=cols[:, 4])
        torch.mul(gv, q, out=cols[:, 5])
        p_idx = torch.arange(v.numel(), device=v.device)
        sums = (_pair_csr(crow, p_idx, torch.ones_like(v), v.numel()) @ cols).unbind(-1)  # 6 x [B*N]
        a2 = 1.0 / (1.0 - rho * rho)
        ax, ay = a2 / sx, a2 / sy
        grad_geo = torch.stack(
            (ax * sums[1], ay * sums[3], a2 * (sums[4] - rho * a2 * sums[5]), ax * sums[0], ay * sums[2]), dim=-1
        )
        return grad_geo.view(B, N, GEOMETRY), grad_feat.view(B, N, C), None, None, None
