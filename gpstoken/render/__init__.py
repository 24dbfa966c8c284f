"""Splatting render of GPS tokens into a feature map (docs/algorithms.md section 2).

``render(geometry [B,N,5], features [B,N,C], size=(h,w), support=3.0) -> [B,C,h,w]``

Pixel (i, j) of an h x w map sits at ``x = 2j/(w-1) - 1``, ``y = 2i/(h-1) - 1``. A token
contributes ``v * f`` where ``v`` is the unnormalised Gaussian value, and only where
``|dx| <= support*sigma_x`` and ``|dy| <= support*sigma_y``.

Three implementations of the same formula:

* ``render_dense`` (:mod:`.dense`): the reference, O(B*N*h*w) memory; every other path is
  tested against it.
* culled torch path (``backend="torch"``, :class:`gpstoken.kernels._torch_impl.CulledRender`,
  the twin of the kernels): only the (token, pixel) pairs inside each token's cut-off box are
  evaluated; memory and time are proportional to the covered pixels.
* Triton kernels (``backend="triton"``, ``gpstoken/kernels/splat_*.py``, autograd op
  :class:`gpstoken.kernels._wrapper.TritonSplat`): a pixel-tiled forward and a per-token
  backward, both deterministic.

:mod:`.api` holds :func:`render` (checked by :func:`gpstoken.validate.render_inputs`) and
:func:`splat` (unchecked, for models) and dispatches between the three. The kernels and all
their torch twins live in :mod:`gpstoken.kernels` (shared with the partition's histogram).
``gpstoken.render`` (the attribute of the package ``gpstoken``) is the function
:func:`render`; import this package's names with ``from gpstoken.render import ...``.
"""
from __future__ import annotations

from ..geometry import pixel_coords
from ..kernels._torch_impl import pixel_bounds
from .api import BACKENDS, render, splat
from .dense import render_dense

__all__ = ["BACKENDS", "pixel_bounds", "pixel_coords", "render", "render_dense", "splat"]
