"""Entropy of the gradient-magnitude histograms, exactly as the official numpy code computes it."""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from .resize import RESIZE


@lru_cache(maxsize=None)
def _full_terms() -> torch.Tensor:
    """``p * log2(p + 1e-10)`` for ``p = c / (4096 + 1e-5)``, ``c = 0..4096`` (float64 [4097]).

    A cell whose 4096 magnitudes all lie in [0, 5.5] has total 4096, so its terms are rows
    of this table: the same torch division and product, and libm log2, as ``entropy``.
    """
    p = torch.arange(RESIZE * RESIZE + 1, dtype=torch.int64).double() / (
        torch.tensor(float(RESIZE * RESIZE), dtype=torch.float64) + 1e-5)
    logs = torch.tensor([math.log2(v + 1e-10) for v in p.tolist()], dtype=torch.float64)
    return p * logs


def entropy(counts: torch.Tensor) -> list[float]:
    """Entropy (bits) per row of ``[K,256]`` upper-bin counts, exactly as numpy computes it.

    ``p = hist / (hist.sum() + 1e-5)``; ``E = -np.sum(p * log2(p + 1e-10))`` with libm log2 and
    numpy's pairwise summation over the 512 bins (the 256 lower bins are empty: their terms
    are -0.0 and leave the sum unchanged).
    """
    counts = counts.cpu().to(torch.int64)
    total = counts.sum(1, keepdim=True)
    full = (total[:, 0] == RESIZE * RESIZE)
    if bool(full.all()):
        terms = _full_terms()[counts]
    else:
        p = counts.double() / (total.double() + 1e-5)
        uniq, inv = torch.unique(p, return_inverse=True)
        logs = torch.tensor([math.log2(v + 1e-10) for v in uniq.tolist()], dtype=torch.float64)
        terms = p * logs[inv]
    # numpy pairwise sum: blocks of 128 with 8 running accumulators, blocks added as a tree.
    r = terms.view(-1, 2, 16, 8)
    acc = r[:, :, 0]
    for i in range(1, 16):
        acc = acc + r[:, :, i]
    blk = ((acc[..., 0] + acc[..., 1]) + (acc[..., 2] + acc[..., 3])) + (
        (acc[..., 4] + acc[..., 5]) + (acc[..., 6] + acc[..., 7]))
    return (-(blk[:, 0] + blk[:, 1])).tolist()
