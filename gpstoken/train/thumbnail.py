"""The naive codec of the same size as a token set: a bicubic thumbnail.

N tokens of ``5 + gps_c`` floats hold ``N * (5 + gps_c)`` numbers; a ``k x k x 3`` float
thumbnail with ``3 k^2`` closest to that number stores the same amount. The baseline
downsamples each 256x256 image to ``k x k`` (bicubic, antialiased) and upsamples it back
(bicubic); a tokenizer is worth its tokens only when it reconstructs better than this.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["thumbnail_side", "bicubic_thumbnail"]


def thumbnail_side(n_tokens: int, floats_per_token: int = 21) -> int:
    """Side ``k`` of the ``k x k x 3`` thumbnail with ``3 k^2`` closest to
    ``n_tokens * floats_per_token`` (64 / 128 / 256 tokens of 21 floats -> 21 / 30 / 42)."""
    if n_tokens < 1 or floats_per_token < 1:
        raise ValueError(f"n_tokens and floats_per_token must be >= 1, got {n_tokens}, {floats_per_token}")
    target = n_tokens * floats_per_token / 3
    k = math.isqrt(int(target))
    return k if target - k * k <= (k + 1) ** 2 - target else k + 1


def bicubic_thumbnail(images: torch.Tensor, n_tokens: int, floats_per_token: int = 21) -> torch.Tensor:
    """images: float [B,3,H,W] in [-1,1] -> their reconstruction from a ``k x k`` bicubic
    thumbnail (:func:`thumbnail_side`), float [B,3,H,W] clamped to [-1,1]."""
    k = thumbnail_side(n_tokens, floats_per_token)
    small = F.interpolate(images.float(), size=(k, k), mode="bicubic", align_corners=False, antialias=True)
    return F.interpolate(small, size=images.shape[-2:], mode="bicubic", align_corners=False).clamp(-1, 1)
