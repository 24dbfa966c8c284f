"""GPSToken decoder (docs/algorithms.md section 4): rendered feature map -> image.

VAE-style decoder with the official ``decoder.*`` state-dict keys. Every norm in its
residual blocks is the *patch-aware GroupNorm* (:class:`PatchGroupNorm`); the final norm is
the same layer but always takes its statistics over the whole map (the official
``DecoderNP`` calls ``norm_out`` without ``_np``); the middle attention block attends within
each 256-pixel patch.

Speed: the norm statistics come from torch's group-norm kernel and the rest is folded into
one per-channel scale/shift (swish fused in place), attention runs through
``F.scaled_dot_product_attention``, the map's layout comes from
:func:`gpstoken.models.memory_format.decoder_memory_format` (channels-last at inference), and
the residual blocks' wide 3x3 convolutions run as Winograd F(2x2, 3x3) on CPU at inference
(:mod:`gpstoken.models.winograd`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..geometry import Grid, join_patches, split_patches
from .configs import DecoderConfig
from .memory_format import decoder_memory_format
from .winograd import Conv3x3

__all__ = ["PatchGroupNorm", "Decoder", "Norms", "Stage"]

NUM_GROUPS = 32


class Norms:
    """What the decoder's layers receive instead of a grid when decoding one tile of a larger
    map (:mod:`gpstoken.models.tiled`): every :class:`PatchGroupNorm` hands its input to
    :meth:`norm`, and the patch attention asks :meth:`attention_grid` how the tile splits."""

    def norm(self, layer: "PatchGroupNorm", x: torch.Tensor, swish: bool) -> torch.Tensor:
        raise NotImplementedError

    def whole(self) -> "Norms":
        """The variant for ``norm_out`` (statistics over the whole map)."""
        raise NotImplementedError

    def attention_grid(self, x: torch.Tensor) -> Grid:
        raise NotImplementedError


@dataclass(frozen=True)
class Stage:
    """One step of :meth:`Decoder.stages`: ``run(x, grid)`` maps float [B,C,H,W] to
    [B,C',H*scale,W*scale] (``grid``: a Grid or a :class:`Norms`); ``reach``: input pixels of
    context on each side an output pixel depends on (one per 3x3 convolution; 0 for the patch
    attention, which works within each patch: tiles are whole patches); ``norms``: the
    patch-aware norms it applies, in order."""

    run: Callable[[torch.Tensor, Any], torch.Tensor]
    reach: int
    norms: int = 0
    scale: int = 1


_VAR_FLOOR = 1e-30  # added to the variance inside the group norm kernel (see PatchGroupNorm)


class PatchGroupNorm(nn.Module):
    """Patch-aware GroupNorm of the official decoder (32 groups).

    ``y = (x - mean) / (std + eps) * weight + bias`` with the biased std and ``eps`` added to
    the std. Statistics are taken per group and per patch block of a ``grid=(k, m)`` split of
    the map. With more than one block, the ``k x m`` statistics grid is resized to the map
    size with bicubic interpolation (align_corners False) and every pixel uses its
    interpolated mean and std. With one block the (constant) statistics are used directly;
    the official bicubic resize of a 1x1 map deviates from that by ~1e-7 relative.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        if num_channels % NUM_GROUPS:
            raise ValueError(f"num_channels must be a multiple of {NUM_GROUPS}, got {num_channels}")
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor, grid: Grid | "Norms" = (1, 1), swish: bool = False) -> torch.Tensor:
        """x: float [B,C,H,W], H and W divisible by the grid. ``swish`` fuses a SiLU after it.

        ``grid`` may instead be a :class:`Norms` (tiled decoding), which then does the norm."""
        if not isinstance(grid, tuple):
            return grid.norm(self, x, swish)
        b, c, hh, ww = x.shape
        k, m = grid
        g = NUM_GROUPS
        if (k, m) == (1, 1):
            # torch's group norm kernel gives y = (x - mean) * rstd with rstd = 1 / std (it is
            # several times faster than var_mean); (x - mean) / (std + eps) = y / (1 + eps * rstd).
            # _VAR_FLOOR only keeps a constant group finite (0 * inf); it is far below any real var.
            # Under autograd the eps factor's rstd is taken as constant: its share of the gradient is
            # about eps / std (5e-16 measured in float64 on the default decoder), and a gradient into
            # rstd would switch torch to its composite group-norm backward (fitting 9% slower).
            y, _, rstd = torch.native_group_norm(x, None, None, b, c, hh * ww, g, _VAR_FLOOR)
            scale = self.weight / (1.0 + self.eps * rstd.detach()).repeat_interleave(c // g, 1)  # [B,C]
            y = y.mul_(scale[:, :, None, None].to(y.dtype)).add_(self.bias[:, None, None].to(y.dtype))
        else:
            blocks = x.view(b, g, c // g, k, hh // k, m, ww // m)
            var, mean = torch.var_mean(blocks, dim=(2, 4, 6), unbiased=False)  # [B,G,k,m]
            stats = torch.cat([mean, var.sqrt()], 1)
            stats = F.interpolate(stats, size=(hh, ww), mode="bicubic", align_corners=False)
            mean_f, inv_f = stats[:, :g, None], 1.0 / (stats[:, g:, None] + self.eps)  # [B,G,1,H,W]
            y = ((x.view(b, g, c // g, hh, ww) - mean_f) * inv_f).view(b, c, hh, ww)
            y = torch.addcmul(self.bias[:, None, None], y, self.weight[:, None, None])
        return F.silu(y, inplace=True) if swish else y


class ResnetBlock(nn.Module):
    """norm -> swish -> conv3x3 -> norm -> swish -> dropout -> conv3x3, plus (1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = PatchGroupNorm(in_channels)
        self.conv1 = Conv3x3(in_channels, out_channels)
        self.norm2 = PatchGroupNorm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = Conv3x3(out_channels, out_channels)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        h = self.conv1(self.norm1(x, grid, swish=True))
        h = self.conv2(self.dropout(self.norm2(h, grid, swish=True)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention (GroupNorm, 1x1 q/k/v/proj), within each patch."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(NUM_GROUPS, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, grid: Grid | Norms) -> torch.Tensor:
        """x: [B,C,k*h,m*w]; every (h, w) patch is normalised and attends on its own."""
        if not isinstance(grid, tuple):
            grid = grid.attention_grid(x)
        patches = split_patches(x, grid) if grid != (1, 1) else x
        n, c, h, w = patches.shape
        tokens = self.norm(patches).permute(0, 2, 3, 1).reshape(n, h * w, c)
        weight = torch.cat([self.q.weight, self.k.weight, self.v.weight]).view(3 * c, c)
        bias = torch.cat([cast(torch.Tensor, conv.bias) for conv in (self.q, self.k, self.v)])  # built with bias
        q, k, v = F.linear(tokens, weight, bias).chunk(3, dim=-1)
        att = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        out = F.linear(att, self.proj_out.weight.view(c, c), self.proj_out.bias)
        out = patches + out.view(n, h, w, c).permute(0, 3, 1, 2)
        return join_patches(out, grid) if grid != (1, 1) else out


class Upsample(nn.Module):
    """Nearest x2 upsampling then conv3x3 (zero padding 1), computed without upsampling.

    An upsampled pixel repeats its source, so for output row ``2i+a`` the three kernel rows
    fall on only two input rows: ``(i-1, i)`` with weights ``(w0, w1+w2)`` for ``a=0`` and
    ``(i, i+1)`` with ``(w0+w1, w2)`` for ``a=1`` (likewise for columns). Each of the four
    output phases is a 2x2 convolution of the zero-padded input: 16 taps per 2x2 output block
    instead of 36, the same result up to float summation order.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    @staticmethod
    def _fold(w: torch.Tensor, phase: int, dim: int) -> torch.Tensor:
        w0, w1, w2 = w.unbind(dim)
        pair = (w0, w1 + w2) if phase == 0 else (w0 + w1, w2)
        return torch.stack(pair, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        cl = torch.channels_last
        xp = F.pad(x, (1, 1, 1, 1))
        y = x.new_empty((b, h, 2, w, 2, self.conv.out_channels))  # NHWC with the phases interleaved
        for a in (0, 1):
            wa = self._fold(self.conv.weight, a, 2)
            for p in (0, 1):
                k = self._fold(wa, p, 3).contiguous(memory_format=cl)
                window = xp[:, :, a:a + h + 1, p:p + w + 1].contiguous(memory_format=cl)
                y[:, :, a, :, p] = F.conv2d(window, k, self.conv.bias).permute(0, 2, 3, 1)
        return y.view(b, 2 * h, 2 * w, -1).permute(0, 3, 1, 2)  # channels-last [B,C,2h,2w]


class _Mid(nn.Module):
    """The middle of the decoder (official keys ``mid.block_1``, ``mid.attn_1``, ``mid.block_2``):
    two residual blocks with the patch attention between them (absent with ``mid_attn=False``)."""

    def __init__(self, channels: int, dropout: float, attn: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if attn else None
        self.block_2 = ResnetBlock(channels, channels, dropout)


class _Level(nn.Module):
    """One up level (official keys ``up.i.block.j``, ``up.i.upsample``): residual blocks, then
    a x2 upsample except at level 0."""

    def __init__(self, c_in: int, c_out: int, blocks: int, dropout: float, upsample: bool):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, dropout) for i in range(blocks))
        self.upsample = Upsample(c_out) if upsample else None


class Decoder(nn.Module):
    """Feature map [B, z_channels, h, w] -> image [B, out_ch, h*s, w*s], s = 2^(L-1) * out_shuffle.

    ``grid=(k, m)`` tells the patch-aware norms and the mid attention how the map is split
    into 256-pixel patches (the input map is ``k*h0 x m*w0`` for per-patch size ``h0 x w0``).
    ``norm_out`` ignores the grid: whole-map statistics, as in the official ``DecoderNP``.
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        if cfg.attn_resolutions:
            raise ValueError(
                f"DecoderConfig.attn_resolutions: the GPSToken decoder has no attention in its "
                f"up levels; expected (), got {cfg.attn_resolutions}"
            )
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.dropout, cfg.mid_attn)
        levels = []
        for i_level in range(len(cfg.ch_mult)):
            c_in = cfg.ch * cfg.ch_mult[i_level + 1] if i_level + 1 < len(cfg.ch_mult) else block_in
            levels.append(_Level(c_in, cfg.ch * cfg.ch_mult[i_level], cfg.num_res_blocks + 1, cfg.dropout,
                                 upsample=i_level != 0))
        self.up = nn.ModuleList(levels)
        self.norm_out = PatchGroupNorm(cfg.ch * cfg.ch_mult[0])
        self.out_shuffle = cfg.out_shuffle
        self.conv_out = nn.Conv2d(cfg.ch * cfg.ch_mult[0], cfg.out_ch * cfg.out_shuffle**2, 3, padding=1)

    def forward(self, z: torch.Tensor, grid: Grid = (1, 1)) -> torch.Tensor:
        """z: float [B, z_channels, k*h0, m*w0] -> float [B, out_ch, k*h0*s, m*w0*s], s = 2^(L-1) * out_shuffle."""
        h = z.contiguous(memory_format=decoder_memory_format(z, self))
        for stage in self.stages():
            h = stage.run(h, grid)
        return h.contiguous()

    def stages(self) -> list[Stage]:
        """The decoder as a sequence of stages, each one module (tiled decoding,
        :mod:`gpstoken.models.tiled`, runs them one at a time over all tiles): ``conv_in``, the
        mid blocks and the patch attention, every up block and upsample, then ``norm_out`` +
        ``conv_out``."""
        out = [_stage(self.conv_in, _ignore_grid(self.conv_in)), _stage(self.mid.block_1)]
        if self.mid.attn_1 is not None:  # absent in the light variant (mid_attn=False)
            out.append(Stage(self.mid.attn_1, reach=0))
        out.append(_stage(self.mid.block_2))
        for level in reversed([cast(_Level, level) for level in self.up]):
            out += [_stage(block) for block in level.block]
            if level.upsample is not None:
                out.append(_stage(level.upsample, _ignore_grid(level.upsample), scale=2))
        out.append(Stage(self._out, reach=_reach(self.conv_out), scale=self.out_shuffle, norms=1))
        return out

    def _out(self, h: torch.Tensor, grid: Grid | Norms) -> torch.Tensor:
        # official DecoderNP: norm_out(h) without _np, i.e. one block over the whole map
        h = self.conv_out(self.norm_out(h, (1, 1) if isinstance(grid, tuple) else grid.whole(), swish=True))
        return F.pixel_shuffle(h, self.out_shuffle) if self.out_shuffle != 1 else h


def _stage(module: nn.Module, run: Optional[Callable[[torch.Tensor, Any], torch.Tensor]] = None,
           scale: int = 1) -> Stage:
    """A stage running ``module`` (called as ``module(x, grid)`` unless ``run`` is given)."""
    return Stage(run or module, reach=_reach(module), scale=scale,
                 norms=sum(isinstance(m, PatchGroupNorm) for m in module.modules()))


def _ignore_grid(module: nn.Module) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    """``module(x)`` as a stage's ``run(x, grid)`` (a layer that needs no patch grid)."""
    return lambda x, grid: module(x)


def _reach(module: nn.Module) -> int:
    """Pixels of context the convolutions in ``module`` add on each side, in sequence."""
    return sum((m.kernel_size[0] - 1) // 2 for m in module.modules() if isinstance(m, nn.Conv2d))
