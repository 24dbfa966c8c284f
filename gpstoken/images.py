"""Conversion between the image kinds users pass in and the model's tensor convention.

The model convention is ``float32 [B,3,H,W]`` RGB in ``[-1, 1]``. Accepted inputs:

* ``PIL.Image.Image`` (any mode: 8-bit modes converted to RGB, 16-bit grey ``I;16``/``I``
  read as ``[0,65535]``, float grey ``F`` as ``[0,1]`` or ``[0,255]``);
* ``numpy.ndarray`` ``[H,W,3]`` (or ``[H,W]`` grey), ``uint8`` in ``[0,255]``, ``uint16`` in
  ``[0,65535]`` or float in ``[0,1]``;
* ``torch.Tensor`` ``[3,H,W]`` or ``[B,3,H,W]`` float in ``[-1,1]`` (``requires_grad`` is
  fine: the input is detached); ``[0,1]``, ``[0,255]`` and channels-last tensors are refused
  with the fix;
* a non-empty list of the above, all of the same size.

The checks are :func:`gpstoken.validate.image_tensor` and :func:`gpstoken.validate.numpy_image`.
This module owns the 8-bit conversions every other module calls: :func:`from_uint8` (pixels ->
``[-1,1]``, computed in float64 like the official code) and :func:`to_uint8` (back), and the
reading of image files: :func:`open_image` (the CLI's inputs: EXIF orientation applied, 16-bit
kept) and :func:`to_rgb8` (any PIL mode -> 8-bit RGB for the dataset and studio readers).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from . import validate
from .geometry import PATCH, patch_grid, split_patches

MIN_SIDE = 32


def from_uint8(pixels: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8-bit pixels -> model values: ``uint8`` of any shape (``[H,W,3]``, ``[3,H,W]``, ...) in
    ``[0,255]`` -> a ``dtype`` tensor of the same shape in ``[-1,1]``.

    ``p / 255 * 2 - 1`` is computed in float64 (as the official code does) and then cast to
    ``dtype``, so every caller (user images, tokenize / eval loaders, training crops, the crop
    cache) gets the same float32 values.
    """
    if pixels.dtype not in (np.uint8, torch.uint8):
        raise TypeError(f"pixels: expected uint8 values in [0, 255], got {pixels.dtype}")
    wide = torch.from_numpy(pixels.astype(np.float64)) if isinstance(pixels, np.ndarray) else pixels.double()
    return (wide / 255.0 * 2.0 - 1.0).to(dtype)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model values -> 8-bit pixels: any shape in ``[-1,1]`` (clamped) -> ``uint8``
    ``round((x + 1) * 127.5)`` of the same shape, on the same device (the inverse of
    :func:`from_uint8` on its values)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _from_numpy(arr: np.ndarray, name: str) -> torch.Tensor:
    """A user numpy image -> ``float32 [3,H,W]`` in ``[-1,1]`` (checked by ``validate.numpy_image``)."""
    arr = validate.numpy_image(arr, name)
    if arr.dtype == np.uint8:
        x = from_uint8(arr)
    else:  # uint16 in [0, 65535] or float in [0, 1]
        scale = 65535.0 if arr.dtype == np.uint16 else 1.0
        x = (torch.from_numpy(arr.astype(np.float64)) / scale * 2.0 - 1.0).float()
    return x.permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class ImageKind:
    """How an input was given, so outputs can be returned the same way."""

    kind: str  # "pil" | "numpy" | "tensor"
    batched: bool  # list input, or a 4-D tensor
    numpy_dtype: Any = None


#: PIL modes holding one channel of 16-bit integers ([0, 65535]); "I" is how PIL opens 16-bit PNGs
_PIL_16BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _from_pil(img: Image.Image, name: str) -> torch.Tensor:
    """PIL image of any mode -> ``float32 [3,H,W]`` in [-1,1].

    8-bit modes go through ``convert("RGB")``. 16-bit grey (``I;16*``, and ``I`` as PIL opens
    16-bit PNGs) is read as [0, 65535]; float grey (``F``) as [0, 1] when its values lie there,
    else as [0, 255] (PIL's own convention for ``F``).
    """
    if img.mode in _PIL_16BIT:
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError(f"{name}: PIL image of mode {img.mode} has values in [{arr.min()}, {arr.max()}]; "
                             "integer images must lie in [0, 65535] (16 bit)")
        return _from_numpy(arr.astype(np.uint16), name)
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        if values.size and np.isfinite(values).all() and values.min() >= 0.0 and 1.0 < values.max() <= 255.0:
            values = values / 255.0
        return _from_numpy(values, name)
    return _from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8), name)


def _high_depth_grey(img: Image.Image) -> bool:
    """16-bit or float grey: modes that a plain ``convert("RGB")`` would clip."""
    return img.mode in _PIL_16BIT or img.mode == "F"


def to_rgb8(img: Image.Image, name: str = "image") -> Image.Image:
    """A PIL image of any mode -> 8-bit RGB, reading 16-bit and float grey the way
    :func:`to_tensor` does (a plain ``convert("RGB")`` clips 16-bit values to white and float
    ``[0, 1]`` values to black)."""
    if _high_depth_grey(img):
        return Image.fromarray(to_uint8(_from_pil(img, name)).permute(1, 2, 0).numpy())
    return img.convert("RGB")


def open_image(path: str | os.PathLike, name: str = "image", *, orient: bool = True) -> Image.Image:
    """An image file -> a loaded PIL image that :func:`to_tensor` reads right: 16-bit and float
    grey keep their mode, every other mode becomes RGB (alpha dropped).

    orient: apply the EXIF orientation, so the pixels stand the way image viewers show the
    file. Raises FileNotFoundError / IsADirectoryError / ValueError (not an image, truncated,
    or more pixels than PIL's decompression-bomb limit) naming ``name`` and the fix. An
    animation gives its first frame, with a warning.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{name}: image not found: {p}; check the path")
    if p.is_dir():
        raise IsADirectoryError(f"{name}: {p} is a folder, not an image file; give an image file")
    try:
        with Image.open(p) as im:
            im.load()
            frames = getattr(im, "n_frames", 1)
            out = ImageOps.exif_transpose(im) if orient else im.copy()
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name}: {p} has too many pixels to open safely ({e}); downscale it first, or raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name}: cannot read image {p} ({e}); give a PNG, JPEG or other image PIL can open") from None
    if frames > 1:
        warnings.warn(f"{name}: {p} is an animation of {frames} frames; only the first frame is used "
                      "(save the frame you want as its own image to choose another)", stacklevel=2)
    return out if _high_depth_grey(out) else out.convert("RGB")


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
        x, kind = _from_pil(image, name).unsqueeze(0), ImageKind("pil", False)
    elif isinstance(image, np.ndarray):
        x, kind = _from_numpy(image, name).unsqueeze(0), ImageKind("numpy", False, image.dtype)
    elif isinstance(image, torch.Tensor):
        kind = ImageKind("tensor", image.ndim == 4)
        x = validate.image_tensor(image, name)
    elif isinstance(image, (str, os.PathLike)):
        raise TypeError(f"{name}: got the file name {str(image)!r}; gpstoken takes images, not paths: pass "
                        f"gpstoken.images.open_image({str(image)!r}) (or a PIL image, numpy array or torch tensor)")
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
    arr = to_uint8(x.cpu()).permute(0, 2, 3, 1).numpy()
    out: list[Any]
    if kind.kind == "pil":
        out = [Image.fromarray(a) for a in arr]
    elif kind.numpy_dtype is not None and np.issubdtype(kind.numpy_dtype, np.floating):
        out = [(((x[i].cpu() + 1) / 2).permute(1, 2, 0).numpy()).astype(kind.numpy_dtype) for i in range(len(x))]
    elif kind.numpy_dtype == np.uint16:
        wide = ((x.cpu().double() + 1) * 32767.5).round().clamp(0, 65535).permute(0, 2, 3, 1).numpy()
        out = list(wide.astype(np.uint16))
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
