"""gpstoken: Gaussian Parameterized Spatially-adaptive image tokenization (GPSToken).

>>> import gpstoken
>>> tokens = gpstoken.encode(img, n_tokens=128)   # PIL / numpy / torch, any size >= 32
>>> img2 = gpstoken.decode(tokens)
>>> images = gpstoken.generate(class_id=3, n=4, seed=0)
>>> gpstoken.backends()   # which partition / render paths run here (native C, torch, Triton)

The model-level names are imported lazily on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

# ``partition`` and ``render`` are also package names: importing a package binds its name on
# ``gpstoken``, so these two functions are bound eagerly (after their packages load) to keep
# ``gpstoken.partition(...)`` and ``gpstoken.render(...)`` callable. Their packages' modules are
# reached with ``from`` imports (``from gpstoken.partition import native``), never via sys.modules.
from .partition import partition as partition  # noqa: E402
from .render import render as render  # noqa: E402

__version__ = "0.1.0"

_EXPORTS = {
    "encode": "api", "decode": "api", "reconstruct": "api", "edit_layout": "api", "generate": "api",
    "Layout": "layout", "calibrate": "layout", "GPSTokens": "tokens",
    "TokenDataset": "token_dataset",
    "Tokenizer": "pipeline", "Generator": "pipeline", "load_tokenizer": "pipeline", "load_generator": "pipeline",
    "backends": "runtime",
}

__all__ = sorted([*_EXPORTS, "partition", "render"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gpstoken' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
