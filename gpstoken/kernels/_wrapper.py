"""Autograd ops over the Triton kernels of this package (gsplat's ``_wrapper`` habit).

:class:`TritonSplat` pairs ``splat_forward`` with ``splat_backward``; its torch twin is
:class:`gpstoken.kernels._torch_impl.CulledRender`. The kernel modules are imported on the
first call only, so this module loads without triton.
"""
from __future__ import annotations

import torch

from ._torch_impl import device_pixel_coords


class TritonSplat(torch.autograd.Function):
    """Triton forward/backward kernels (float32, contiguous inputs)."""

    @staticmethod
    def forward(ctx, geometry: torch.Tensor, features: torch.Tensor, h: int, w: int, support: float):
        from .splat_forward import splat_forward

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
        from .splat_backward import splat_backward

        geometry, features, xs, ys = ctx.saved_tensors
        block_p = 256 if geometry.is_cuda else 1024
        grad_geo, grad_feat = splat_backward(
            geometry, features, xs, ys, ctx.support, grad_out.float().contiguous(), block_p=block_p
        )
        return grad_geo, grad_feat, None, None, None


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())
