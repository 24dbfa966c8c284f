"""Straightforward GPSToken tokenizer, written from algorithms.md sections 3-5.

Baseline for ``benchmarks/bench_tokenizer.py`` and a second implementation for tests:
per-image and per-box Python loops, dense render, ``nn.MultiheadAttention`` called as a
module, materialised attention matrices in the decoder, and the patch-aware norm always
through the bicubic resize of its statistics. Same state-dict keys as
:class:`gpstoken.models.tokenizer.GPSTokenizer`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpstoken.models.configs import TokenizerConfig
from gpstoken.render import render_dense


def roi_align_loop(feat: torch.Tensor, boxes: torch.Tensor, out: int) -> torch.Tensor:
    """RoIAlign (aligned, adaptive sampling) one box at a time. feat [C,H,W], boxes [R,4] -> [R,C,out,out]."""
    c, h, w = feat.shape
    results = []
    for x1, y1, x2, y2 in boxes.tolist():
        x0, y0 = x1 - 0.5, y1 - 0.5
        bw, bh = (x2 - 0.5 - x0) / out, (y2 - 0.5 - y0) / out
        gw, gh = max(math.ceil(bw), 0), max(math.ceil(bh), 0)
        if gw == 0 or gh == 0:
            results.append(feat.new_zeros(c, out, out))
            continue
        ys = torch.tensor([y0 + p * bh + (i + 0.5) * bh / gh for p in range(out) for i in range(gh)])
        xs = torch.tensor([x0 + p * bw + (i + 0.5) * bw / gw for p in range(out) for i in range(gw)])

        def corners(v: torch.Tensor, n: int):
            valid = (v >= -1) & (v <= n)
            v = v.clamp(min=0)
            lo = v.floor().long().clamp(max=n - 1)
            hi = (lo + 1).clamp(max=n - 1)
            frac = torch.where(lo >= n - 1, torch.zeros_like(v), v - lo)
            return lo, hi, (1 - frac) * valid, frac * valid

        ylo, yhi, wyl, wyh = corners(ys, h)
        xlo, xhi, wxl, wxh = corners(xs, w)
        val = (
            feat[:, ylo][:, :, xlo] * (wyl[:, None] * wxl[None])
            + feat[:, ylo][:, :, xhi] * (wyl[:, None] * wxh[None])
            + feat[:, yhi][:, :, xlo] * (wyh[:, None] * wxl[None])
            + feat[:, yhi][:, :, xhi] * (wyh[:, None] * wxh[None])
        )
        results.append(val.view(c, out, gh, out, gw).sum((2, 4)) / (gh * gw))
    return torch.stack(results)


class PatchNorm(nn.Module):
    """(x - mean)/(std + 1e-6) with per-patch group statistics resized bicubically."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, np_: tuple[int, int]) -> torch.Tensor:
        b, c, hh, ww = x.shape
        k, m = np_
        means = torch.zeros(b, 32, k, m)
        stds = torch.zeros(b, 32, k, m)
        for i in range(k):
            for j in range(m):
                patch = x[:, :, i * hh // k : (i + 1) * hh // k, j * ww // m : (j + 1) * ww // m]
                flat = patch.reshape(b, 32, -1)
                means[:, :, i, j] = flat.mean(-1)
                stds[:, :, i, j] = flat.std(-1, unbiased=False)
        mean = F.interpolate(means, size=(hh, ww), mode="bicubic", align_corners=False)
        std = F.interpolate(stds, size=(hh, ww), mode="bicubic", align_corners=False)
        mean = mean.repeat_interleave(c // 32, 1)
        std = std.repeat_interleave(c // 32, 1)
        return (x - mean) / (std + 1e-6) * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = PatchNorm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = PatchNorm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x, np_):
        h = self.conv1(F.silu(self.norm1(x, np_)))
        h = self.conv2(F.silu(self.norm2(h, np_)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = nn.GroupNorm(32, c, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x, np_):
        k, m = np_
        hh, ww = x.shape[2] // k, x.shape[3] // m
        rows = []
        for i in range(k):
            cols = []
            for j in range(m):
                p = x[:, :, i * hh : (i + 1) * hh, j * ww : (j + 1) * ww]
                h = self.norm(p)
                q, kk, v = self.q(h).flatten(2), self.k(h).flatten(2), self.v(h).flatten(2)
                a = torch.softmax(q.transpose(1, 2) @ kk / math.sqrt(q.shape[1]), -1)
                o = (v @ a.transpose(1, 2)).view_as(p)
                cols.append(p + self.proj_out(o))
            rows.append(torch.cat(cols, 3))
        return torch.cat(rows, 2)


class StemBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, c, eps=1e-6)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.temb_proj = nn.Linear(512, c)
        self.norm2 = nn.GroupNorm(32, c, eps=1e-6)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class Block(nn.Module):
    def __init__(self, c: int, rois: int):
        super().__init__()
        self.roimlp = nn.Linear(rois * rois, 1)
        self.ln1 = nn.LayerNorm(c)
        self.attn1 = nn.MultiheadAttention(c, 8, batch_first=True)
        self.ln2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x, cond):
        x = x + self.roimlp(cond).squeeze(-1)[None]
        h = self.ln1(x)
        x = x + self.attn1(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ReferenceTokenizer(nn.Module):
    """Same contract and state-dict keys as ``GPSTokenizer``; slow and simple."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.decoder
        dec = nn.Module()
        cin = d.ch * d.ch_mult[-1]
        dec.conv_in = nn.Conv2d(d.z_channels, cin, 3, padding=1)
        dec.mid = nn.Module()
        dec.mid.block_1, dec.mid.attn_1, dec.mid.block_2 = ResBlock(cin, cin), Attn(cin), ResBlock(cin, cin)
        ups = [None] * len(d.ch_mult)
        for lvl in reversed(range(len(d.ch_mult))):
            up = nn.Module()
            blocks = []
            for _ in range(d.num_res_blocks + 1):
                blocks.append(ResBlock(cin, d.ch * d.ch_mult[lvl]))
                cin = d.ch * d.ch_mult[lvl]
            up.block = nn.ModuleList(blocks)
            if lvl:
                up.upsample = nn.Module()
                up.upsample.conv = nn.Conv2d(cin, cin, 3, padding=1)
            ups[lvl] = up
        dec.up = nn.ModuleList(ups)
        dec.norm_out = PatchNorm(cin)
        dec.conv_out = nn.Conv2d(cin, d.out_ch, 3, padding=1)
        self.decoder = dec
        c = cfg.gpsenc_c
        self.preprocess_img = nn.Sequential(nn.Conv2d(3, 128, 3, padding=1), StemBlock(128), StemBlock(128))
        self.roialign_layer = nn.Conv2d(128, c, 1)
        self.gps_embed = nn.Embedding(1, c)
        self.attnblocks = nn.ModuleList(Block(c, cfg.rois) for _ in range(cfg.gpsenc_n))
        self.gps_embed_layer = nn.Sequential(nn.Linear(5, c), nn.GELU(), nn.Linear(c, c))
        self.to_gps = nn.ModuleList([nn.Linear(c, 5), nn.Linear(c, cfg.gps_c)])

    def encode(self, images, g_init, regions):
        out = []
        for img, g, r in zip(images, g_init, regions):
            feat = self.preprocess_img(img[None])[0]
            boxes = r.clone()
            boxes[:, 0::2] = (img.shape[2] - 1) * (boxes[:, 0::2] + 1) / 2
            boxes[:, 1::2] = (img.shape[1] - 1) * (boxes[:, 1::2] + 1) / 2
            cond = self.roialign_layer(roi_align_loop(feat, boxes, self.cfg.rois)).flatten(2)
            x = self.gps_embed.weight + self.gps_embed_layer(g)
            x = x[None]
            for blk in self.attnblocks:
                x = blk(x, cond)
            x = x[0]
            delta, feats = self.to_gps[0](x), self.to_gps[1](x)
            sig = torch.sigmoid(torch.logit(g[:, :2]) + delta[:, :2])
            rest = 2 * torch.sigmoid(torch.logit((g[:, 2:] + 1) / 2) + delta[:, 2:]) - 1
            out.append(torch.cat([sig, rest, feats], -1))
        return torch.stack(out)

    def merge(self, tokens, grid):
        k, m = grid
        images = []
        for b in range(tokens.shape[0] // (k * m)):
            parts = []
            for i in range(k):
                for j in range(m):
                    t = tokens[b * k * m + i * m + j].clone()
                    t[:, 0] /= m
                    t[:, 1] /= k
                    t[:, 3] = -1 + (2 * j + t[:, 3] + 1) / m
                    t[:, 4] = -1 + (2 * i + t[:, 4] + 1) / k
                    parts.append(t)
            images.append(torch.cat(parts))
        return torch.stack(images)

    def render(self, tokens, grid=(1, 1)):
        merged = self.merge(tokens, grid)
        size = (self.cfg.gps_rs[0] * grid[0], self.cfg.gps_rs[1] * grid[1])
        return render_dense(merged[..., :5], merged[..., 5:], size, self.cfg.gps_dmax)

    def decode(self, tokens, grid=(1, 1)):
        d = self.decoder
        h = d.conv_in(self.render(tokens, grid))
        h = d.mid.block_2(d.mid.attn_1(d.mid.block_1(h, grid), grid), grid)
        for lvl in reversed(range(len(d.up))):
            for blk in d.up[lvl].block:
                h = blk(h, grid)
            if lvl:
                h = d.up[lvl].upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return d.conv_out(F.silu(d.norm_out(h, (1, 1))))  # official: norm_out without _np

    def forward(self, images, g_init, regions):
        tokens = self.encode(images, g_init, regions)
        return self.decode(tokens), tokens
