"""Triton kernels, one per module; each has a pure-torch twin (the CPU path) it is tested against.

All the twins are in ``_torch_impl.py``; the autograd ops over the kernels in ``_wrapper.py``
(gsplat's layout). Used by :mod:`gpstoken.partition` (``entropy_hist``) and
:mod:`gpstoken.render` (``splat_forward`` / ``splat_backward``).

Triton is optional (pyproject installs it on Linux only): the kernel modules are imported
lazily, only on the CUDA paths, and :func:`triton_available` is what the dispatchers ask.
"""
from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether ``import triton`` works in this environment."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
