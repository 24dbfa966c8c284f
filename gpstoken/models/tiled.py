"""Exact tiled decoding of a merged multi-patch map, in bounded memory.

The patch-aware decoder (S64/M128 on images larger than one patch) needs statistics of the
whole map at every norm: per patch block and group for :class:`PatchGroupNorm` (resized to
every pixel by a bicubic interpolation over the block grid), over the whole map for
``norm_out``. :func:`decode_tiled` gets them exactly without ever holding a full-resolution
activation:

* the map is cut into tiles of whole patches; each tile is computed inside a window that adds
  the context its convolutions need (:meth:`Decoder.context`), clipped to the map (so the
  convolutions' zero padding at the map edge is the untiled one);
* norms are resolved in order, one pass over all tiles per norm: a pass runs every tile up to
  that norm and accumulates its float64 sums over the tile (the window's context is not
  counted), then the statistics are final and the next pass uses them;
* the decoder runs in two parts (:meth:`Decoder.head`, then per patch :meth:`Decoder.attend`,
  whose result is kept for the whole map at the input resolution; then :meth:`Decoder.tail`),
  so passes recompute at most one part.

Memory: the input-resolution map after the attention plus one tile window at a time. Compute:
about (number of norms)/2 times the untiled decoder, plus the windows' context.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .decoder import NUM_GROUPS, Decoder, Grid, Norms, PatchGroupNorm

__all__ = ["decode_tiled"]

Rect = tuple[int, int, int, int]  # y0, y1, x0, x1 (input-resolution pixels, end exclusive)


class _Collected(Exception):
    """Raised by the norm a pass is measuring, once the tile's sums are added."""


@functools.lru_cache(maxsize=32)
def _interp_matrix(blocks: int, size: int, device: torch.device) -> torch.Tensor:
    """float32 [size, blocks]: the bicubic (align_corners False) resize of ``blocks`` values to
    ``size`` as a matrix, the exact weights of ``F.interpolate`` (columns: unit impulses)."""
    eye = torch.eye(blocks, device=device).view(1, blocks, blocks, 1)
    return F.interpolate(eye, size=(size, 1), mode="bicubic", align_corners=False)[0, :, :, 0].T.contiguous()


class _Stats:
    """float64 sums of one norm's input, per (image, group, patch row, patch column)."""

    def __init__(self, batch: int, grid: Grid, whole: bool, device: torch.device):
        shape = (batch, NUM_GROUPS, 1, 1) if whole else (batch, NUM_GROUPS, *grid)
        self.whole = whole
        self.s1 = torch.zeros(shape, dtype=torch.float64, device=device)
        self.s2 = torch.zeros_like(self.s1)
        self.count = torch.zeros(shape[2:], dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, patches: Rect) -> None:
        """x: float [B,C,h,w] covering exactly the patch rows/columns ``patches``."""
        r0, r1, c0, c1 = patches
        b, c, h, w = x.shape
        x = x.double().view(b, NUM_GROUPS, c // NUM_GROUPS, r1 - r0, h // (r1 - r0), c1 - c0, w // (c1 - c0))
        s1, s2 = x.sum(dim=(2, 4, 6)), x.square().sum(dim=(2, 4, 6))
        n = x.shape[2] * x.shape[4] * x.shape[6]
        if self.whole:
            self.s1 += s1.sum(dim=(2, 3), keepdim=True)
            self.s2 += s2.sum(dim=(2, 3), keepdim=True)
            self.count += n * (r1 - r0) * (c1 - c0)
        else:
            self.s1[:, :, r0:r1, c0:c1] += s1
            self.s2[:, :, r0:r1, c0:c1] += s2
            self.count[r0:r1, c0:c1] += n

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Biased mean and std, float32 [B,G,k,m] (or [B,G,1,1] for the whole map)."""
        mean = self.s1 / self.count
        var = (self.s2 / self.count - mean.square()).clamp_(min=0)
        return mean.float(), var.sqrt().float()


class _TileNorms(Norms):
    """The norms of one pass over one tile window (see the module doc)."""

    def __init__(self, run: "_Run", window: Rect, tile: Rect):
        self.run, self.window, self.tile = run, window, tile
        self.index = 0
        self.whole_map = False

    def whole(self) -> "_TileNorms":
        self.whole_map = True
        return self

    def attention_grid(self, x: torch.Tensor) -> Grid:
        (y0, y1, x0, x1), (ph, pw) = self.window, self.run.patch
        return (y1 - y0) // ph, (x1 - x0) // pw

    def _rows_cols(self, x: torch.Tensor) -> tuple[int, slice, slice]:
        y0, y1, x0, x1 = self.window
        s = x.shape[-2] // (y1 - y0)
        ty0, ty1, tx0, tx1 = self.tile
        return s, slice((ty0 - y0) * s, (ty1 - y0) * s), slice((tx0 - x0) * s, (tx1 - x0) * s)

    def norm(self, layer: PatchGroupNorm, x: torch.Tensor, swish: bool) -> torch.Tensor:
        run, index = self.run, self.index
        self.index += 1
        whole, self.whole_map = self.whole_map, False
        s, rows, cols = self._rows_cols(x)
        if index == len(run.stats):  # the norm this pass measures
            if run.collecting is None:
                run.collecting = _Stats(x.shape[0], run.grid, whole, x.device)
            ph, pw = run.patch
            run.collecting.add(x[:, :, rows, cols], (self.tile[0] // ph, self.tile[1] // ph,
                                                     self.tile[2] // pw, self.tile[3] // pw))
            raise _Collected
        mean, std = run.stats[index]
        b, c, h, w = x.shape
        g = NUM_GROUPS
        if whole:
            mean_f, std_f = mean[..., None], std[..., None]  # [B,G,1,1,1]
        else:
            y0, x0 = self.window[0] * s, self.window[2] * s
            k, m = run.grid
            wy = _interp_matrix(k, k * run.patch[0] * s, x.device)[y0:y0 + h]
            wx = _interp_matrix(m, m * run.patch[1] * s, x.device)[x0:x0 + w]
            stats = torch.matmul(torch.matmul(wy, torch.cat([mean, std], 1)), wx.T)  # [B,2G,h,w]
            mean_f, std_f = stats[:, :g, None], stats[:, g:, None]
        y = ((x.view(b, g, c // g, h, w) - mean_f) * (1.0 / (std_f + layer.eps))).view(b, c, h, w)
        y = torch.addcmul(layer.bias[:, None, None], y, layer.weight[:, None, None])
        return F.silu(y, inplace=True) if swish else y


class _Run:
    """State of one part (head or tail) over all tiles: the statistics resolved so far."""

    def __init__(self, grid: Grid, patch: tuple[int, int]):
        self.grid, self.patch = grid, patch
        self.stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.collecting: Optional[_Stats] = None

    def passes(self, tiles: list[Rect], context: int, size: tuple[int, int], step, bar) -> None:
        """Resolve every norm, then call ``step(norms, window, tile)`` for the final outputs."""
        while True:
            self.collecting = None
            for tile in tiles:
                window = (max(tile[0] - context, 0), min(tile[1] + context, size[0]),
                          max(tile[2] - context, 0), min(tile[3] + context, size[1]))
                try:
                    step(_TileNorms(self, window, tile), window, tile)
                except _Collected:
                    pass
                bar.update(1)
            if self.collecting is None:
                return
            self.stats.append(self.collecting.mean_std())


def decode_tiled(decoder: Decoder, z: torch.Tensor, grid: Grid, tile: int = 1,
                 progress: bool = False) -> torch.Tensor:
    """``decoder(z, grid)`` computed tile by tile, equal to it up to float rounding.

    z: float [B, z_channels, k*h0, m*w0] (a merged map of k x m patches of h0 x w0);
    tile: patches per tile side. Returns float [B, out_ch, k*h0*scale, m*w0*scale].
    """
    from tqdm.auto import tqdm

    b, _, hh, ww = z.shape
    k, m = grid
    ph, pw = hh // k, ww // m
    tiles = [(r * ph, min(r + tile, k) * ph, c * pw, min(c + tile, m) * pw)
             for r in range(0, k, tile) for c in range(0, m, tile)]
    n_norms = sum(isinstance(mod, PatchGroupNorm) for mod in decoder.modules())
    bar = tqdm(total=(n_norms + 2) * len(tiles), desc="decode", unit="tile", disable=not progress,
               dynamic_ncols=True, leave=False)
    mid: Optional[torch.Tensor] = None
    s = decoder.scale
    out: Optional[torch.Tensor] = None

    def head(norms: _TileNorms, window: Rect, tile_: Rect) -> None:
        nonlocal mid
        (y0, y1, x0, x1), (ty0, ty1, tx0, tx1) = window, tile_
        h = decoder.head(z[:, :, y0:y1, x0:x1], norms)
        h = h[:, :, ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0]
        norms.window = tile_
        h = decoder.attend(h, norms)
        if mid is None:
            mid = h.new_empty((b, h.shape[1], hh, ww))
        mid[:, :, ty0:ty1, tx0:tx1] = h

    def tail(norms: _TileNorms, window: Rect, tile_: Rect) -> None:
        nonlocal out
        (y0, y1, x0, x1), (ty0, ty1, tx0, tx1) = window, tile_
        h = decoder.tail(mid[:, :, y0:y1, x0:x1], norms)
        h = h[:, :, (ty0 - y0) * s:(ty1 - y0) * s, (tx0 - x0) * s:(tx1 - x0) * s]
        if out is None:
            out = h.new_empty((b, h.shape[1], hh * s, ww * s))
        out[:, :, ty0 * s:ty1 * s, tx0 * s:tx1 * s] = h

    with bar:
        _Run(grid, (ph, pw)).passes(tiles, decoder.context("head"), (hh, ww), head, bar)
        _Run(grid, (ph, pw)).passes(tiles, decoder.context("tail"), (hh, ww), tail, bar)
    return out
