"""Layouts: where the tokens go (``g_init``), before refinement.

* :mod:`.value`: the :class:`Layout` value type and its edits (select, remove, add, move);
* :mod:`.calibration`: :func:`calibrate` (docs/algorithms.md section 7) and the validity
  tests :func:`is_valid_cell` / :func:`is_valid_layout`;
* :mod:`.drawing`: pictures of Gaussians and cells, and their image-pixel coordinates.
"""
from __future__ import annotations

from .calibration import calibrate, is_valid_cell, is_valid_layout, min_cell_side
from .drawing import draw_gaussians, image_pixels
from .value import Layout

__all__ = ["Layout", "calibrate", "draw_gaussians", "image_pixels", "is_valid_cell", "is_valid_layout",
           "min_cell_side"]
