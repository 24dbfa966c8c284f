""":class:`TokenDataset`: the tokens of a ``gpstoken tokenize`` folder as a torch Dataset."""
from __future__ import annotations

import bisect
import functools
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from . import shards
from .layout import Layout
from .tokens import GPSTokens


class TokenDataset(Dataset):
    """Tokens written by ``gpstoken tokenize OUT`` (format: :mod:`gpstoken.shards`).

    ``ds[i]`` is a dict: ``geometry`` float32 ``[N,5]``, ``features`` float32 ``[N,C]``,
    ``layout_geometry`` float32 ``[N,5]``, ``layout_regions`` float32 ``[N,4]``,
    ``source_size`` int64 ``[2]`` (H, W before preprocessing), ``index`` (position in the
    source), ``label`` (class index, -1 when unlabeled; names in :attr:`classes`) and ``id``
    (source id); N = tokens per image. Images the run skipped are not
    in it (``manifest["skipped"]``). Shards are read lazily (the last few stay in memory),
    so it works in DataLoader workers. :meth:`tokens` gives :class:`GPSTokens` to decode.
    """

    def __init__(self, root: str | os.PathLike, *, cache_shards: int = 2) -> None:
        self.root = Path(root)
        self.manifest = shards.read_manifest(self.root)
        counts = [s["images"] for s in self.manifest["shards"]]
        self._files = [s["file"] for s in self.manifest["shards"]]
        self._starts = [sum(counts[:i]) for i in range(len(counts))]
        self._len = sum(counts)
        self._load = functools.lru_cache(maxsize=max(1, cache_shards))(self._read)

    def _read(self, s: int) -> tuple[dict[str, torch.Tensor], list[str]]:
        path = self.root / self._files[s]
        info = shards.shard_info(path)
        if info is None:
            raise FileNotFoundError(f"TokenDataset: shard {path} is missing or unreadable")
        return shards.read_shard(path), info["ids"]

    @property
    def n_tokens(self) -> int:
        """Tokens per 256x256 patch."""
        return int(self.manifest["n_tokens"])

    @property
    def classes(self) -> list[str]:
        """Class names of a labeled source (``gpstoken tokenize --labeled``), else empty."""
        return list(self.manifest.get("classes", []))

    @property
    def model(self) -> str:
        """Id of the tokenizer that wrote the tokens."""
        return str(self.manifest["model"])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the preprocessed images the tokens encode."""
        h, w = self.manifest["image_size"]
        return int(h), int(w)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return (f"TokenDataset({str(self.root)!r}, images={len(self)}, n_tokens={self.n_tokens}, "
                f"image_size={self.image_size}, model={self.model!r})")

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"TokenDataset index: expected an int, got {type(i).__name__}")
        if not -self._len <= i < self._len:
            raise IndexError(f"TokenDataset index {i} out of range for {self._len} images")
        i %= self._len
        s = bisect.bisect_right(self._starts, i) - 1  # the last shard starting at or before i is not empty
        tensors, ids = self._load(s)
        r = i - self._starts[s]
        return {"geometry": tensors["geometry"][r], "features": tensors["features"][r],
                "layout_geometry": tensors["layout.geometry"][r], "layout_regions": tensors["layout.regions"][r],
                "source_size": tensors["source_size"][r], "index": int(tensors["index"][r]),
                "label": int(tensors["label"][r]), "id": ids[r]}

    def tokens(self, i: int) -> GPSTokens:
        """Item ``i`` as :class:`GPSTokens` (batch 1), e.g. for ``Tokenizer.decode_tensor``."""
        item = self[i]
        layout = Layout(item["layout_geometry"][None], item["layout_regions"][None], self.image_size)
        return GPSTokens(item["geometry"][None], item["features"][None], self.image_size, layout, self.model)
