"""Pictures of Gaussians and their cells (:meth:`Layout.draw`, :meth:`GPSTokens.draw`), and the
image-pixel view of a layout that the drawing and the studio's editor use."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..geometry import LAST, PATCH, to_pixel
from ..images import to_pil, to_tensor

# drawing colours (RGB)
_CELL_COLOUR = (255, 255, 255)
_SIGMA1_COLOUR = (255, 40, 40)
_SIGMA2_COLOUR = (255, 190, 0)
_GREY = (128, 128, 128)


def image_pixels(geometry: torch.Tensor, regions: torch.Tensor, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Gaussians and cells of one image in image pixel coordinates (x = column, y = row).

    geometry: ``[N,5]``, regions: ``[N,4]``, patch frames, patch-major for a ``grid = (k, m)``
    of 256 patches. Returns float64 ``cells [N,4]`` ``(x0, y0, x1, y1)`` inclusive pixel
    ranges and ``gaussians [N,5]`` ``(cx, cy, sigma_x, sigma_y, rho)`` with centres and
    sigmas in pixels (rho unchanged). Used for drawing and by the studio's editor.
    """
    g = geometry.detach().double().cpu().numpy()
    r = regions.detach().double().cpu().numpy()
    patch = np.arange(g.shape[0]) // (g.shape[0] // (grid[0] * grid[1]))
    ox, oy = (patch % grid[1]) * PATCH, (patch // grid[1]) * PATCH
    cells = to_pixel(r) + np.stack([ox, oy, ox, oy], -1)
    gaussians = np.stack([ox + to_pixel(g[:, 3]), oy + to_pixel(g[:, 4]),
                          g[:, 0] * LAST / 2.0, g[:, 1] * LAST / 2.0, g[:, 2]], -1)
    return cells, gaussians


def draw_gaussians(
    geometry: torch.Tensor,
    regions: torch.Tensor,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    *,
    image: Any = None,
    index: int = 0,
    scale: int = 1,
) -> Image.Image:
    """Draw Gaussians ``[B,N,5]`` and their cells ``[B,N,4]`` (patch frames, patch-major).

    Shared by :meth:`Layout.draw` and :meth:`gpstoken.tokens.GPSTokens.draw`. Cells are
    white rectangles; each Gaussian gets its 1-sigma (red) and 2-sigma (orange) ellipse,
    rho included. The picture has the original image size times ``scale``.
    """
    if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
        raise ValueError(f"scale: expected a positive int, got {scale!r}")
    b = geometry.shape[0]
    if not isinstance(index, int) or not -b <= index < b:
        raise ValueError(f"index: expected an int in [-{b}, {b - 1}] (batch of {b}), got {index!r}")
    h, w = image_size
    if image is None:
        canvas = Image.new("RGB", (w, h), _GREY)
    else:
        x, _ = to_tensor(image, "image")
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"image: expected size {h}x{w} (the layout's image_size), got {x.shape[-2]}x{x.shape[-1]}")
        if x.shape[0] not in (1, b):
            raise ValueError(f"image: expected 1 or {b} images, got {x.shape[0]}")
        pick = index % b if x.shape[0] > 1 else 0
        canvas = to_pil(x[pick : pick + 1])[0]
    if scale > 1:
        canvas = canvas.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    cells, gaussians = image_pixels(geometry[index], regions[index], grid)
    t = np.linspace(0.0, 2.0 * np.pi, 49)
    for (x0, y0, x1, y1), (cx, cy, px_x, px_y, rho) in zip(cells, gaussians):
        draw.rectangle([x0 * scale, y0 * scale, (x1 + 1) * scale - 1, (y1 + 1) * scale - 1], outline=_CELL_COLOUR)
        for k, colour in ((2.0, _SIGMA2_COLOUR), (1.0, _SIGMA1_COLOUR)):
            ex = cx + k * px_x * np.cos(t)
            ey = cy + k * px_y * (rho * np.cos(t) + math.sqrt(max(1.0 - rho * rho, 0.0)) * np.sin(t))
            pts = [((a + 0.5) * scale - 0.5, (c + 0.5) * scale - 0.5) for a, c in zip(ex, ey)]
            draw.line(pts, fill=colour, width=1)
    return canvas
