"""The input contract of the public API, checked in one place.

Public entry points (``encode``, ``reconstruct``, ``partition``, ``edit_layout``, ``render``,
``generate``, ``Layout(...)``, ``GPSTokens(...)``) call these checks; models and kernels trust
their inputs, so nothing here runs inside a model's forward pass. Every check raises
``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape, range or value) whose
message starts with the name of the argument, says what was wrong and how to fix it.

Value checks on tensors cost one host sync per call (one fused reduction, then a slow path
only to word the error).

One module per kind of input: :mod:`.options` (ints, numbers, flags, pairs, rows),
:mod:`.images` (image tensors and arrays), :mod:`.tokens` (``Layout`` / ``GPSTokens`` fields,
Gaussian values), :mod:`.partition` (partition options, grey patches, bias, cells, priority),
:mod:`.render` (render inputs). Callers use the names of this package: ``validate.integer``.
"""
from __future__ import annotations

from .images import IMAGE_TOLERANCE, image_tensor, numpy_image
from .options import as_rows, as_tensor, config_fields, config_values, flag, integer, moves, number, size_pair
from .partition import bias_map, grey_patch, partition_cells, partition_options, priority, reachable_tokens
from .render import render_inputs
from .tokens import LAYOUT_TOLERANCE, gaussians, layout_tensors, token_tensors

__all__ = [
    "IMAGE_TOLERANCE", "LAYOUT_TOLERANCE", "as_rows", "as_tensor", "bias_map", "config_fields", "config_values", "flag",
    "gaussians", "grey_patch", "image_tensor", "integer", "layout_tensors", "moves", "number", "numpy_image",
    "partition_cells", "partition_options", "priority", "reachable_tokens", "render_inputs", "size_pair",
    "token_tensors",
]
