"""Training layouts of one 256x256 crop: the entropy partition's cells (``init="adaptive"``) or
a regular grid of N cells (``init="uniform"``, the paper's Init. ablation), and their arrays."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..geometry import PATCH, cells_to_arrays


def grid_or_none(n: int) -> Optional[tuple[int, int]]:
    """(rows, cols) of a near-square grid with rows * cols = n, cols >= rows, cols <= 4 rows."""
    rows = int(math.isqrt(n))
    while rows >= 1:
        if n % rows == 0:
            cols = n // rows
            return (rows, cols) if cols <= 4 * rows and cols <= PATCH // 8 else None
        rows -= 1
    return None


def grid_shape(n_tokens: int) -> tuple[int, int]:
    """(rows, cols) of the uniform layout for ``n_tokens`` cells: the most square factorization
    (64 -> 8x8, 128 -> 8 rows x 16 cols). Raises when it would be thinner than 1:4 or cells
    narrower than 8 pixels."""
    g = grid_or_none(n_tokens)
    if g is None:
        raise ValueError(
            f"n_tokens={n_tokens} does not allow a uniform grid (need rows*cols = n_tokens with "
            f"cols <= 4*rows and cells >= 8 px); use e.g. 16, 32, 64, 128, 256"
        )
    return g


def uniform_cells(n_tokens: int) -> list[tuple[int, int, int, int]]:
    """Cells ``(x0, y0, x1, y1)`` (inclusive pixel ranges) of a regular grid over a 256 patch,
    row-major."""
    rows, cols = grid_shape(n_tokens)
    ys = [round(i * PATCH / rows) for i in range(rows + 1)]
    xs = [round(i * PATCH / cols) for i in range(cols + 1)]
    return [(xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1) for r in range(rows) for c in range(cols)]


def layout_cells(image: torch.Tensor, n_tokens: int, init: str = "adaptive", weight: float = 2.5,
                 min_size: int = 8) -> np.ndarray:
    """Inclusive pixel cells ``[N,4]`` (x0,y0,x1,y1) of one ``[3,256,256]`` patch in ``[-1,1]``:
    its entropy partition (``init="adaptive"``) or the uniform grid."""
    from ..partition import grey_of, partition_patch

    if init == "uniform":
        return np.asarray(uniform_cells(n_tokens), dtype=np.int64)
    return np.asarray(partition_patch(grey_of(image[None])[0], n_tokens, weight=weight, min_size=min_size))


def layout_arrays(image: torch.Tensor, n_tokens: int, init: str = "adaptive", weight: float = 2.5,
                  min_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``g_init [N,5]`` and ``regions [N,4]`` for one ``[3,256,256]`` patch in ``[-1,1]``."""
    g, r = cells_to_arrays(layout_cells(image, n_tokens, init, weight, min_size), PATCH, PATCH)
    return torch.as_tensor(g, dtype=torch.float32), torch.as_tensor(r, dtype=torch.float32)
