"""Triton forward splatting kernel (docs/algorithms.md section 2).

One program renders a ``BLOCK_H x BLOCK_W`` tile of pixels for one batch item and one block
of ``BLOCK_C`` channels. It loops over the item's N tokens; a token whose cut-off box misses
the tile is skipped with one scalar test, otherwise its Gaussian is evaluated on the tile and
accumulated. Every output element is written exactly once, so the result is deterministic.

Torch twin: ``gpstoken.kernels._torch_impl.CulledRender.forward`` (same formula, same box test).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def load_gaussian(geo_ptr, tok, support):
    """Token ``tok`` of ``geo [B*N,5]``: ``(sigma_x, sigma_y, rho, mu_x, mu_y)`` and its cut-off
    half-widths ``support * sigma`` (shared by the forward and the backward kernel)."""
    g = geo_ptr + tok * 5
    sx = tl.load(g)
    sy = tl.load(g + 1)
    return sx, sy, tl.load(g + 2), tl.load(g + 3), tl.load(g + 4), support * sx, support * sy


@triton.jit
def splat_forward_kernel(
    geo_ptr, feat_ptr, xs_ptr, ys_ptr, out_ptr,
    N, C, H, W, support,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """geo [B,N,5], feat [B,N,C], xs [W], ys [H] float32 contiguous -> out [B,C,H,W] float32.

    Grid: (cdiv(H,BLOCK_H)*cdiv(W,BLOCK_W), B, cdiv(C,BLOCK_C)).
    """
    pid_tile = tl.program_id(0)
    b = tl.program_id(1)
    pid_c = tl.program_id(2)
    tiles_w = tl.cdiv(W, BLOCK_W)
    row0 = (pid_tile // tiles_w) * BLOCK_H
    col0 = (pid_tile % tiles_w) * BLOCK_W
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    rows = row0 + p // BLOCK_W
    cols = col0 + p % BLOCK_W
    rmask = rows < H
    cmask_px = cols < W
    ys = tl.load(ys_ptr + rows, mask=rmask, other=0.0)
    xs = tl.load(xs_ptr + cols, mask=cmask_px, other=0.0)
    # Coordinates increase with the index, so the tile spans [lo, hi] along each axis.
    y_lo = tl.load(ys_ptr + row0)
    y_hi = tl.load(ys_ptr + tl.minimum(row0 + BLOCK_H, H) - 1)
    x_lo = tl.load(xs_ptr + col0)
    x_hi = tl.load(xs_ptr + tl.minimum(col0 + BLOCK_W, W) - 1)
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    chmask = ch < C
    acc = tl.zeros((BLOCK_H * BLOCK_W, BLOCK_C), dtype=tl.float32)
    for n in range(0, N):
        tok = b * N + n
        sx, sy, rho, mx, my, hx, hy = load_gaussian(geo_ptr, tok, support)
        # Conservative and exact: fp32 rounding of (coord - mu) is monotone in coord.
        hit = (x_hi - mx >= -hx) & (x_lo - mx <= hx) & (y_hi - my >= -hy) & (y_lo - my <= hy)
        if hit:
            dx = xs - mx
            dy = ys - my
            inside = (tl.abs(dx) <= hx) & (tl.abs(dy) <= hy)
            u = dx / sx
            t = dy / sy
            a = 0.5 / (1.0 - rho * rho)
            v = tl.exp(-a * (u * u - 2.0 * rho * u * t + t * t))
            v = tl.where(inside, v, 0.0)
            f = tl.load(feat_ptr + tok * C + ch, mask=chmask, other=0.0)
            acc += v[:, None] * f[None, :]
    out_off = ((b * C + ch[None, :]) * H + rows[:, None]) * W + cols[:, None]
    tl.store(out_ptr + out_off, acc, mask=(rmask & cmask_px)[:, None] & chmask[None, :])


def launch_dims(features: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, block_c: int | None,
                who: str) -> tuple[int, int, int, int, int, int]:
    """``(B, N, C, H, W, block_c)`` of a splat launch (forward or backward): features [B,N,C],
    xs [W], ys [H]; ``block_c`` None: the next power of two of C, at most 64. ValueError naming
    ``who`` when the tensors would need more than 32-bit indexing."""
    B, N, C = features.shape
    H, W = ys.numel(), xs.numel()
    if B * C * H * W >= 2**31 or B * N * max(C, 5) >= 2**31:
        raise ValueError(f"{who}: tensors too large for 32-bit indexing; split the batch")
    if block_c is None:
        block_c = min(triton.next_power_of_2(C), 64)
    return B, N, C, H, W, block_c


def splat_forward(
    geometry: torch.Tensor, features: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, support: float,
    *, block_h: int = 16, block_w: int = 16, block_c: int | None = None,
) -> torch.Tensor:
    """Launch :func:`splat_forward_kernel`.

    geometry float32 [B,N,5], features float32 [B,N,C], xs float32 [w], ys float32 [h] (pixel
    centres, increasing), all contiguous on one device; support > 0. Returns float32 [B,C,h,w].
    Block sizes must be powers of two.
    """
    B, N, C, H, W, block_c = launch_dims(features, xs, ys, block_c, "splat_forward")
    out = torch.empty((B, C, H, W), dtype=torch.float32, device=features.device)
    grid = (triton.cdiv(H, block_h) * triton.cdiv(W, block_w), B, triton.cdiv(C, block_c))
    splat_forward_kernel[grid](
        geometry, features, xs, ys, out, N, C, H, W, float(support),
        BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c,
    )
    return out


def aot_specs() -> list[tuple[object, dict[str, str], dict[str, int]]]:
    """(kernel, signature, constexprs) triples compiled ahead of time by the tests."""
    sig = {
        "geo_ptr": "*fp32", "feat_ptr": "*fp32", "xs_ptr": "*fp32", "ys_ptr": "*fp32", "out_ptr": "*fp32",
        "N": "i32", "C": "i32", "H": "i32", "W": "i32", "support": "fp32",
        "BLOCK_H": "constexpr", "BLOCK_W": "constexpr", "BLOCK_C": "constexpr",
    }
    return [
        (splat_forward_kernel, sig, {"BLOCK_H": 16, "BLOCK_W": 16, "BLOCK_C": 16}),
        (splat_forward_kernel, sig, {"BLOCK_H": 8, "BLOCK_W": 32, "BLOCK_C": 32}),
    ]
