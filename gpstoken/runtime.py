"""Which compute paths are active here: :func:`backends` (re-exported as ``gpstoken.backends``)."""
from __future__ import annotations

from typing import Optional

import torch

from .kernels import triton_available

__all__ = ["backends", "native_cpu_bfloat16"]


def backends(device: Optional[str | torch.device] = None) -> dict[str, str]:
    """The partition and render paths used for tensors on ``device`` (default: cuda when
    available, else cpu), and what this environment offers.

    Returns ``{"device", "partition", "gradient_hist", "render", "native_partition", "triton",
    "cuda"}``: ``partition`` is ``"native C"`` (the ``gpstoken._cpartition`` extension, CPU)
    or ``"torch"``; ``gradient_hist`` and ``render`` are ``"triton"`` (CUDA with Triton
    installed) or ``"torch"``; ``native_partition`` ``"built"``/``"not built"``; ``triton``
    its version or ``"not installed"``; ``cuda`` the CUDA version or ``"not available"``.
    """
    from .partition import native_available

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(device).type == "cuda"
    kernel = "triton" if on_cuda and triton_available() else "torch"
    if triton_available():
        import triton

        triton_version = triton.__version__
    else:
        triton_version = "not installed"
    return {
        "device": str(device),
        "partition": "native C" if native_available() and not on_cuda else "torch",
        "gradient_hist": kernel,
        "render": kernel,
        "native_partition": "built" if native_available() else "not built",
        "triton": triton_version,
        "cuda": torch.version.cuda if torch.cuda.is_available() else "not available",
    }


def native_cpu_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), where bfloat16
    autocast speeds CPU inference up; elsewhere oneDNN emulates it, slower than float32."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)
