"""A studio session as the JSON the page shows: per result its cells, Gaussians before and
after refinement (working-image pixels), token counts and PSNR, whole and inside the priority
boxes."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from gpstoken.images import to_tensor
from gpstoken.layout import image_pixels
from gpstoken.metrics import psnr

from .sessions import Result, Session

__all__ = ["describe", "session_state"]


def session_state(s: Session) -> dict[str, Any]:
    """The session as the page shows it: image, "after" (current) and "before" results.
    PSNR inside boxes is measured for both results over the current result's priority boxes."""
    boxes = s.after.priority if s.after is not None else []
    return {
        "session": s.id, "name": s.name, "kind": s.kind, "class_id": s.class_id,
        "width": s.image.width, "height": s.image.height,
        "after": describe(s, s.after, boxes) if s.after else None,
        "before": describe(s, s.before, boxes) if s.before else None,
    }


def describe(s: Session, r: Result, boxes: list[list[int]]) -> dict[str, Any]:
    """One result of session ``s``: version, token counts, priority boxes, ``cells`` ([x0, y0,
    x1, y1] pixels), ``gaussians`` (partition) and ``refined`` (encoded) Gaussians in pixels,
    and for photos ``psnr`` / ``psnr_boxes`` in dB (None where not finite or not measurable)."""
    layout = r.tokens.layout
    cells, gauss = image_pixels(layout.geometry[0], layout.regions[0], layout.grid)
    _, refined = image_pixels(r.tokens.geometry[0], layout.regions[0], layout.grid)
    out: dict[str, Any] = {
        "version": r.version,
        "n_tokens": r.n_tokens,
        "tokens_per_patch": layout.n_tokens,
        "total_tokens": layout.total_tokens,
        "priority": r.priority,
        "cells": [[round(v, 2) for v in c] for c in cells.tolist()],
        "gaussians": [[round(v, 3) for v in g] for g in gauss.tolist()],
        "refined": [[round(v, 3) for v in g] for g in refined.tolist()],
        "psnr": None,
        "psnr_boxes": None,
    }
    if s.kind == "photo":
        whole, inside = _psnr(s, r, boxes)
        out["psnr"] = round(whole, 3) if whole is not None and math.isfinite(whole) else None
        out["psnr_boxes"] = round(inside, 3) if inside is not None and math.isfinite(inside) else None
    return out


def _psnr(s: Session, r: Result, boxes: list[list[int]]) -> tuple[Optional[float], Optional[float]]:
    """PSNR (dB) of a reconstruction against the session image, whole and inside ``boxes``
    (None when there is no original image to compare with, or no box)."""
    if r.image is s.image:  # decoded from an uploaded .gpst: no original to compare with
        return None, None
    x, y = to_tensor(s.image)[0], to_tensor(r.image)[0]
    whole = psnr(y, x).item()
    if not boxes:
        return whole, None
    mask = torch.zeros(x.shape[-2:], dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    inside = psnr(y[:, :, mask].unsqueeze(2), x[:, :, mask].unsqueeze(2)).item()
    return whole, inside
