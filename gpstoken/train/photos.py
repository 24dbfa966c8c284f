"""Training photo sources: the offline photos that PyPI packages carry, and folders of images.

Sources
-------
* a folder of images (any sizes, searched recursively). With ``labeled=True`` every
  sub-folder of the root is one class (sorted names, ImageNet-folder layout).
* ``"offline"``: photos that PyPI packages carry (no download). Always scikit-image's
  photos and textures; also scikit-learn's ``china``/``flower``, matplotlib's
  ``grace_hopper`` and the real photos of ``mvtb-data`` (:data:`MVTB_PHOTOS`) when those
  packages are installed. The held-out photos (:data:`OFFLINE_HELDOUT`) are never used for
  training.
  The labeled variant has one class per scikit-image training image
  (:data:`OFFLINE_CLASSES`, 16 classes, including the brick / grass / gravel texture
  families); the optional packages' photos are not used there, so the class list does not
  depend on what is installed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image

from ..images import to_rgb8
from ..sources import IMAGE_EXTENSIONS, image_files

#: scikit-image images used for training; in the labeled variant, class i is the i-th name.
OFFLINE_CLASSES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "motorcycle", "page", "retina", "text",
)
#: Offline photos kept out of training, for evaluation (entry names ``source:name``), of
#: different kinds: a cup on a table, a rocket outdoors, a campus scene, flowers, a road, an
#: aerial view, a park and an indoor lab. Those from optional packages are used when installed.
OFFLINE_HELDOUT: tuple[str, ...] = (
    "skimage:coffee", "skimage:rocket", "mvtb:campus/holdout/P1070492.png", "mvtb:flowers4.png",
    "mvtb:road.png", "mvtb:mosaic/aerial-09.png", "mvtb:parks.png", "mvtb:lab-scene.png",
)
#: Training photos of ``mvtb-data`` (glob patterns under its ``images`` folder): the real
#: photos, without its calibration targets, masks, drawings, tiny images, duplicates, the
#: held-out photos and the mosaic frames that overlap the held-out aerial view.
MVTB_PHOTOS: tuple[str, ...] = (
    "58060.png", "building2-[123].png", "butterfly.jpg", "campus/P*.png", "castle.png", "castle2.png",
    "church.png", "eiffel-[12].png", "flowers[1235-9].png", "greenscreen.png", "image3.jpg", "monalisa.png",
    "mosaic/aerial2-*.png", "mosaic/aerialphoto.png", "notre-dame.png", "penguins.png", "rocks2-[lr].png",
    "roof.png", "street.png", "tags.png", "tomato_*.png", "walls-[lr].png", "yellowtargets.png", "seq/im.001.png",
)


@dataclass(frozen=True)
class ImageEntry:
    """One source image: a name, how to load it (HxWx3 uint8) and its class (or -1)."""

    name: str
    load: Callable[[], np.ndarray] = field(compare=False, repr=False)
    label: int = -1


def _as_rgb_uint8(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a.astype(np.float64) * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return _as_rgb_uint8(skimage.data.stereo_motorcycle()[0])
        return _as_rgb_uint8(getattr(skimage.data, name)())

    return load


def _file_loader(path: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(to_rgb8(im, path), dtype=np.uint8)

    return load


def _sklearn_loader(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return _as_rgb_uint8(load_sample_images().images[index])

    return load


def _require_skimage() -> None:
    try:
        import skimage.data  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "the offline training source needs scikit-image: pip install 'gpstoken[train]'"
        ) from e


def _mvtb_root() -> Optional[Path]:
    """The ``images`` folder of the ``mvtb-data`` package, or None when it is not installed."""
    try:
        import mvtbdata
    except ImportError:
        return None
    return Path(os.path.dirname(mvtbdata.__file__)) / "images"


def _heldout_entry(name: str) -> Optional[ImageEntry]:
    """The entry of one :data:`OFFLINE_HELDOUT` name, or None when its package is missing."""
    source, rel = name.split(":", 1)
    if source == "skimage":
        return ImageEntry(name, _skimage_loader(rel))
    root = _mvtb_root()
    return ImageEntry(name, _file_loader(str(root / rel))) if root is not None else None


def offline_images(split: str = "train", labeled: bool = False) -> list[ImageEntry]:
    """The offline photo set (see the module docstring).

    split: ``"train"`` or ``"heldout"`` (:data:`OFFLINE_HELDOUT`, those installed). labeled:
    only the scikit-image classes (:data:`OFFLINE_CLASSES`), each with its class index.
    """
    _require_skimage()
    if split == "heldout":
        return [e for e in map(_heldout_entry, OFFLINE_HELDOUT) if e is not None]
    if split != "train":
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
    entries = [ImageEntry(f"skimage:{n}", _skimage_loader(n), i if labeled else -1)
               for i, n in enumerate(OFFLINE_CLASSES)]
    if labeled:
        return entries
    try:
        import sklearn.datasets  # noqa: F401

        entries += [ImageEntry("sklearn:china", _sklearn_loader(0)), ImageEntry("sklearn:flower", _sklearn_loader(1))]
    except ImportError:
        pass
    try:
        import matplotlib.cbook

        path = str(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        entries.append(ImageEntry("matplotlib:grace_hopper", _file_loader(path)))
    except (ImportError, OSError, ValueError):
        pass
    root = _mvtb_root()
    if root is not None:
        files = sorted({p for pattern in MVTB_PHOTOS for p in root.glob(pattern) if p.is_file()})
        entries += [ImageEntry(f"mvtb:{p.relative_to(root).as_posix()}", _file_loader(str(p))) for p in files]
    return entries


def folder_images(root: str | os.PathLike, labeled: bool = False) -> tuple[list[ImageEntry], list[str]]:
    """Images under ``root`` (recursive) and the class names (sorted sub-folders when labeled)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data source: {root} is not a folder of images")
    if not labeled:
        files = image_files(root)
        classes: list[str] = []
        entries = [ImageEntry(str(p.relative_to(root)), _file_loader(str(p))) for p in files]
    else:
        classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not classes:
            raise ValueError(f"data source: labeled=True needs one sub-folder per class under {root}")
        entries = [ImageEntry(str(p.relative_to(root)), _file_loader(str(p)), i)
                   for i, c in enumerate(classes) for p in image_files(root / c)]
    if not entries:
        raise ValueError(f"data source: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return entries, classes
