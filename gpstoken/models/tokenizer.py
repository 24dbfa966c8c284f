"""GPSToken tokenizer: refinement-transformer encoder + splatting render + decoder.

:class:`GPSTokenizer` has exactly the official state-dict keys and shapes, so official
checkpoints load with ``strict=True`` and no renaming (docs/algorithms.md sections 3-5).

Differences from the official code, all output-preserving:

* ``encode`` does not overwrite ``regions`` in place (the official code converts them to
  pixel coordinates in place).
* :func:`merge_patch_tokens` is correct for any batch size. The official
  ``adjust_gpstoken`` assigns patch positions with ``repeat_interleave`` and mixes up patch
  offsets for batches of 2 or more images (image 0 gets patches (0,0), (0,0), (0,1), (0,1)
  for a 2x2 grid); for batch 1, the only case the official scripts run, both agree.
* Everything is batched: one stem pass for all patches, one vectorised RoIAlign for all
  boxes, the RoI terms of all transformer blocks in one pass (each block's bin weights
  applied before the 1x1 conv, equal up to float rounding), fused attention; the
  decoder runs channels-last (see :mod:`.decoder`).

The RoIAlign box convention of the official code is kept: a region's pixel box is
``(S-1)(r+1)/2`` for its inclusive first and *last* pixel, so with aligned=True the box
spans ``[first-0.5, last-0.5]`` (one pixel short, shifted by half a pixel). The official
checkpoints were trained with it.
"""
from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..geometry import GEOMETRY, PATCH, Grid, check_grid, join_patches, merge_patch_tokens
from ..render import splat
from .configs import TokenizerConfig
from .decoder import NUM_GROUPS, Decoder
from .roi_align import roi_align
from .tiled import decode_tiled

__all__ = ["GPSTokenizer", "merge_patch_tokens"]

STEM_TEMB_CHANNELS = 512  # size of the (unused) time-embedding projection in the stem blocks
N_HEADS = 8


class _StemBlock(nn.Module):
    """Residual block of the encoder stem (standard GroupNorm).

    ``temb_proj`` exists only for state-dict compatibility: the stem runs without a time
    embedding, so it is never applied.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(NUM_GROUPS, channels, eps=1e-6)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.temb_proj = nn.Linear(STEM_TEMB_CHANNELS, channels)
        self.norm2 = nn.GroupNorm(NUM_GROUPS, channels, eps=1e-6)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return x + h


def _stem(channels: int, stride: int) -> nn.Sequential:
    """Encoder stem: conv3x3 + two residual blocks. ``stride`` 1 is the official full-resolution
    stem; ``stride`` s > 1 first folds every s x s pixel block into channels (pixel unshuffle),
    so the stem runs at 1/s size (s*s times cheaper)."""
    if stride == 1:
        return nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), _StemBlock(channels), _StemBlock(channels))
    return nn.Sequential(nn.PixelUnshuffle(stride), nn.Conv2d(3 * stride * stride, channels, 3, padding=1),
                         _StemBlock(channels), _StemBlock(channels))


class _RefineBlock(nn.Module):
    """x += RoI term; x += MHA(LN(x)); x += MLP(LN(x)). Attention runs through SDPA."""

    def __init__(self, width: int, rois: int):
        super().__init__()
        self.roimlp = nn.Linear(rois * rois, 1)
        self.ln1 = nn.LayerNorm(width)
        self.attn1 = nn.MultiheadAttention(width, N_HEADS, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, roi_term: torch.Tensor) -> torch.Tensor:
        """x, roi_term: float [P,N,C] (roi_term = roimlp applied to this block's RoI features)."""
        p, n, c = x.shape
        x = x + roi_term
        qkv = F.linear(self.ln1(x), self.attn1.in_proj_weight, self.attn1.in_proj_bias)
        q, k, v = qkv.view(p, n, 3, N_HEADS, c // N_HEADS).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(p, n, c)
        x = x + self.attn1.out_proj(att)
        return x + self.mlp(self.ln2(x))


class GPSTokenizer(nn.Module):
    """GPSToken tokenizer with the official state-dict layout.

    Images are ``float [.,3,H,W]`` in [-1, 1]; a token is
    ``[sigma_x, sigma_y, rho, mu_x, mu_y, f_1..f_C]`` with C = ``config.gps_c``.
    """

    def __init__(self, config: TokenizerConfig):
        super().__init__()
        if config.decoder.z_channels != config.gps_c:
            raise ValueError(
                f"config: decoder.z_channels ({config.decoder.z_channels}) must equal gps_c ({config.gps_c})"
            )
        if config.gpsenc_c % N_HEADS:
            raise ValueError(f"config: gpsenc_c must be a multiple of {N_HEADS}, got {config.gpsenc_c}")
        self.config = config
        c = config.gpsenc_c
        self.decoder = Decoder(config.decoder)
        self.preprocess_img = _stem(config.stem_channels, config.stem_stride)
        self.roialign_layer = nn.Conv2d(config.stem_channels, c, 1)
        self.gps_embed = nn.Embedding(1, c)
        self.attnblocks = nn.ModuleList(_RefineBlock(c, config.rois) for _ in range(config.gpsenc_n))
        self.gps_embed_layer = nn.Sequential(nn.Linear(GEOMETRY, c), nn.GELU(), nn.Linear(c, c))
        geometry_head = nn.Linear(c, GEOMETRY)
        nn.init.zeros_(geometry_head.weight)
        nn.init.zeros_(geometry_head.bias)
        self.to_gps = nn.ModuleList([geometry_head, nn.Linear(c, config.gps_c)])

    # ------------------------------------------------------------------ encoder
    def _check_encode_inputs(self, images: torch.Tensor, g_init: torch.Tensor, regions: torch.Tensor) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, PATCH, PATCH):
            raise ValueError(f"images: expected [P,3,{PATCH},{PATCH}], got shape {tuple(images.shape)}")
        p = images.shape[0]
        if g_init.ndim != 3 or g_init.shape[0] != p or g_init.shape[2] != GEOMETRY:
            raise ValueError(f"g_init: expected [P={p},N,5], got shape {tuple(g_init.shape)}")
        n = g_init.shape[1]
        if tuple(regions.shape) != (p, n, 4):
            raise ValueError(f"regions: expected [P={p},N={n},4], got shape {tuple(regions.shape)}")

    def roi_features(self, images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Stem features pooled over every region.

        images: float [P,3,H,W]; regions: float [P,N,4] normalised ``[x0,y0,x1,y1]`` of the
        inclusive first/last pixels (not modified). Returns float [P,N,stem_channels,rois,rois].
        """
        p, n = regions.shape[:2]
        _, _, hh, ww = images.shape
        # the stem runs in its weights' memory format (NCHW as built; a loaded tokenizer picks it
        # per device and stem in gpstoken.models.memory_format)
        feat = self.preprocess_img(images.contiguous())
        size = regions.new_tensor([ww - 1, hh - 1, ww - 1, hh - 1])
        pixels = size * (regions.detach() + 1) / 2
        s = self.config.stem_stride
        if s != 1:  # pixel p of the image lies at (p - (s-1)/2) / s on the space-to-depth map
            pixels = (pixels - (s - 1) / 2) / s
        batch = torch.arange(p, device=regions.device, dtype=regions.dtype).repeat_interleave(n)
        boxes = torch.cat([batch[:, None], pixels.reshape(p * n, 4)], 1)
        r = self.config.rois
        return roi_align(feat, boxes, r).view(p, n, self.config.stem_channels, r, r)

    def roi_terms(self, pooled: torch.Tensor) -> torch.Tensor:
        """Every refinement block's RoI term: ``roimlp`` of block l over the r*r bins of
        ``roialign_layer`` (1x1 conv) of the pooled features.

        pooled: float [P,N,stem_channels,r,r] -> float [L,P,N,gpsenc_c] (L = gpsenc_n).
        Both maps are linear, so each block's bin weights are applied to the pooled features
        first and the 1x1 conv runs on L vectors per token instead of r*r: the official order
        (conv of every bin, ``roi_conds`` [P,N,gpsenc_c,r*r], then each ``roimlp``) up to float
        rounding, at a fraction of the multiply-adds and memory.
        """
        if not self.attnblocks:
            return pooled.new_zeros(0, *pooled.shape[:2], self.config.gpsenc_c)
        blocks = [cast(_RefineBlock, blk) for blk in self.attnblocks]
        w = torch.stack([blk.roimlp.weight[0] for blk in blocks])  # [L, r*r]
        b = torch.cat([blk.roimlp.bias for blk in blocks])  # [L]
        weighted = torch.einsum("pnks,ls->lpnk", pooled.flatten(3), w)  # [L,P,N,stem_channels]
        conv = self.roialign_layer.weight.view(self.config.gpsenc_c, self.config.stem_channels)
        conv_bias = cast(torch.Tensor, self.roialign_layer.bias)  # the 1x1 conv is built with a bias
        bias = w.sum(1)[:, None] * conv_bias + b[:, None]  # [L, gpsenc_c]
        return F.linear(weighted, conv) + bias[:, None, None, :]

    def embed(self, g_init: torch.Tensor, terms: torch.Tensor) -> torch.Tensor:
        """Run the refinement transformer.

        g_init: float [P,N,5]; terms: float [L,P,N,C] from :meth:`roi_terms`.
        Returns the token embeddings after the last block, float [P,N,C].
        """
        x = self.gps_embed.weight[0] + self.gps_embed_layer(g_init)
        for blk, term in zip(self.attnblocks, terms):
            x = blk(x, term)
        return x

    def refine(self, g_init: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """Heads + geometry update: float [P,N,5], [P,N,C_enc] -> tokens float [P,N,5+gps_c]."""
        delta = self.to_gps[0](embedding)
        feats = self.to_gps[1](embedding)
        sigma = torch.sigmoid(torch.logit(g_init[..., :2]) + delta[..., :2])
        rest = 2 * torch.sigmoid(torch.logit((g_init[..., 2:] + 1) / 2) + delta[..., 2:]) - 1
        return torch.cat([sigma, rest, feats], -1)

    def encode(self, images: torch.Tensor, g_init: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """Encode 256x256 patches into GPS tokens.

        images: float [P,3,256,256] in [-1,1]; g_init: float [P,N,5] initial geometry from
        the partition (sigma in (0,1), rho 0, mu in (-1,1)); regions: float [P,N,4] in [-1,1]
        (not modified). Returns tokens float [P,N,5+gps_c], each patch in its own frame.
        """
        self._check_encode_inputs(images, g_init, regions)
        terms = self.roi_terms(self.roi_features(images, regions))
        return self.refine(g_init, self.embed(g_init, terms))

    # ------------------------------------------------------------------ decoder
    def _check_tokens(self, tokens: torch.Tensor, grid: Grid) -> tuple[int, int]:
        k, m = check_grid(grid)
        d = GEOMETRY + self.config.gps_c
        if tokens.ndim != 3 or tokens.shape[2] != d or tokens.shape[0] % (k * m) or tokens.shape[0] == 0:
            raise ValueError(
                f"tokens: expected [B*{k}*{m},N,{d}] (B>=1) for grid {(k, m)}, got shape {tuple(tokens.shape)}"
            )
        return k, m

    def render(self, tokens: torch.Tensor, grid: Grid = (1, 1)) -> torch.Tensor:
        """Merge patch tokens (section 5) and splat them.

        tokens: float [B*k*m,N,5+gps_c] (patch frames, patches row-major per image).
        Returns the feature map float [B,gps_c,rs_h*k,rs_w*m] (rs = ``config.gps_rs``).
        """
        k, m = self._check_tokens(tokens, grid)
        merged = merge_patch_tokens(tokens, (k, m)) if (k, m) != (1, 1) else tokens
        size = (self.config.gps_rs[0] * k, self.config.gps_rs[1] * m)
        return splat(
            merged[..., :GEOMETRY], merged[..., GEOMETRY:], size=size, support=self.config.gps_dmax
        )

    def decode(self, tokens: torch.Tensor, grid: Grid = (1, 1), per_patch: bool = False,
               tile: Optional[int] = None, progress: bool = False) -> torch.Tensor:
        """Tokens -> images float [B,3,256k,256m] in about [-1,1].

        tokens: float [B*k*m,N,5+gps_c]. Default: merged render + patch-aware decoder (the
        official path of S64/M128). ``per_patch=True``: decode every patch alone and stitch
        (the official path of L256 at higher resolution). ``tile``: bound the memory by
        decoding ``tile x tile`` patches at a time (:func:`.tiled.decode_tiled` for the merged
        map: the same result up to float rounding, slower); None: all at once.
        """
        k, m = self._check_tokens(tokens, grid)
        if per_patch:
            if tile is None:
                patches = self.decoder(self.render(tokens, (1, 1)), (1, 1))
            else:
                chunks = tokens.split(tile * tile)
                patches = torch.cat([self.decoder(self.render(c, (1, 1)), (1, 1))
                                     for c in tqdm(chunks, desc="decode", unit="chunk", disable=not progress,
                                                   leave=False)])
            return join_patches(patches, (k, m)).contiguous()
        if tile is None or (k, m) == (1, 1):
            return self.decoder(self.render(tokens, (k, m)), (k, m))
        return decode_tiled(self.decoder, self.render(tokens, (k, m)), (k, m), tile, progress)

    def forward(
        self, images: torch.Tensor, g_init: torch.Tensor, regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode then decode 256 patches (grid (1,1)): returns (recon [P,3,256,256], tokens [P,N,5+C])."""
        tokens = self.encode(images, g_init, regions)
        return self.decode(tokens), tokens
