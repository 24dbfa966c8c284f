"""Entropy-driven adaptive partition (docs/algorithms.md section 1), exact official semantics.

Each 256x256 patch is split greedily into ``n_tokens`` rectangular cells. The complexity of a
cell is ``E ** weight * h * w + sum(bias over the cell)`` where ``E`` is the entropy of the
gradient-magnitude histogram of the cell resized to 64x64. One module per idea:

* :mod:`.api`: the public functions (:func:`partition`, :func:`partition_patch`,
  :func:`complexities`, ...) and the dispatch between the native and the torch paths;
* :mod:`.resize`: the official bilinear resize of a cell to 64x64, bit-exact;
* :mod:`.fast_hist`: the CPU gradient histogram (float32 estimate with a proven error bound,
  exact recomputation near bin edges); on CUDA the Triton kernel
  :mod:`gpstoken.kernels.entropy_hist` computes every pixel exactly;
* :mod:`.entropy`: the entropy of the histograms, exactly as numpy sums it;
* :mod:`.complexity`: cell complexities, computed in batches and cached;
* :mod:`.greedy`: the greedy split loop (a heap with batched speculation), the torch path;
* :mod:`.priority`: priority masks and boxes as a per-pixel bias;
* :mod:`.native`: the binding of the C path ``gpstoken._cpartition`` (``csrc/cpartition.c``),
  which runs the same exact arithmetic and loop, patches on threads; identical cells (tested).

Bit parity with the official pipeline is checked against the fixtures. The options are
checked by :mod:`gpstoken.validate`. ``gpstoken.partition`` (the attribute of the package
``gpstoken``) is the function :func:`partition`; import this package's names with
``from gpstoken.partition import ...`` or from its submodules.
"""
from __future__ import annotations

from .api import complexities, grey_of, partition, partition_images, partition_patch
from .greedy import max_cells
from .native import native_available
from .priority import BIAS_QUANTUM, MAX_ABS_BIAS, MAX_ENTROPY, priority_bias
from .resize import RESIZE

__all__ = [
    "BIAS_QUANTUM", "MAX_ABS_BIAS", "MAX_ENTROPY", "RESIZE", "complexities", "grey_of", "max_cells",
    "native_available", "partition", "partition_images", "partition_patch", "priority_bias",
]
