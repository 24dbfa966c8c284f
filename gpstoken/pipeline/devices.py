"""The ``device`` and ``dtype`` arguments of the loaders: defaults and checks against this machine."""
from __future__ import annotations

from typing import Optional

import torch

from ..runtime import native_cpu_bfloat16


def pick_device(device: Optional[str | torch.device]) -> torch.device:
    """``device`` (None: cuda when available, else cpu) checked against what this machine has."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a device name ({e}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: {device!r} is a {dev.type} device; gpstoken runs on the CPU or on CUDA GPUs: use "
                         "'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but CUDA is not available on this machine "
                             "(no GPU, or a CPU-only torch build); use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


def pick_dtype(dtype: Optional[str | torch.dtype], device: torch.device) -> torch.dtype:
    """``dtype`` (None: float32; names such as "bf16" accepted) checked against ``device``."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"dtype: expected one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype == torch.bfloat16 and device.type == "cpu":
        if not native_cpu_bfloat16():
            raise ValueError("dtype: bfloat16 on the CPU needs native bfloat16 instructions (AVX512-BF16 or AMX), "
                             "which this CPU lacks (it would be slower than float32); use float32")
        return dtype
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"dtype: {dtype} inference needs a CUDA device (bfloat16 also runs on CPUs with native "
                         f"bfloat16); on {device.type} use float32")
    return dtype


def fast_dtype(device: torch.device) -> str:
    """The fastest inference dtype of ``device`` that keeps a tokenizer's quality: "bfloat16" on
    CUDA and on a CPU with native bfloat16 (:func:`gpstoken.runtime.native_cpu_bfloat16`),
    else "float32" (emulated bfloat16 is slower than float32)."""
    fast = device.type == "cuda" or (device.type == "cpu" and native_cpu_bfloat16())
    return "bfloat16" if fast else "float32"


def run_dtype(option: Optional[str], device: torch.device) -> str:
    """The encode dtype of a dataset job's ``--dtype`` option (``gpstoken tokenize`` / ``eval``):
    ``"auto"`` / None: :func:`fast_dtype`; ``"float32"`` or ``"bfloat16"`` as given (checked
    against ``device`` by the loader)."""
    if option not in (None, "auto", "float32", "bfloat16"):
        raise ValueError(f"--dtype: expected auto, float32 or bfloat16, got {option!r}")
    return fast_dtype(device) if option in (None, "auto") else option
