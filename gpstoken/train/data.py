"""Training data: image sources, crops, and the partition computed in DataLoader workers.

A sample is ``(image [3,256,256] in [-1,1], g_init [N,5], regions [N,4], label)``. The
partition (``init="adaptive"``, paper Alg. 1) or a regular grid of cells (``init="uniform"``,
the paper's Init. ablation) is computed in the worker, per sample.

Determinism: every sample is a pure function of ``(seed, sample id)``: the image it comes
from (an epoch-wise permutation), its rescale, crop and flip. Batches are numbered
globally, so a resumed run sees exactly the data an uninterrupted run would have seen, on
any number of processes (:class:`StepBatchSampler`).

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

import functools
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from ..geometry import PATCH, cells_to_arrays
from ..images import from_uint8, resize_short_side
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


# ----------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    """Where the images come from and how samples are cut from them.

    source: ``"offline"`` or a folder of images. eval_source: folder of held-out images for a
    folder ``source`` (``None``: no evaluation set); ignored for ``"offline"``.
    labeled: return class labels (folder: one sub-folder per class).
    n_tokens: tokens per sample, an int or ``[low, high]`` (drawn per batch, inclusive; with
    ``init="uniform"`` only counts that allow a grid are drawn).
    init: ``"adaptive"`` (entropy partition) or ``"uniform"`` (regular grid of N cells).
    scale_range: the shorter side is resized to ``256 * s`` with ``s`` drawn log-uniformly in
    this range (``[1, 1]``: the paper's resize-shorter-side-to-256).
    random_crop / hflip: random 256 crop (else centre crop) and random horizontal flip.
    weight / min_size: partition parameters (``gps_adaptive_w``, minimum cell side).
    num_workers: DataLoader worker processes (the partition runs there).
    cache: a crop cache file (:mod:`gpstoken.train.crop_cache`) to read the tokenizer's
    training crops and layouts from instead of cutting them (``None``: cut them on the fly).
    """

    source: str = "offline"
    eval_source: Optional[str] = None
    labeled: bool = False
    n_tokens: Any = 128
    init: str = "adaptive"
    scale_range: tuple[float, float] = (1.0, 1.0)
    random_crop: bool = True
    hflip: bool = True
    weight: float = 2.5
    min_size: int = 8
    num_workers: int = 2
    eval_crops_per_image: int = 4
    cache: Optional[str] = None

    def __post_init__(self) -> None:
        if self.init not in ("adaptive", "uniform"):
            raise ValueError(f"data.init: expected 'adaptive' or 'uniform', got {self.init!r}")
        lo, hi = self.token_range
        if lo < 1 or hi < lo:
            raise ValueError(f"data.n_tokens: expected a positive int or [low, high], got {self.n_tokens!r}")
        if self.init == "uniform" and not self.token_choices():
            raise ValueError(f"data.n_tokens: no count in {self.n_tokens!r} allows a uniform grid (see grid_shape)")
        s0, s1 = self.scale_range
        if not 0 < s0 <= s1:
            raise ValueError(f"data.scale_range: expected 0 < low <= high, got {self.scale_range!r}")
        self.scale_range = (float(s0), float(s1))

    @property
    def token_range(self) -> tuple[int, int]:
        n = self.n_tokens
        if isinstance(n, int):
            return n, n
        if isinstance(n, (list, tuple)) and len(n) == 2:
            return int(n[0]), int(n[1])
        raise ValueError(f"data.n_tokens: expected an int or [low, high], got {n!r}")

    def token_choices(self) -> list[int]:
        """Token counts a batch may use."""
        lo, hi = self.token_range
        if self.init == "adaptive":
            return list(range(lo, hi + 1))
        return [n for n in range(lo, hi + 1) if _grid_or_none(n) is not None]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return _dataclass_from_dict(cls, d, "data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dataclass_from_dict(cls, d: dict[str, Any], where: str):
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}; known: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) and k != "n_tokens" else v for k, v in d.items()})


# ----------------------------------------------------------------------------- sources


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
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

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


def training_images(cfg: DataConfig) -> tuple[list[ImageEntry], list[str]]:
    """Training images and class names for a data config."""
    if cfg.source == "offline":
        entries = offline_images("train", cfg.labeled)
        return entries, list(OFFLINE_CLASSES) if cfg.labeled else []
    return folder_images(cfg.source, cfg.labeled)


def heldout_images(cfg: DataConfig) -> list[ImageEntry]:
    """Held-out evaluation images (empty when the config has none)."""
    if cfg.source == "offline":
        return offline_images("heldout")
    if cfg.eval_source is None:
        return []
    return folder_images(cfg.eval_source, False)[0]


# ----------------------------------------------------------------------------- layouts


def _grid_or_none(n: int) -> Optional[tuple[int, int]]:
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
    g = _grid_or_none(n_tokens)
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


# ----------------------------------------------------------------------------- crops


def make_crop(arr: np.ndarray, rng: Optional[np.random.Generator], cfg: DataConfig) -> torch.Tensor:
    """A 256x256 crop of ``arr`` (HxWx3 uint8) as ``[3,256,256]`` in ``[-1,1]``.

    With ``rng`` the scale, crop position and flip are random (per ``cfg``); without, the
    shorter side goes to 256 and the centre is cropped (the paper's evaluation crop)."""
    if rng is None:
        scale = 1.0
    else:
        lo, hi = cfg.scale_range
        scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else lo
    im = resize_short_side(Image.fromarray(arr), max(PATCH, round(PATCH * scale)))
    w, h = im.size
    if rng is not None and cfg.random_crop:
        x0, y0 = int(rng.integers(0, w - PATCH + 1)), int(rng.integers(0, h - PATCH + 1))
    else:
        x0, y0 = (w - PATCH) // 2, (h - PATCH) // 2
    out = np.array(im.crop((x0, y0, x0 + PATCH, y0 + PATCH)), dtype=np.uint8)
    if rng is not None and cfg.hflip and rng.random() < 0.5:
        out = np.ascontiguousarray(out[:, ::-1])
    return from_uint8(out).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------- datasets


class _ImageCache:
    """Per-process LRU cache of decoded source images (each DataLoader worker has its own)."""

    def __init__(self, entries: Sequence[ImageEntry], size: int = 32) -> None:
        self.entries = list(entries)
        self.get = functools.lru_cache(maxsize=size)(self._load)

    def _load(self, i: int) -> np.ndarray:
        return self.entries[i].load()


class CropDataset(Dataset):
    """Random training crops with their layouts; indexed by ``(sample_id, n_tokens)``.

    Sample ``j`` uses image ``perm_e[j % M]`` (``perm_e`` a permutation of the M images drawn
    from ``(seed, e)`` for epoch ``e = j // M``) and draws scale / crop / flip from
    ``(seed, j)``: the data stream is reproducible and independent of the process layout.
    """

    def __init__(self, entries: Sequence[ImageEntry], cfg: DataConfig, seed: int = 0) -> None:
        if not entries:
            raise ValueError("CropDataset: no images")
        self.cfg = cfg
        self.seed = int(seed)
        self.images = _ImageCache(entries)
        self.labels = [e.label for e in entries]

    def __len__(self) -> int:
        return len(self.labels)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - 4 small arrays at most, datasets live for the run
    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.labels))

    def image_index(self, sample_id: int) -> int:
        epoch, k = divmod(int(sample_id), len(self.labels))
        return int(self._permutation(epoch)[k])

    def crop(self, sample_id: int) -> torch.Tensor:
        """The ``[3,256,256]`` crop (in ``[-1,1]``) of sample ``sample_id``."""
        rng = np.random.default_rng([self.seed, 2, int(sample_id)])
        return make_crop(self.images.get(self.image_index(sample_id)), rng, self.cfg)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        sample_id, n_tokens = key
        i = self.image_index(sample_id)
        image = self.crop(sample_id)
        g, r = layout_arrays(image, n_tokens, self.cfg.init, self.cfg.weight, self.cfg.min_size)
        return {"image": image, "g_init": g, "regions": r, "label": torch.tensor(self.labels[i], dtype=torch.long)}


class EvalDataset(Dataset):
    """Fixed crops of the held-out images: the centre crop of each image at shorter side 256,
    then ``eval_crops_per_image - 1`` crops at fixed random positions and scales."""

    def __init__(self, entries: Sequence[ImageEntry], cfg: DataConfig, n_tokens: int, seed: int = 1234) -> None:
        self.cfg = cfg
        self.n_tokens = n_tokens
        self.images = _ImageCache(entries)
        self.keys = [(i, c) for i in range(len(entries)) for c in range(max(1, cfg.eval_crops_per_image))]
        self.seed = seed

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        i, c = self.keys[idx]
        rng = None if c == 0 else np.random.default_rng([self.seed, i, c])
        image = make_crop(self.images.get(i), rng, self.cfg)
        g, r = layout_arrays(image, self.n_tokens, self.cfg.init, self.cfg.weight, self.cfg.min_size)
        return {"image": image, "g_init": g, "regions": r, "label": torch.tensor(-1, dtype=torch.long)}


class StepBatchSampler(Sampler):
    """Per-process batches of ``(sample_id, n_tokens)`` for global batches ``start, start+1, ...``.

    Global batch ``b`` holds sample ids ``b*B*P .. (b+1)*B*P - 1`` for ``P`` processes of
    micro-batch ``B``; process ``rank`` takes its contiguous slice. ``n_tokens`` is drawn per
    global batch from ``choices`` (the same on every process). Infinite unless ``stop``.
    """

    def __init__(self, batch_size: int, choices: Sequence[int], *, rank: int = 0, world: int = 1,
                 start: int = 0, stop: Optional[int] = None, seed: int = 0) -> None:
        self.batch_size, self.choices = batch_size, list(choices)
        self.rank, self.world, self.start, self.stop, self.seed = rank, world, start, stop, seed

    def n_tokens(self, batch: int) -> int:
        if len(self.choices) == 1:
            return self.choices[0]
        return int(self.choices[np.random.default_rng([self.seed, 3, batch]).integers(len(self.choices))])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b = self.start
        while self.stop is None or b < self.stop:
            n = self.n_tokens(b)
            first = (b * self.world + self.rank) * self.batch_size
            yield [(first + k, n) for k in range(self.batch_size)]
            b += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("StepBatchSampler without stop is infinite")
        return max(0, self.stop - self.start)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: Dataset, batch_sampler: Optional[Sampler] = None, *, batch_size: int = 1,
                num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (one thread per worker; workers persist for infinite samplers).
    It has its own generator, so it never draws from (and shifts) the global torch RNG."""
    kw: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory,
                              worker_init_fn=_worker_init if num_workers else None,
                              generator=torch.Generator().manual_seed(0))
    if num_workers:
        kw["prefetch_factor"] = 4
        kw["persistent_workers"] = batch_sampler is not None
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kw)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kw)
