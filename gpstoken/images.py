"""Conversion between the image kinds users pass in and the model's tensor convention.

The model convention is ``float32 [B,3,H,W]`` RGB in ``[-1, 1]``. Accepted inputs:

* ``PIL.Image.Image`` (any mode, converted to RGB);
* ``numpy.ndarray`` ``[H,W,3]`` (or ``[H,W]`` grey), ``uint8`` in ``[0,255]`` or float in ``[0,1]``;
* ``torch.Tensor`` ``[3,H,W]`` or ``[B,3,H,W]`` float in ``[-1,1]``;
* a non-empty list of the above, all of the same size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .geometry import PATCH, patch_grid, split_patches

MIN_SIDE = 32


@dataclass(frozen=True)
class ImageKind:
    """How an input was given, so outputs can be returned the same way."""

    kind: str  # "pil" | "numpy" | "tensor"
    batched: bool  # list input, or a 4-D tensor
    numpy_dtype: Any = None


def _from_pil(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return _from_numpy(arr, "image")


def _from_numpy(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(
            f"{name}: numpy image must be [H,W,3] (or [H,W] grey), got shape {tuple(arr.shape)}"
        )
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        x = torch.from_numpy(arr.astype(np.float64) / 127.5 - 1.0)
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: numpy image contains NaN or Inf values")
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(
                f"{name}: float numpy image must lie in [0, 1], got range "
                f"[{arr.min():.3g}, {arr.max():.3g}]; pass uint8 for [0, 255] data"
            )
        x = torch.from_numpy(arr.astype(np.float64) * 2.0 - 1.0)
    else:
        raise TypeError(f"{name}: numpy image dtype must be uint8 or float, got {arr.dtype}")
    return x.permute(2, 0, 1).float().contiguous()


def _check_tensor(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(
            f"{name}: tensor image must be [3,H,W] or [B,3,H,W] RGB, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"{name}: tensor image must be float in [-1, 1], got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: tensor image contains NaN or Inf values")
    return x


def to_tensor(image: Any, name: str = "image") -> tuple[torch.Tensor, ImageKind]:
    """Convert any accepted image input to ``float32 [B,3,H,W]`` in ``[-1,1]``.

    Returns the tensor and an :class:`ImageKind` describing the input, for :func:`from_tensor`.
    Raises ``ValueError``/``TypeError`` naming ``name`` on bad input (wrong shape, dtype,
    NaN, images smaller than 32 pixels, mixed sizes in a list).
    """
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError(f"{name}: empty list of images")
        parts = [to_tensor(im, f"{name}[{i}]") for i, im in enumerate(image)]
        sizes = {tuple(p.shape[-2:]) for p, _ in parts}
        if len(sizes) > 1:
            raise ValueError(f"{name}: all images of a list must have the same size, got {sorted(sizes)}")
        first = parts[0][1]
        return torch.cat([p for p, _ in parts]), ImageKind(first.kind, True, first.numpy_dtype)
    if isinstance(image, Image.Image):
        x, kind = _from_pil(image).unsqueeze(0), ImageKind("pil", False)
    elif isinstance(image, np.ndarray):
        x, kind = _from_numpy(image, name).unsqueeze(0), ImageKind("numpy", False, image.dtype)
    elif isinstance(image, torch.Tensor):
        kind = ImageKind("tensor", image.ndim == 4)
        x = _check_tensor(image, name)
    else:
        raise TypeError(
            f"{name}: expected a PIL image, numpy array, torch tensor or a list of them, "
            f"got {type(image).__name__}"
        )
    h, w = x.shape[-2:]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"{name}: images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}")
    return x.float(), kind


def from_tensor(x: torch.Tensor, kind: ImageKind) -> Any:
    """Convert ``[B,3,H,W]`` in ``[-1,1]`` back to the kind described by ``kind``."""
    x = x.detach().float().clamp(-1, 1)
    if kind.kind == "tensor":
        return x if kind.batched else x[0]
    arr = ((x.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out: list[Any]
    if kind.kind == "pil":
        out = [Image.fromarray(a) for a in arr]
    elif kind.numpy_dtype is not None and np.issubdtype(kind.numpy_dtype, np.floating):
        out = [(((x[i].cpu() + 1) / 2).permute(1, 2, 0).numpy()).astype(kind.numpy_dtype) for i in range(len(x))]
    else:
        out = list(arr)
    return out if kind.batched else out[0]


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    """``[B,3,H,W]`` in ``[-1,1]`` -> list of PIL RGB images."""
    return from_tensor(x, ImageKind("pil", True))


def resize_short_side(img: Image.Image, short: int) -> Image.Image:
    """Resize (bicubic, antialiased when shrinking) so that the shorter side is ``short``;
    the longer side is rounded and never below ``short``."""
    w, h = img.size
    s = short / min(w, h)
    size = (max(short, round(w * s)), max(short, round(h * s)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=None if s >= 1 else 3.0)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The evaluation protocol's crop: shorter side to ``size`` (:func:`resize_short_side`),
    then the central ``size x size`` square (offsets rounded down)."""
    img = resize_short_side(img.convert("RGB"), size)
    w, h = img.size
    x0, y0 = (w - size) // 2, (h - size) // 2
    return img.crop((x0, y0, x0 + size, y0 + size))


def pad_to_patches(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad ``[B,C,H,W]`` at the bottom/right with 0 (mid grey in [-1,1]) to multiples of 256.

    A flat pad has zero gradient entropy, so the entropy partition spends (almost) no
    tokens on it. Returns the padded tensor and the patch grid ``(k, m)``.
    """
    h, w = x.shape[-2:]
    k, m = patch_grid(h, w)
    if (k * PATCH, m * PATCH) == (h, w):
        return x, (k, m)
    return torch.nn.functional.pad(x, (0, m * PATCH - w, 0, k * PATCH - h), value=0.0), (k, m)


#: ``[B,C,256k,256m]`` -> ``[B*k*m,C,256,256]`` (the former name of :func:`gpstoken.geometry.split_patches`)
fold_patches = split_patches
