"""The input contract of the public API, checked in one place.

Public entry points (``encode``, ``reconstruct``, ``partition``, ``edit_layout``, ``render``,
``generate``, ``Layout(...)``, ``GPSTokens(...)``) call these checks; models and kernels trust
their inputs, so nothing here runs inside a model's forward pass. Every check raises
``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape, range or value) whose
message starts with the name of the argument, says what was wrong and how to fix it.

Value checks on tensors cost one host sync per call (one fused reduction, then a slow path
only to word the error).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from .geometry import GEOMETRY, PATCH, REGION, patch_grid

#: how far outside [-1, 1] an image tensor may go (rounding of resampled or decoded images)
IMAGE_TOLERANCE = 1e-3
#: how far outside [-1, 1] layout regions may go (float rounding)
LAYOUT_TOLERANCE = 1e-4
_FIELDS = ("sigma_x", "sigma_y", "rho", "mu_x", "mu_y")


# ---------------------------------------------------------------------- options
def integer(value: Any, name: str, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int (bool and floats refused) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: must be an int in [{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got {value}")
    return value


def number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        raise ValueError(f"{name}: must lie in {left}{low if low is not None else '-inf'}, "
                         f"{high if high is not None else 'inf'}], got {value}")
    return value


def flag(value: Any, name: str) -> bool:
    """``value`` as a bool (True/False only)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def moves(value: Any, name: str = "move") -> tuple[list[int], list[tuple[float, float]]]:
    """``{index: (x, y)}`` -> (indices, centres); the form ``edit_layout(move=...)`` documents."""
    if not isinstance(value, dict):
        raise TypeError(f"{name}: expected a dict {{token index: (x, y) pixel centre}}, got {type(value).__name__}")
    indices, centres = [], []
    for key, centre in value.items():
        indices.append(integer(key, f"{name} key {key!r}"))
        if not isinstance(centre, (tuple, list, np.ndarray, torch.Tensor)) or len(centre) != 2:
            raise ValueError(f"{name}[{key}]: expected an (x, y) pixel centre, got {centre!r}")
        centres.append((number(centre[0], f"{name}[{key}] x"), number(centre[1], f"{name}[{key}] y")))
    return indices, centres


def as_tensor(value: Any, name: str, what: str) -> torch.Tensor:
    """``torch.as_tensor(value)`` for a numeric array-like, else TypeError naming ``name``."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected {what}, got a string {value!r}")
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected {what}, got {type(value).__name__} ({e})") from None


def as_rows(value: Any, name: str, width: int, what: str) -> torch.Tensor:
    """A non-empty finite float64 ``[M, width]`` tensor from a list of rows (or one row)."""
    t = as_tensor(value, name, f"a list of {what}")
    numeric = t.is_floating_point() or t.dtype.is_signed or t.dtype == torch.uint8
    if t.dtype == torch.bool or t.is_complex() or not numeric:
        raise TypeError(f"{name}: expected a list of {what}, got dtype {t.dtype}")
    if t.ndim not in (1, 2) or t.numel() == 0 or t.shape[-1] != width:
        raise ValueError(f"{name}: expected a non-empty list of {what} ({width} numbers each), got shape "
                         f"{tuple(t.shape)}")
    t = t.to(torch.float64).reshape(-1, width)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: {what} must be finite, got NaN or Inf")
    return t


# ---------------------------------------------------------------------- images
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


# ---------------------------------------------------------------------- Layout / GPSTokens
def _float_tensor(x: Any, name: str, last: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [B,N,{last}], got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] != last:
        raise ValueError(f"{name}: expected shape [B,N,{last}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor, got dtype {x.dtype}")
    return x


def size_pair(value: Any, name: str) -> tuple[int, int]:
    """A pair of positive ints ``(H, W)`` (tuple or list)."""
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in value)
        or min(value) < 1
    ):
        raise ValueError(f"{name}: expected a pair of positive ints (H, W), got {value!r}")
    return int(value[0]), int(value[1])


def _raise_bad_token(g: torch.Tensor, f: torch.Tensor | None, name: str):
    """Raise the ValueError naming the first invalid token (b, n) and field.

    g: ``[B,N,5]``; f: ``[B,N,C]`` or None. Invalid: a non-finite value, sigma <= 0 or
    ``|rho| >= 1``.
    """
    bad_geo = ~torch.isfinite(g).all(-1) | (g[..., 0] <= 0) | (g[..., 1] <= 0) | (g[..., 2].abs() >= 1)
    bad_feat = ~torch.isfinite(f).all(-1) if f is not None else torch.zeros_like(bad_geo)
    n_bad = int((bad_geo | bad_feat).sum())
    if bool(bad_geo.any()):
        b, n = (int(i) for i in bad_geo.nonzero()[0])
        for k, (field, val) in enumerate(zip(_FIELDS, g[b, n].tolist())):
            if not math.isfinite(val):
                why = "is not finite (NaN or Inf)"
            elif k < 2 and val <= 0:
                why = "must be > 0"
            elif k == 2 and abs(val) >= 1:
                why = "must satisfy |rho| < 1"
            else:
                continue
            raise ValueError(f"{name}: token (b={b}, n={n}) has {field}={val!r}, which {why} "
                             f"({n_bad} invalid token(s) in total)")
    assert f is not None  # bad_feat is all False without features
    b, n = (int(i) for i in bad_feat.nonzero()[0])
    c = int((~torch.isfinite(f[b, n])).nonzero()[0])
    raise ValueError(f"{name}: token (b={b}, n={n}) has non-finite feature {c} = {f[b, n, c].item()!r} "
                     f"({n_bad} invalid token(s) in total)")


def layout_tensors(geometry: Any, regions: Any, image_size: Any, grid: Any) -> tuple:
    """Checks of ``Layout(geometry, regions, image_size, grid)``; returns the normalised fields.

    geometry: float ``[B,N,5]`` finite, sigma > 0, ``|rho| < 1`` (centres may leave the
    patch: :func:`gpstoken.layout.calibrate` snaps them back); regions:
    float ``[B,N,4]`` in ``[-1, 1]`` with ``x0 <= x1``, ``y0 <= y1``; B, N >= 1, N a multiple
    of the patches of ``grid`` (derived from ``image_size`` when None). Returns
    ``(geometry float32, regions float32, image_size, grid)``.
    """
    geometry = _float_tensor(geometry, "Layout.geometry", GEOMETRY)
    regions = _float_tensor(regions, "Layout.regions", REGION)
    if geometry.shape[:2] != regions.shape[:2]:
        raise ValueError(f"Layout: geometry {tuple(geometry.shape)} and regions {tuple(regions.shape)} "
                         "must have the same [B,N]")
    if geometry.device != regions.device:
        raise ValueError(f"Layout: geometry on {geometry.device} but regions on {regions.device}")
    image_size = size_pair(image_size, "Layout.image_size")
    expected = patch_grid(*image_size)
    grid = expected if grid is None else size_pair(grid, "Layout.grid")
    if grid != expected:
        raise ValueError(f"Layout.grid: an image of size {image_size} is cut into {expected} patches of "
                         f"{PATCH}, got grid {grid}")
    b, n = geometry.shape[:2]
    if b == 0 or n == 0 or n % (grid[0] * grid[1]):
        raise ValueError(f"Layout: N={n} tokens (B={b}) must be a positive multiple of the {grid[0] * grid[1]} "
                         f"patches of grid {grid} (the same number of tokens in every patch)")
    g, r = geometry.detach().float(), regions.detach().float()
    lim = 1 + LAYOUT_TOLERANCE
    good_g = torch.isfinite(g).all() & (g[..., :2] > 0).all() & (g[..., 2].abs() < 1).all()
    good_r = (r.abs() <= lim).all()
    if not bool(good_g & good_r & (r[..., 0] <= r[..., 2]).all() & (r[..., 1] <= r[..., 3]).all()):  # one sync
        if not bool(good_g):
            _raise_bad_token(g, None, "Layout.geometry")
        if not bool(good_r):
            finite = r[torch.isfinite(r)]
            span = f"[{float(finite.min()):.4g}, {float(finite.max()):.4g}]" if finite.numel() else "NaN"
            nan = " and NaN" if finite.numel() < r.numel() else ""
            raise ValueError(
                f"Layout.regions: values in {span}{nan} must lie in [-1, 1]: regions are normalised cell "
                "ranges p -> (p/255 - 0.5)*2 in each 256 patch, not pixels (Layout.from_cells converts "
                "integer pixel cells)")
        raise ValueError("Layout.regions: each region must have x0 <= x1 and y0 <= y1")
    return geometry.float(), regions.float(), image_size, grid


def token_tensors(geometry: Any, features: Any, layout_shape: tuple[int, ...]) -> None:
    """Checks of ``GPSTokens(geometry, features, ...)`` against the layout's ``[B,N,5]`` shape:
    geometry float ``[B,N,5]`` finite, sigma > 0, ``|rho| < 1``; features float ``[B,N,C]``
    finite with C >= 1, on the same device."""
    for name, t in (("geometry", geometry), ("features", features)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"GPSTokens.{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 3 or not t.is_floating_point():
            raise ValueError(f"GPSTokens.{name}: expected a float tensor [B,N,*], got {t.dtype} {tuple(t.shape)}")
    if tuple(geometry.shape) != tuple(layout_shape):
        raise ValueError(f"GPSTokens.geometry: expected shape {tuple(layout_shape)} (as the layout), "
                         f"got {tuple(geometry.shape)}")
    if tuple(features.shape[:2]) != tuple(layout_shape[:2]) or features.shape[2] == 0:
        raise ValueError(f"GPSTokens.features: expected shape [{layout_shape[0]},{layout_shape[1]},C] with C >= 1, "
                         f"got {tuple(features.shape)}")
    if geometry.device != features.device:
        raise ValueError(f"GPSTokens: geometry on {geometry.device} but features on {features.device}")
    gaussians(geometry, features, "GPSTokens")


def gaussians(geometry: torch.Tensor, features: torch.Tensor, name: str) -> None:
    """Values of tokens ``geometry [B,N,5]`` and ``features [B,N,C]``: all finite, sigma > 0,
    ``|rho| < 1`` (centres may lie anywhere). One host sync; the error names the first bad
    token (b, n) and field."""
    g, f = geometry.detach(), features.detach()
    ok = torch.isfinite(g).all(-1) & torch.isfinite(f).all(-1) & (g[..., 2].abs() < 1) & (g[..., :2] > 0).all(-1)
    if not bool(ok.all()):  # the only host sync of the check
        _raise_bad_token(g, f, name)


# ---------------------------------------------------------------------- partition
def partition_options(n_tokens: Any, weight: Any, min_size: Any) -> tuple[int, float, int]:
    """Options of :func:`gpstoken.partition`: ``n_tokens`` an int >= 1, ``weight`` a finite
    float > 0, ``min_size`` an int >= 1; returns them as ``(int, float, int)``."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, (int, np.integer)):
        raise TypeError(f"n_tokens: expected an int >= 1 (tokens per 256x256 patch), got {type(n_tokens).__name__}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens: must be >= 1 (tokens per 256x256 patch), got {n_tokens}")
    if isinstance(weight, bool) or not isinstance(weight, (int, float, np.floating, np.integer)):
        raise TypeError("weight: expected a positive float (entropy exponent, official 2.5), got "
                        f"{type(weight).__name__}")
    if not math.isfinite(weight) or weight <= 0:
        raise ValueError(f"weight: must be a finite float > 0 (entropy exponent, official 2.5), got {weight}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)):
        raise TypeError(f"min_size: expected an int >= 1 (official 8), got {type(min_size).__name__}")
    if min_size < 1:
        raise ValueError(f"min_size: must be an int >= 1 (official 8), got {min_size}")
    return int(n_tokens), float(weight), int(min_size)


def reachable_tokens(n_tokens: int, height: int, width: int, min_size: int) -> None:
    """``n_tokens`` cells can be reached by splitting a ``height x width`` patch down to ``min_size``."""
    from .partition.greedy import max_cells

    top = max_cells(height, width, min_size)
    if n_tokens > top:
        raise ValueError(
            f"n_tokens: a {height}x{width} patch can be split into at most {top} cells with "
            f"min_size={min_size}, got n_tokens={n_tokens}; use n_tokens <= {top}"
        )


def grey_patch(grey: Any, name: str = "grey") -> torch.Tensor:
    """A grey patch: a finite float ``[H,W]`` array -> float32 tensor."""
    g = torch.as_tensor(grey)
    if g.ndim != 2 or not g.is_floating_point():
        raise ValueError(f"{name}: expected a float [H,W] array, got shape {tuple(g.shape)} dtype {g.dtype}")
    if not torch.isfinite(g).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    return g.float()


def bias_map(bias: Any, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A per-pixel partition bias: finite, ``|value| <= MAX_ABS_BIAS`` (so cell sums stay exact
    after quantization), of ``shape`` when given -> float64 tensor."""
    from .partition.priority import MAX_ABS_BIAS

    b = torch.as_tensor(bias)
    if shape is not None and tuple(b.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape} like grey, got {tuple(b.shape)}")
    b = b.double()
    if not torch.isfinite(b).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    if b.abs().max() > MAX_ABS_BIAS:
        raise ValueError(f"{name}: per-pixel values must lie in [-{MAX_ABS_BIAS:g}, {MAX_ABS_BIAS:g}]")
    return b


def partition_cells(cells: Any, height: int, width: int, name: str = "cells") -> list[tuple[int, int, int, int]]:
    """Inclusive pixel boxes ``[n,4]`` ``(x0, y0, x1, y1)`` inside a ``height x width`` image ->
    ``(y0, x0, h, w)`` per cell."""
    cells = np.asarray(cells)
    keys = [(int(y0), int(x0), int(y1 - y0 + 1), int(x1 - x0 + 1)) for x0, y0, x1, y1 in cells]
    for i, (y0, x0, h, w) in enumerate(keys):
        if y0 < 0 or x0 < 0 or h < 1 or w < 1 or y0 + h > height or x0 + w > width:
            raise ValueError(f"{name}[{i}]: {tuple(cells[i])} is empty or outside the {height}x{width} image")
    return keys


def priority(value: Any, height: int, width: int,
             name: str = "priority") -> torch.Tensor | list[tuple[int, int, int, int]]:
    """A partition priority: an ``[H,W]`` mask (bool or floats in [0, 1]) -> float64 CPU
    tensor, or a sequence of pixel boxes ``(x0, y0, x1, y1)`` (ints, ``x0 <= x1``, ``y0 <= y1``)
    -> list of int tuples."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        m = torch.as_tensor(value)
        if tuple(m.shape) != (height, width):
            raise ValueError(f"{name}: mask must have the image's shape {(height, width)}, got {tuple(m.shape)}")
        m = m.double()
        if not torch.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise ValueError(f"{name}: mask values must be bool or floats in [0, 1]")
        return m.cpu()
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        boxes = []
        for i, box in enumerate(value):
            if not isinstance(box, Sequence) or len(box) != 4 or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box
            ):
                raise ValueError(f"{name}[{i}]: a box must be 4 ints (x0, y0, x1, y1) in pixels, got {box!r}")
            x0, y0, x1, y1 = (int(v) for v in box)
            if x1 < x0 or y1 < y0:
                raise ValueError(f"{name}[{i}]: box needs x0 <= x1 and y0 <= y1, got {box!r}")
            boxes.append((x0, y0, x1, y1))
        return boxes
    raise TypeError(
        f"{name}: expected an [H,W] mask (numpy/torch, bool or float in [0,1]) or a list of "
        f"(x0, y0, x1, y1) boxes, got {type(value).__name__}"
    )


# ---------------------------------------------------------------------- render
def render_inputs(geometry: Any, features: Any, size: Any, support: Any) -> tuple[int, int]:
    """Checks of :func:`gpstoken.render.render`; returns ``(h, w)``.

    geometry float ``[B,N,5]`` and features float ``[B,N,C]`` on one device, with finite
    values, sigma > 0 and ``|rho| < 1``; size a pair of ints >= 2; support > 0 (inf allowed).
    """
    if not isinstance(geometry, torch.Tensor) or not isinstance(features, torch.Tensor):
        raise ValueError("render: geometry and features must be torch tensors")
    if geometry.dim() != 3 or geometry.shape[-1] != GEOMETRY:
        raise ValueError(f"render: geometry must be [B,N,5], got {list(geometry.shape)}")
    if features.dim() != 3 or features.shape[:2] != geometry.shape[:2]:
        raise ValueError(f"render: features must be [B,N,C] with geometry's [B,N]={list(geometry.shape[:2])}, "
                         f"got {list(features.shape)}")
    if not (geometry.is_floating_point() and features.is_floating_point()):
        raise ValueError(f"render: inputs must be floating point, got {geometry.dtype} and {features.dtype}")
    if geometry.device != features.device:
        raise ValueError(f"render: geometry on {geometry.device} but features on {features.device}")
    if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
        isinstance(s, Integral) and not isinstance(s, bool) for s in size
    ):
        raise ValueError(f"render: size must be a pair of ints (h, w), got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 2 or w < 2:
        raise ValueError(f"render: size must be at least 2x2 (pixel centres span [-1, 1]), got {(h, w)}")
    if isinstance(support, bool) or not isinstance(support, Real) or not float(support) > 0:  # NaN fails too
        raise ValueError(f"render: support must be a positive number (inf = no cut-off), got {support!r}")
    gaussians(geometry, features, "render")
    return h, w
