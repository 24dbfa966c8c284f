"""Checks of token values: the fields of ``Layout(...)`` and ``GPSTokens(...)`` and the Gaussian
parameters of any token tensor (finite, sigma > 0, ``|rho| < 1``); errors name the first bad
token ``(b, n)`` and its field. One host sync per check."""
from __future__ import annotations

import math
from typing import Any

import torch

from ..geometry import GEOMETRY, PATCH, REGION, patch_grid
from .options import size_pair

#: how far outside [-1, 1] layout regions may go (float rounding)
LAYOUT_TOLERANCE = 1e-4
_FIELDS = ("sigma_x", "sigma_y", "rho", "mu_x", "mu_y")


def _float_tensor(x: Any, name: str, last: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor [B,N,{last}], got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] != last:
        raise ValueError(f"{name}: expected shape [B,N,{last}], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a float tensor, got dtype {x.dtype}")
    return x


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
