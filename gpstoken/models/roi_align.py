"""RoIAlign with torchvision CPU-kernel semantics, in pure, vectorised torch.

Only the configuration GPSToken uses is provided: ``aligned=True`` (box corners shifted by
-0.5 pixel), spatial scale 1 and the adaptive sampling ratio (``ceil(box_size / out)``
samples per bin and axis). Semantics, per box ``[batch, x1, y1, x2, y2]`` in pixels:

* the box spans ``[x1 - 0.5, x2 - 0.5]`` x ``[y1 - 0.5, y2 - 0.5]``; bins are box/out wide,
  and are never clamped to a minimum size (degenerate or inverted boxes give zeros);
* bin ``(ph, pw)`` is sampled on a ``gh x gw`` grid at fractions ``(i + 0.5)/g`` of the bin;
* a sample with ``y < -1``, ``y > H``, ``x < -1`` or ``x > W`` contributes 0; otherwise it is
  clamped at 0 on the low side, snapped to the last index at or beyond it, and read with
  bilinear interpolation;
* the bin value is the sum of its samples divided by ``max(gh * gw, 1)``.

Implementation: every output bin is a fixed weighted sum of feature-map pixels, so the
whole op is one sparse matrix product ``out = M @ features``. The entries of ``M`` (four
bilinear corners per sample, all boxes at once, ragged grids flattened with
``repeat_interleave``) are built with tensor ops and applied with ``F.embedding_bag``
(weighted sum of rows, no gathered intermediate). Gradients flow to the features only,
as in torchvision; boxes get none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["roi_align"]


def _axis_samples(
    start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, out: int, length: int
) -> tuple[torch.Tensor, ...]:
    """Sample positions along one axis for every box, flattened box-major then bin, sample.

    start, bin_size: float [R]; grid: int64 [R] (>= 0) samples per bin; out: bins per axis;
    length: map size along the axis. Returns ``(low, high, w_low, w_high)``, each [sum(out*grid)],
    where the weights already include the out-of-map mask.
    """
    per_box = grid * out
    box = torch.repeat_interleave(torch.arange(grid.numel(), device=grid.device), per_box)
    first = torch.cumsum(per_box, 0) - per_box
    local = torch.arange(box.numel(), device=grid.device) - first[box]
    g = grid[box]
    b_idx, s_idx = local // g, local % g
    bs = bin_size[box]
    pos = start[box] + b_idx.to(bs.dtype) * bs + (s_idx.to(bs.dtype) + 0.5) * bs / g.to(bs.dtype)
    valid = (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0.0)
    low = pos.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, length - 1, low)
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low.to(pos.dtype), pos)
    frac = pos - low.to(pos.dtype)
    w_high = torch.where(valid, frac, 0.0)
    w_low = torch.where(valid, 1.0 - frac, 0.0)
    return low, high, w_low, w_high


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int) -> torch.Tensor:
    """RoIAlign (aligned=True, spatial_scale=1, adaptive sampling ratio).

    features: float [B,C,H,W] (any memory format; channels-last avoids a copy).
    boxes: float [R,5] rows ``[batch_index, x1, y1, x2, y2]`` in pixels of ``features``.
    output_size: bins per axis. Returns float [R,C,output_size,output_size].
    """
    if features.ndim != 4:
        raise ValueError(f"features: expected [B,C,H,W], got shape {tuple(features.shape)}")
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes: expected [R,5] (batch, x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    n_img, chans, height, width = features.shape
    n_box, out = boxes.shape[0], output_size
    # sampling geometry and the weighted sum run in float32 (float64 for float64 features), so
    # half-precision features under autocast neither round the sample positions nor mix dtypes
    work = torch.float64 if features.dtype == torch.float64 else torch.float32
    table = features.permute(0, 2, 3, 1).reshape(n_img * height * width, chans).to(work)

    with torch.no_grad():
        bx = boxes.detach().to(work)
        batch = bx[:, 0].long()
        x0, y0 = bx[:, 1] - 0.5, bx[:, 2] - 0.5
        bin_w, bin_h = (bx[:, 3] - 0.5 - x0) / out, (bx[:, 4] - 0.5 - y0) / out
        gw = torch.ceil(bin_w).long().clamp(min=0)
        gh = torch.ceil(bin_h).long().clamp(min=0)
        inv_count = 1.0 / (gh * gw).clamp(min=1).to(work)

        ylo, yhi, wylo, wyhi = _axis_samples(y0, bin_h, gh, out, height)
        xlo, xhi, wxlo, wxhi = _axis_samples(x0, bin_w, gw, out, width)
        ys, ws_y = torch.stack([ylo, yhi], 1), torch.stack([wylo, wyhi], 1)  # [Sy,2]
        xs, ws_x = torch.stack([xlo, xhi], 1), torch.stack([wxlo, wxhi], 1)  # [Sx,2]
        y_first = torch.cumsum(gh * out, 0) - gh * out
        x_first = torch.cumsum(gw * out, 0) - gw * out

        # one entry per (box, bin_y, bin_x, sample_y, sample_x, corner_y, corner_x), bag-major
        per_bag = gh * gw * 4
        box = torch.repeat_interleave(torch.arange(n_box, device=boxes.device), per_bag * out * out)
        first = torch.cumsum(per_bag * out * out, 0) - per_bag * out * out
        local = torch.arange(box.numel(), device=boxes.device) - first[box]
        g_h, g_w, pb = gh[box], gw[box], per_bag[box]
        bag, within = local // pb, local % pb
        by, bxn = bag // out, bag % out
        corner, sample = within % 4, within // 4
        sy, sx = sample // g_w, sample % g_w
        cy, cx = corner // 2, corner % 2
        iy = y_first[box] + by * g_h + sy
        ix = x_first[box] + bxn * g_w + sx
        index = (batch[box] * height + ys[iy, cy]) * width + xs[ix, cx]
        weight = ws_y[iy, cy] * ws_x[ix, cx] * inv_count[box]
        offsets = torch.cumsum(per_bag.repeat_interleave(out * out), 0) - per_bag.repeat_interleave(out * out)

    pooled = F.embedding_bag(index, table, offsets, mode="sum", per_sample_weights=weight)
    return pooled.view(n_box, out, out, chans).permute(0, 3, 1, 2).to(features.dtype)
