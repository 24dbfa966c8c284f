"""3x3 convolutions (stride 1, zero padding 1) as Winograd F(2x2, 3x3) for CPU inference.

For every 2x2 output tile ``Y`` and its 4x4 input tile ``d`` (per channel)::

    Y = A^T [ sum_cin (G g G^T) * (B^T d B) ] A

so the 16 elementwise products summed over input channels become 16 matrix products
``[tiles, Cin] @ [Cin, Cout]``: 2.25x fewer multiply-adds than the direct convolution. The
input and output transforms are additions only (memory-bound), so this pays off on CPU for
wide layers (>= 256 channels, where the decoder spends most of its time) and is used only
without autograd. Results equal ``F.conv2d`` up to float rounding (about 2e-6 relative).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Conv3x3", "winograd_weight", "winograd_conv3x3"]

MIN_CHANNELS = 256  # below this the transforms cost more than the saved multiply-adds
_TILE_ROWS = 16  # tile rows per chunk: keeps the transformed tiles in cache-sized blocks

_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight [Cout,Cin,3,3]`` -> ``G g G^T`` as float32 ``[16, Cin, Cout]`` (computed in float64)."""
    cout, cin = weight.shape[:2]
    u = torch.einsum("ak,oikl,bl->abio", _G, weight.detach().double().cpu(), _G)
    return u.reshape(16, cin, cout).float().contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x`` float32 ``[B,Cin,H,W]`` (H, W even), ``u`` from :func:`winograd_weight` ->
    ``[B,Cout,H,W]`` (channels-last memory), equal to ``F.conv2d(x, weight, bias, padding=1)``.

    Works through the tile rows in chunks (all images of the batch together), so the
    transformed tiles of a chunk stay cache-sized.
    """
    bsz, cin, h, w = x.shape
    cout = u.shape[2]
    th = max(1, min(_TILE_ROWS // bsz, h // 2))
    out = torch.empty(bsz, h, w, cout, dtype=x.dtype)
    ov = out.view(bsz, h // 2, 2, w // 2, 2, cout)
    xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # [B, H+2, W+2, Cin]
    rows = torch.empty(4, bsz, th, w + 2, cin, dtype=x.dtype)  # B^T d: the row transform
    tiles = torch.empty(4, 4, bsz, th, w // 2, cin, dtype=x.dtype)  # B^T d B
    prod = torch.empty(16, bsz * th * (w // 2), cout, dtype=x.dtype)
    half = torch.empty(2, 4, bsz, th, w // 2, cout, dtype=x.dtype)  # A^T M
    for i0 in range(0, h // 2, th):
        n = min(th, h // 2 - i0)
        _transform([xp[:, 2 * i0 + k:2 * i0 + k + 2 * n:2] for k in range(4)], rows[:, :, :n])
        for a in range(4):
            _transform([rows[a, :, :n, k:k + w:2] for k in range(4)], tiles[a, :, :, :n])
        m = torch.bmm(tiles.view(16, -1, cin), u, out=prod).view(4, 4, bsz, th, w // 2, cout)[:, :, :, :n]
        _inverse(m, half[:, :, :, :n])
        for p in range(2):
            _inverse(half[p, :, :, :n], ov[:, i0:i0 + n, p].movedim(3, 0))
    if bias is not None:
        out += bias
    return out.permute(0, 3, 1, 2)


def _transform(d: list[torch.Tensor], out: torch.Tensor) -> None:
    """``B^T`` along a list of 4 slices: ``(d0 - d2, d1 + d2, d2 - d1, d1 - d3)`` into ``out[0..3]``."""
    torch.sub(d[0], d[2], out=out[0])
    torch.add(d[1], d[2], out=out[1])
    torch.sub(d[2], d[1], out=out[2])
    torch.sub(d[1], d[3], out=out[3])


def _inverse(m: torch.Tensor, out: torch.Tensor) -> None:
    """``A^T`` along dim 0 of ``m [4,...]``: ``(m0 + m1 + m2, m1 - m2 - m3)`` into ``out[0..1]``."""
    torch.add(m[0], m[1], out=out[0]).add_(m[2])
    torch.sub(m[1], m[2], out=out[1]).sub_(m[3])


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(cin, cout, 3, padding=1)`` (same parameters and state-dict keys) that runs
    as Winograd F(2x2, 3x3) on CPU in float32 without autograd (and outside CPU autocast) for
    wide layers, else as ``F.conv2d``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, padding=1)
        self._winograd: tuple[tuple[int, int], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and min(self.in_channels, self.out_channels) >= MIN_CHANNELS
            and x.shape[-2] % 2 == 0
            and x.shape[-1] % 2 == 0
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
        ):
            return winograd_conv3x3(x, self._transformed_weight(), self.bias)
        return super().forward(x)

    def _transformed_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)
        if self._winograd is None or self._winograd[0] != key:
            self._winograd = (key, winograd_weight(self.weight))
        return self._winograd[1]
