"""Training data: image sources, crops, and the partition computed in DataLoader workers.

A sample is ``(image [3,256,256] in [-1,1], g_init [N,5], regions [N,4], label)``. The
partition (``init="adaptive"``, paper Alg. 1) or a regular grid of cells (``init="uniform"``,
the paper's Init. ablation) is computed in the worker, per sample.

Determinism: every sample is a pure function of ``(seed, sample id)``: the image it comes
from (an epoch-wise permutation), its rescale, crop and flip. Batches are numbered
globally, so a resumed run sees exactly the data an uninterrupted run would have seen, on
any number of processes (:class:`StepBatchSampler`).

Sources: :mod:`gpstoken.train.photos` (offline photos, folders); layouts:
:mod:`gpstoken.train.layouts`.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from .. import validate
from ..geometry import PATCH
from ..images import from_uint8, resize_short_side
from .layouts import grid_or_none, grid_shape, layout_arrays, layout_cells, uniform_cells
from .photos import (
    MVTB_PHOTOS,
    OFFLINE_CLASSES,
    OFFLINE_HELDOUT,
    ImageEntry,
    folder_images,
    offline_images,
)

__all__ = [
    "MVTB_PHOTOS", "OFFLINE_CLASSES", "OFFLINE_HELDOUT", "PATCH", "CropDataset", "DataConfig", "EvalDataset",
    "ImageEntry", "StepBatchSampler", "folder_images", "grid_shape", "heldout_images", "layout_arrays",
    "layout_cells", "make_crop", "make_loader", "offline_images", "training_images", "uniform_cells",
]

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
        return [n for n in range(lo, hi + 1) if grid_or_none(n) is not None]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return _dataclass_from_dict(cls, d, "data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dataclass_from_dict(cls, d: dict[str, Any], where: str):
    validate.config_fields(cls, d, where)
    validate.config_values(cls, d, where)
    return cls(**{k: tuple(v) if isinstance(v, list) and k != "n_tokens" else v for k, v in d.items()})


# ----------------------------------------------------------------------------- sources


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


def make_loader(dataset: Dataset, batch_sampler: Optional[Sampler | Iterable[list[Any]]] = None, *,
                batch_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
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
