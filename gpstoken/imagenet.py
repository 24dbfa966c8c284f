"""The 1000 ImageNet-1k class names, in class-index order (``data/imagenet_classes.txt``).

The data file gives each class its comma-separated WordNet names (``"tench, Tinca tinca"``);
the first is the class's name here. The list is derived from timm's ImageNet info files
(Apache-2.0; see the file header).
"""
from __future__ import annotations

import functools
import importlib.resources

__all__ = ["imagenet_classes"]


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """Names of the 1000 classes by class index (index 207 is ``"golden retriever"``)."""
    text = (importlib.resources.files("gpstoken") / "data" / "imagenet_classes.txt").read_text(encoding="utf-8")
    rows = [line.split("\t", 1)[1] for line in text.splitlines() if line and not line.startswith("#")]
    return tuple(row.split(",")[0].strip() for row in rows)
