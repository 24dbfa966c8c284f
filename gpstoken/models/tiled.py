"""Exact tiled decoding of a merged multi-patch map, in bounded memory.

The patch-aware decoder (S64/M128 on images larger than one patch) needs statistics of the
whole map at every norm: per patch block and group for :class:`PatchGroupNorm` (resized to
every pixel by a bicubic interpolation over the block grid), over the whole map for
``norm_out``. :func:`decode_tiled` gets them exactly while computing only one tile at a time:

* the decoder runs stage by stage (:meth:`Decoder.stages`: one convolution, residual block,
  attention or upsample each); a stage's output map is stored whole, then read back by the
  next stage. A store lives in memory while the stores alive together fit ``cache_bytes``,
  otherwise in an (already unlinked) temporary file, patch block by patch block, so memory
  does not grow with the image;
* the map is cut into tiles of whole patches; a stage computes a tile inside a window that
  adds the context its convolutions need (:attr:`Stage.reach`), clipped to the map (so the
  convolutions' zero padding at the map edge is the untiled one);
* a stage with norms runs one pass over all tiles per norm: the pass stops at that norm and
  adds its float64 sums over the tile (the window's context is not counted); then the
  statistics are final and the next pass uses them; the last pass writes the output.

Memory: the stores that fit ``cache_bytes`` plus one tile window at a time. Compute: each
residual block's first convolution twice, everything else once, plus the windows' context.
"""
from __future__ import annotations

import functools
import tempfile
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .decoder import NUM_GROUPS, Decoder, Grid, Norms, PatchGroupNorm, Stage

__all__ = ["decode_tiled"]

Rect = tuple[int, int, int, int]  # y0, y1, x0, x1 (pixels of the stage's input map, end exclusive)
#: stage outputs kept in memory as long as the stores alive together take at most this many bytes
CACHE_BYTES = 512 * 2**20
_SUM_CHUNK = 2**22  # elements per float64 chunk when summing a tile's statistics


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
        x = x.view(b, NUM_GROUPS, c // NUM_GROUPS, r1 - r0, h // (r1 - r0), c1 - c0, w // (c1 - c0))
        groups = max(1, _SUM_CHUNK // max(1, x[:, :1].numel()))  # float64 copies of a few groups at a time
        parts = [(xd.sum(dim=(2, 4, 6)), xd.square().sum(dim=(2, 4, 6)))
                 for xd in (chunk.double() for chunk in x.split(groups, dim=1))]
        s1, s2 = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
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
    """The norms of one pass of one stage over one tile window (see the module doc)."""

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

    def norm(self, layer: PatchGroupNorm, x: torch.Tensor, swish: bool) -> torch.Tensor:
        """x: float [B,C,h,w], the window (norms run at their stage's input resolution)."""
        run, index = self.run, self.index
        self.index += 1
        whole, self.whole_map = self.whole_map, False
        (y0, _, x0, _), (ty0, ty1, tx0, tx1) = self.window, self.tile
        if index == len(run.stats):  # the norm this pass measures
            if run.collecting is None:
                run.collecting = _Stats(x.shape[0], run.grid, whole, x.device)
            ph, pw = run.patch
            run.collecting.add(x[:, :, ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0],
                               (ty0 // ph, ty1 // ph, tx0 // pw, tx1 // pw))
            raise _Collected
        mean, std = run.stats[index]
        b, c, h, w = x.shape
        g = NUM_GROUPS
        if whole:
            mean_f, std_f = mean[..., None], std[..., None]  # [B,G,1,1,1]
        else:
            k, m = run.grid
            wy = _interp_matrix(k, k * run.patch[0], x.device)[y0:y0 + h]
            wx = _interp_matrix(m, m * run.patch[1], x.device)[x0:x0 + w]
            stats = torch.matmul(torch.matmul(wy, torch.cat([mean, std], 1)), wx.T)  # [B,2G,h,w]
            mean_f, std_f = stats[:, :g, None], stats[:, g:, None]
        y = ((x.view(b, g, c // g, h, w) - mean_f) * (1.0 / (std_f + layer.eps))).view(b, c, h, w)
        y = torch.addcmul(layer.bias[:, None, None], y, layer.weight[:, None, None])
        return F.silu(y, inplace=True) if swish else y


class _Run:
    """State of one stage over all tiles: the statistics of its norms resolved so far."""

    def __init__(self, grid: Grid, patch: tuple[int, int]):
        self.grid, self.patch = grid, patch
        self.stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.collecting: Optional[_Stats] = None

    def passes(self, tiles: list[Rect], context: int, size: tuple[int, int],
               step: Callable[[_TileNorms, Rect, Rect], None], bar) -> None:
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


class _Store:
    """A stage's output map float [B,C,H,W], written by whole patches and read by windows.

    In memory (a channels-last tensor), or, when ``on_disk``, in an unlinked temporary file
    (``tempfile``'s folder: TMPDIR) as one channels-last block per patch, so only the windows
    read are in memory."""

    def __init__(self, shape: tuple[int, int, int, int], patch: tuple[int, int], dtype: torch.dtype,
                 device: torch.device, on_disk: bool, tensor: Optional[torch.Tensor] = None):
        b, c, hh, ww = shape
        self.shape, self.patch, self.dtype, self.device = shape, patch, dtype, device
        self.nbytes = b * c * hh * ww * dtype.itemsize
        self.file = tempfile.TemporaryFile() if on_disk else None
        if tensor is not None:
            self.map = tensor
        elif not on_disk:
            self.map = torch.empty(shape, dtype=dtype, device=device, memory_format=torch.channels_last)
        self.block_bytes = b * c * patch[0] * patch[1] * dtype.itemsize

    @classmethod
    def of(cls, tensor: torch.Tensor, patch: tuple[int, int]) -> "_Store":
        """Read-only store over an existing map (not counted against the cache)."""
        b, c, hh, ww = tensor.shape
        return cls((b, c, hh, ww), patch, tensor.dtype, tensor.device, False, tensor)

    def _blocks(self, rect: Rect) -> tuple[range, range]:
        (ph, pw), (y0, y1, x0, x1) = self.patch, rect
        return range(y0 // ph, -(-y1 // ph)), range(x0 // pw, -(-x1 // pw))

    def write(self, rect: Rect, x: torch.Tensor) -> None:
        """x: [B,C,y1-y0,x1-x0] for ``rect``, a rectangle of whole patches."""
        y0, y1, x0, x1 = rect
        if self.file is None:
            self.map[:, :, y0:y1, x0:x1] = x
            return
        (ph, pw), m = self.patch, self.shape[3] // self.patch[1]
        rows, cols = self._blocks(rect)
        nhwc = x.permute(0, 2, 3, 1)
        try:
            for r in rows:
                for c in cols:
                    ry, cx = (r - rows[0]) * ph, (c - cols[0]) * pw
                    block = nhwc[:, ry:ry + ph, cx:cx + pw]
                    self.file.seek((r * m + c) * self.block_bytes)
                    self.file.write(block.contiguous().cpu().view(torch.uint8).numpy().data)
        except OSError as e:
            raise OSError(f"decode: cannot write the temporary file of a tiled decode in {tempfile.gettempdir()} "
                          f"({e.strerror or e}; it needs about {self.nbytes / 2**30:.1f} GB for this map); free space "
                          "there or set TMPDIR to another folder") from e

    def read(self, window: Rect) -> torch.Tensor:
        """The map's pixels in ``window``: [B,C,y1-y0,x1-x0] (a view for in-memory stores)."""
        y0, y1, x0, x1 = window
        if self.file is None:
            return self.map[:, :, y0:y1, x0:x1]
        (ph, pw), (b, ch, _, ww) = self.patch, self.shape
        rows, cols = self._blocks(window)
        buf = torch.empty((b, y1 - y0, len(cols) * pw, ch), dtype=self.dtype)
        part = torch.empty((ph, pw, ch), dtype=self.dtype)
        row_bytes = pw * ch * self.dtype.itemsize
        for r in rows:
            a, z = max(y0 - r * ph, 0), min(y1 - r * ph, ph)  # the block rows inside the window
            raw = part[:z - a].view(torch.uint8).numpy()
            for j, c in enumerate(cols):
                for i in range(b):
                    self.file.seek((r * (ww // pw) + c) * self.block_bytes + (i * ph + a) * row_bytes)
                    if self.file.readinto(raw.data) != raw.nbytes:
                        raise OSError(f"decode: short read from the temporary file of a tiled decode "
                                      f"({self.file.name})")
                    buf[i, r * ph + a - y0:r * ph + z - y0, j * pw:(j + 1) * pw] = part[:z - a]
        out = buf[:, :, x0 - cols[0] * pw:x1 - cols[0] * pw]
        return out.permute(0, 3, 1, 2).to(self.device)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _run_stage(stage: Stage, src: _Store, grid: Grid, tiles: list[Rect], budget: Optional[int], bar) -> _Store:
    """One stage over all tiles (``tiles`` in patches): its output as a new store, in memory when
    ``budget`` (bytes; None: no limit) allows, else in a temporary file."""
    s, (ph, pw), (b, _, hh, ww) = stage.scale, src.patch, src.shape
    dst: Optional[_Store] = None

    def step(norms: _TileNorms, window: Rect, rect: Rect) -> None:
        nonlocal dst
        (y0, _, x0, _), (ty0, ty1, tx0, tx1) = window, rect
        y = stage.run(src.read(window), norms)[:, :, (ty0 - y0) * s:(ty1 - y0) * s, (tx0 - x0) * s:(tx1 - x0) * s]
        if dst is None:
            shape = (b, y.shape[1], hh * s, ww * s)
            on_disk = budget is not None and shape[0] * shape[1] * shape[2] * shape[3] * y.dtype.itemsize > budget
            dst = _Store(shape, (ph * s, pw * s), y.dtype, y.device, on_disk)
        dst.write((ty0 * s, ty1 * s, tx0 * s, tx1 * s), y)

    rects = [(r0 * ph, r1 * ph, c0 * pw, c1 * pw) for r0, r1, c0, c1 in tiles]
    _Run(grid, src.patch).passes(rects, stage.reach, (hh, ww), step, bar)
    if dst is None:
        raise RuntimeError("decode_tiled: a stage produced no output (no tiles)")
    return dst


def decode_tiled(decoder: Decoder, z: torch.Tensor, grid: Grid, tile: int = 1, progress: bool = False,
                 cache_bytes: int = CACHE_BYTES) -> torch.Tensor:
    """``decoder(z, grid)`` computed tile by tile, equal to it up to float rounding.

    z: float [B, z_channels, k*h0, m*w0] (a merged map of k x m patches of h0 x w0);
    tile: patches per tile side; cache_bytes: intermediate maps are kept in memory while the
    ones alive together fit this many bytes, larger ones go to a temporary file (0: all of
    them). Returns float [B, out_ch, k*h0*scale, m*w0*scale].
    """
    from tqdm.auto import tqdm

    hh, ww = z.shape[-2:]
    k, m = grid
    tiles = [(r, min(r + tile, k), c, min(c + tile, m)) for r in range(0, k, tile) for c in range(0, m, tile)]
    stages = decoder.stages()
    bar = tqdm(total=sum(st.norms + 1 for st in stages) * len(tiles), desc="decode", unit="tile",
               disable=not progress, dynamic_ncols=True, leave=False)
    src = _Store.of(z, (hh // k, ww // m))
    with bar:
        try:
            for i, stage in enumerate(stages):
                in_memory = 0 if src.file is not None or i == 0 else src.nbytes  # z is not ours: not counted
                budget = None if i == len(stages) - 1 else cache_bytes - in_memory  # the result stays in memory
                dst = _run_stage(stage, src, grid, tiles, budget, bar)
                src.close()
                src = dst
        except BaseException:
            src.close()  # its temporary file's space is freed now, not when the traceback goes
            raise
    return src.map.contiguous()
