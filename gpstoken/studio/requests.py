"""What the studio accepts: its :class:`Limits`, the :class:`StudioError` it answers with, and
the checks that turn request values (JSON numbers, pixel boxes, layout edits) into checked ones.

Coordinates are **working-image pixels** (x = column, y = row).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import gpstoken

if TYPE_CHECKING:
    from .sessions import Result

__all__ = ["Limits", "StudioError", "edited_layout", "integer", "integers", "priority_boxes"]


class StudioError(ValueError):
    """A request the studio refuses; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What the studio accepts.

    max_upload_bytes: largest upload. max_pixels: largest decoded image (width*height)
    accepted before downscaling (guards against decompression bombs). max_side: working
    images are downscaled so that max(H, W) <= max_side; the default 256 keeps every image
    one 256 patch, where any add/remove edit is possible (in a grid of patches every patch
    must keep the same token count). min/max_tokens: token-count range
    per 256 patch. max_steps: sampler steps for generation. max_sessions: images kept in
    memory (least recently used dropped first).
    """

    max_upload_bytes: int = 16 * 2**20
    max_pixels: int = 40_000_000
    max_side: int = 256
    min_tokens: int = 16
    max_tokens: int = 512
    max_steps: int = 100
    max_sessions: int = 16


def integers(value: Any, n: int, what: str) -> list[int]:
    """``value``: a list of ``n`` numbers -> the nearest integers; ``what`` names it in the error."""
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise StudioError(f"{what}: expected {n} numbers, got {value!r}")
    try:
        out = [int(round(float(v))) for v in value]
    except (TypeError, ValueError):
        raise StudioError(f"{what}: expected {n} numbers, got {value!r}") from None
    return out


def integer(value: Any, what: str, lo: int, hi: int) -> int:
    """``value``: a whole number in ``[lo, hi]`` (an int, or a float without a fraction)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise StudioError(f"{what}: expected an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= int(value) <= hi:
        raise StudioError(f"{what}: must lie in [{lo}, {hi}], got {int(value)}")
    return int(value)


def priority_boxes(boxes: Any, size: tuple[int, int]) -> list[list[int]]:
    """``boxes``: None or a list of ``[x0, y0, x1, y1]`` pixel boxes on an image of ``size``
    ``(width, height)`` -> the boxes clipped to the image and ordered (x0 <= x1, y0 <= y1),
    each at least 2x2 pixels."""
    if boxes is None:
        return []
    if not isinstance(boxes, list):
        raise StudioError("priority: expected a list of [x0, y0, x1, y1] pixel boxes")
    w, h = size
    out = []
    for i, b in enumerate(boxes):
        x0, y0, x1, y1 = integers(b, 4, f"priority[{i}]")
        x0, x1 = sorted((max(0, min(x0, w - 1)), max(0, min(x1, w - 1))))
        y0, y1 = sorted((max(0, min(y0, h - 1)), max(0, min(y1, h - 1))))
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise StudioError(f"priority[{i}]: box {b} is smaller than 2x2 pixels inside the image")
        out.append([x0, y0, x1, y1])
    return out


def edited_layout(current: Optional[Result], edits: Any) -> gpstoken.Layout:
    """The layout of the ``current`` result of a session with the user's edits, calibrated onto
    partition cells.

    edits: ``{"base": version, "remove": [i, ...], "move": {i: [x, y]}, "add": [[x0, y0, x1, y1], ...],
    "calibrate": true}``; indices refer to the tokens of result ``base``. Moves apply first, then
    removals and additions; ``calibrate`` (default true) snaps the result onto partition cells.
    """
    if not isinstance(edits, dict):
        raise StudioError(f"edits: expected an object with remove/move/add, got {type(edits).__name__}")
    if current is None or edits.get("base") != current.version:
        raise StudioError("edits: made on a layout that is no longer the current one; reload the page state")
    layout = current.tokens.layout
    n = layout.total_tokens
    remove = [integer(i, "remove", 0, n - 1) for i in edits.get("remove") or []]
    move_in = edits.get("move") or {}
    if not isinstance(move_in, dict):
        raise StudioError("move: expected {index: [x, y]}")
    move = {integer(int(k) if str(k).isdigit() else k, "move index", 0, n - 1): integers(v, 2, f"move[{k}]")
            for k, v in move_in.items()}
    add = [integers(b, 4, "add") for b in edits.get("add") or []]
    if not (remove or move or add):
        raise StudioError("edits: nothing to apply (add, move or remove a Gaussian first)")
    snap = edits.get("calibrate", True)
    if not isinstance(snap, bool):
        raise StudioError(f"calibrate: expected true or false, got {snap!r}")
    try:
        if move:
            layout = gpstoken.edit_layout(layout, move=move, calibrate=False)
        if remove or add:
            layout = gpstoken.edit_layout(layout, remove=remove or None, add=add or None, calibrate=False)
        return gpstoken.calibrate(layout) if snap else layout
    except ValueError as e:
        raise StudioError(str(e)) from None
