"""Checks of user images: torch tensors in ``[-1, 1]`` and numpy arrays (the conventions of
:func:`gpstoken.images.to_tensor`, which converts what passes)."""
from __future__ import annotations

import math

import numpy as np
import torch

#: how far outside [-1, 1] an image tensor may go (rounding of resampled or decoded images)
IMAGE_TOLERANCE = 1e-3


def _channels_last(shape: tuple[int, ...]) -> bool:
    return len(shape) in (3, 4) and shape[-1] in (3, 4) and shape[-3] not in (3,)


def image_tensor(x: torch.Tensor, name: str = "image") -> torch.Tensor:
    """A user image tensor -> detached ``float32 [B,3,H,W]`` in ``[-1, 1]``.

    Accepts ``[3,H,W]`` or ``[B,3,H,W]`` (B >= 1), any float dtype, ``requires_grad`` or not.
    Values must lie in ``[-1, 1]`` (within :data:`IMAGE_TOLERANCE`, then clamped). Tensors in
    the ``[0, 1]`` (torchvision) or ``[0, 255]`` convention are refused with the conversion
    to use: a tensor without any negative value (and not all zero, which is mid grey) is read
    as ``[0, 1]`` data.
    """
    shape = tuple(x.shape)
    if _channels_last(shape):
        perm = "x.permute(2, 0, 1)" if x.ndim == 3 else "x.permute(0, 3, 1, 2)"
        raise ValueError(f"{name}: tensor of shape {shape} looks channels-last ([H,W,3]); "
                         f"tensors are channels-first [3,H,W] or [B,3,H,W]: pass {perm}")
    if x.ndim not in (3, 4) or shape[-3] != 3:
        raise ValueError(f"{name}: tensor image must be [3,H,W] or [B,3,H,W] RGB, got shape {shape}")
    if x.ndim == 4 and shape[0] == 0:
        raise ValueError(f"{name}: empty batch (shape {shape}); pass at least one image")
    if x.dtype == torch.uint8:
        raise TypeError(f"{name}: uint8 tensor looks like [0, 255] data; tensors must be float in [-1, 1]: "
                        "pass x.float() / 127.5 - 1 (or a numpy uint8 array / PIL image)")
    if not x.is_floating_point():
        raise TypeError(f"{name}: tensor image must be float in [-1, 1], got dtype {x.dtype}")
    x = x.detach()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.numel() == 0:
        raise ValueError(f"{name}: empty image (shape {shape})")
    x = x.float()
    lo, hi = (float(v) for v in torch.aminmax(x))  # one pass, one sync; NaN and Inf propagate
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name}: tensor image contains NaN or Inf values")
    t = IMAGE_TOLERANCE
    if lo >= -t and 1 + t < hi <= 255 + t:
        raise ValueError(f"{name}: values in [{lo:.3g}, {hi:.3g}] look like the [0, 255] convention; "
                         "tensors must lie in [-1, 1]: pass x / 127.5 - 1")
    if lo < -1 - t or hi > 1 + t:
        raise ValueError(f"{name}: values in [{lo:.3g}, {hi:.3g}] lie outside [-1, 1]; rescale the tensor "
                         "to [-1, 1] (-1 black, 1 white)")
    if lo >= 0 and hi > 0:
        raise ValueError(f"{name}: values in [{lo:.3g}, {hi:.3g}] (none negative) look like the [0, 1] "
                         "convention (torchvision ToTensor); tensors must lie in [-1, 1]: pass x * 2 - 1. "
                         "(A [-1, 1] image without dark pixels is ambiguous: pass it as a PIL image or a "
                         "numpy array instead)")
    return x.clamp(-1.0, 1.0) if lo < -1 or hi > 1 else x


def numpy_image(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Check a user numpy image and return it as ``[H,W,3]`` (the conversion to model values is
    :func:`gpstoken.images.to_tensor`'s).

    ``[H,W,3]``, ``[H,W,4]`` (alpha dropped) or ``[H,W]`` grey; ``uint8`` in ``[0, 255]``,
    ``uint16`` in ``[0, 65535]`` or float in ``[0, 1]``.
    """
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (3, 4):
        raise ValueError(f"{name}: numpy image of shape {tuple(arr.shape)} looks channels-first; numpy images "
                         "are [H,W,3]: pass arr.transpose(1, 2, 0)")
    if arr.ndim == 2:
        arr = arr[:, :, None].repeat(3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{name}: numpy image must be [H,W,3] (or [H,W] grey), got shape {tuple(arr.shape)}")
    arr = arr[:, :, :3]
    if arr.size == 0:
        raise ValueError(f"{name}: empty image (shape {tuple(arr.shape)})")
    if arr.dtype in (np.uint8, np.uint16):
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name}: numpy image contains NaN or Inf values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            hint = ("; that looks like [0, 255] data: pass arr.astype(np.uint8)" if lo >= 0 and hi <= 255
                    else "; [-1, 1] data goes in as a torch tensor" if lo >= -1 and hi <= 1 else "")
            raise ValueError(f"{name}: float numpy image must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]{hint}")
        return arr
    raise TypeError(f"{name}: numpy image dtype must be uint8, uint16 or float in [0, 1], got {arr.dtype}")
