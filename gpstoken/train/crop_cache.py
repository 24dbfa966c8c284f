"""Precomputed training crops and their entropy-partition layouts in one file.

On a GPU a tokenizer step takes a few hundredths of a second per image, while cutting a
random multi-scale crop from a large photo and partitioning it takes about 0.1-0.6 s on one
CPU core (``benchmarks/bench_train_step.py``): the data loader, not the model, sets the pace.
Building the cache pays that cost once, in parallel workers, and a run with
``data.cache = FILE`` only reads crops and cells from it:

    python -m gpstoken.train.crop_cache --config examples/configs/tiny_tokenizer_cpu.json \
        --out runs/crops.safetensors --samples 4000 --tokens 64 96 128 192 256

File format (safetensors, written atomically; this module is its one reader and writer):

* ``images`` uint8 ``[M,3,256,256]``: crop ``j`` is sample ``j`` of
  :class:`~gpstoken.train.data.CropDataset` for the config's data and seed (random
  rescale, crop and flip);
* ``cells.N`` int16 ``[M,N,4]`` for every cached token count ``N``: the inclusive pixel cells
  ``(x0, y0, x1, y1)`` of crop ``j``'s layout (the config's ``init``: entropy partition or
  uniform grid);
* metadata ``crop_cache``: JSON ``{"format_version", "token_counts", "seed", "data"}``.

A run reads sample ``j`` from crop ``j mod M`` (so the crops repeat after ``M`` samples).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..geometry import PATCH, cells_to_arrays
from ..images import from_uint8, to_uint8
from ..io import write_safetensors
from .data import CropDataset, DataConfig, layout_cells, make_loader, training_images

FORMAT_VERSION = 1
__all__ = ["CachedCrops", "build_crop_cache", "FORMAT_VERSION"]


class _CropCells(Dataset):
    """Sample ``j < n`` of a :class:`CropDataset` as uint8 ``[3,256,256]`` and its cells per count."""

    def __init__(self, crops: CropDataset, n: int, token_counts: Sequence[int]) -> None:
        self.crops, self.n, self.token_counts = crops, n, list(token_counts)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        cfg = self.crops.cfg
        image = self.crops.crop(j)
        out = {"images": to_uint8(image)}
        for n in self.token_counts:
            cells = layout_cells(image, n, cfg.init, cfg.weight, cfg.min_size)
            out[f"cells.{n}"] = torch.as_tensor(cells, dtype=torch.int16)
        return out


def build_crop_cache(cfg: DataConfig, path: str | os.PathLike, samples: int, token_counts: Sequence[int],
                     seed: int = 0) -> Path:
    """Write ``samples`` training crops of ``cfg`` (seed ``seed``) with their layouts at each
    of ``token_counts`` to ``path`` (see the module docstring). Uses ``cfg.num_workers``
    DataLoader workers. Returns the path."""
    if samples < 1:
        raise ValueError(f"samples: must be >= 1, got {samples}")
    counts = sorted({int(n) for n in token_counts})
    allowed = set(cfg.token_choices())
    bad = [n for n in counts if n not in allowed]
    if not counts or bad:
        raise ValueError(f"token_counts: {bad or 'none given'}; the data config allows {cfg.n_tokens!r} "
                         f"({cfg.init} layout)")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out: folder {path.parent} does not exist")
    crops = _CropCells(CropDataset(training_images(cfg)[0], cfg, seed), samples, counts)
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in make_loader(crops, batch_size=16, num_workers=cfg.num_workers):
        for k, v in batch.items():
            parts.setdefault(k, []).append(v)
    tensors = {k: torch.cat(v).contiguous() for k, v in parts.items()}
    meta = {"format_version": FORMAT_VERSION, "token_counts": counts, "seed": seed, "data": cfg.to_dict()}
    return write_safetensors(tensors, path, {"crop_cache": json.dumps(meta)})


class CachedCrops(Dataset):
    """Training samples read from a crop cache; indexed by ``(sample_id, n_tokens)`` like
    :class:`~gpstoken.train.data.CropDataset` (``n_tokens`` one of :attr:`token_counts`).

    Returns ``image [3,256,256]`` in ``[-1,1]``, ``g_init [N,5]``, ``regions [N,4]`` and
    ``label`` -1. The file is opened lazily in each process (DataLoader workers included).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from safetensors import safe_open

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"data.cache: no such file {self.path} (build it with "
                                    f"python -m gpstoken.train.crop_cache)")
        with safe_open(self.path, "pt") as f:
            meta = json.loads((f.metadata() or {}).get("crop_cache", "null") or "null")
            if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"data.cache: {self.path} is not a gpstoken crop cache "
                                 f"(format version {FORMAT_VERSION})")
            self.size = int(f.get_slice("images").get_shape()[0])
        self.token_counts: list[int] = list(meta["token_counts"])
        self.meta = meta
        self._file: Any = None  # safetensors safe_open, opened in each worker

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        sample_id, n_tokens = key
        if n_tokens not in self.token_counts:
            raise ValueError(f"n_tokens={n_tokens} is not cached in {self.path} (cached: {self.token_counts})")
        if self._file is None:
            self._file = safe_open(self.path, "pt")
        j = int(sample_id) % self.size
        image = from_uint8(self._file.get_slice("images")[j:j + 1][0])
        cells = self._file.get_slice(f"cells.{n_tokens}")[j:j + 1][0].long().numpy()
        g, r = cells_to_arrays(cells, PATCH, PATCH)
        return {"image": image, "g_init": torch.as_tensor(g), "regions": torch.as_tensor(r),
                "label": torch.tensor(-1, dtype=torch.long)}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # an open file does not pickle into workers


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gpstoken.train.crop_cache",
                                description="Precompute training crops and layouts for data.cache.")
    p.add_argument("--config", required=True, help="tokenizer train config JSON (its data section and seed)")
    p.add_argument("--out", required=True, help="cache file to write (.safetensors)")
    p.add_argument("--samples", type=int, default=4000, help="number of crops")
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 96, 128, 192, 256], help="token counts to cache")
    a = p.parse_args(argv)
    from .tokenizer_trainer import TokenizerTrainConfig

    try:
        cfg = TokenizerTrainConfig.from_json(a.config)
        path = build_crop_cache(cfg.data, a.out, a.samples, a.tokens, cfg.seed)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"crop_cache: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {a.samples} crops, token counts {sorted(set(a.tokens))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
