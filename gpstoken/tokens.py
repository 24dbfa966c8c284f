"""The :class:`GPSTokens` value type and its ``.gpst`` file format.

A ``.gpst`` file is one safetensors file holding four tensors

* ``geometry`` ``[B,N,5]`` and ``features`` ``[B,N,C]`` (the refined tokens),
* ``layout.geometry`` ``[B,N,5]`` and ``layout.regions`` ``[B,N,4]`` (the layout they came from),

and string metadata ``format = "gpst"``, ``format_version``, ``image_size`` and ``grid``
(JSON pairs), ``model`` (the tokenizer's portable id) and ``model_hash`` (its checkpoint's
SHA-256). Files are written atomically through
:mod:`gpstoken.io`, so a crash never leaves a half-written ``.gpst``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError, safe_open

from . import validate
from .geometry import GEOMETRY
from .images import ImageKind
from .io import IMAGE_SUFFIXES, write_safetensors
from .layout import Layout, draw_gaussians

FORMAT = "gpst"
FORMAT_VERSION = 1
_TENSORS = ("geometry", "features", "layout.geometry", "layout.regions")


def token_file(path: str | os.PathLike, name: str = "path") -> Path:
    """An output path for a token file: not a folder, not an image name (a ``.gpst`` file is
    not a picture: decode it for one). Cheap: check outputs before the work."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{name}: {path} is a folder; give a token file name inside it, "
                                f"e.g. {path / f'x.{FORMAT}'}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"{name}: {path} is an image file name, but token files are not images; name it "
                         f"{path.with_suffix(f'.{FORMAT}')} (decode the tokens for a picture)")
    return path


@dataclass(frozen=True, eq=False)
class GPSTokens:
    """Encoded GPS tokens of a batch of images.

    Attributes:
        geometry: float32 ``[B,N,5]`` refined ``(sigma_x, sigma_y, rho, mu_x, mu_y)``,
            sigma in ``(0,1)``, rho and mu in ``(-1,1)``; per-patch frames, patch-major
            (the same order and frames as ``layout``).
        features: float ``[B,N,C]`` texture features, finite.
        image_size: ``(H, W)`` of the original image (equals ``layout.image_size``).
        layout: the :class:`~gpstoken.layout.Layout` the tokens were encoded from.
        model: portable id of the tokenizer that produced them: a registry name, a Hub id
            ``owner/repo[@revision][:file]``, or the file name of a local checkpoint.
        model_hash: SHA-256 of that checkpoint file ("" when unknown); decoding with another
            checkpoint warns.
        source: the kind of image that was encoded (``decode`` returns that kind); None for
            tokens without one (e.g. loaded from a file): they decode to PIL images.

    Construction checks shapes, dtypes, devices and values (finite, sigma > 0, ``|rho| < 1``;
    :func:`gpstoken.validate.token_tensors`) and raises ValueError/TypeError naming the field.
    """

    geometry: torch.Tensor
    features: torch.Tensor
    image_size: tuple[int, int]
    layout: Layout
    model: str
    source: ImageKind | None = field(default=None, compare=False)
    model_hash: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.layout, Layout):
            raise TypeError(f"GPSTokens.layout: expected a Layout, got {type(self.layout).__name__}")
        validate.token_tensors(self.geometry, self.features, tuple(self.layout.geometry.shape))
        size = tuple(self.image_size) if isinstance(self.image_size, (tuple, list)) else self.image_size
        if size != self.layout.image_size:
            raise ValueError(f"GPSTokens.image_size: {self.image_size!r} differs from the layout's "
                             f"{self.layout.image_size}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"GPSTokens.model: expected a non-empty model id string, got {self.model!r}")
        object.__setattr__(self, "image_size", size)
        object.__setattr__(self, "geometry", self.geometry.float())

    @classmethod
    def from_array(cls, tokens: torch.Tensor, layout: Layout, model: str) -> "GPSTokens":
        """Split official-layout tokens ``[B,N,5+C]`` into geometry and features."""
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[-1] <= GEOMETRY:
            raise ValueError("tokens: expected a tensor [B,N,5+C] with C >= 1, got "
                             f"{getattr(tokens, 'shape', type(tokens))}")
        return cls(tokens[..., :GEOMETRY], tokens[..., GEOMETRY:], layout.image_size, layout, model)

    # ------------------------------------------------------------------ sizes
    @property
    def grid(self) -> tuple[int, int]:
        """``(k, m)`` 256-patches of the image."""
        return self.layout.grid

    @property
    def n_tokens(self) -> int:
        """Tokens per 256x256 patch."""
        return self.layout.n_tokens

    @property
    def total_tokens(self) -> int:
        """N, tokens per image."""
        return self.geometry.shape[1]

    @property
    def batch_size(self) -> int:
        return self.geometry.shape[0]

    @property
    def channels(self) -> int:
        """C, texture features per token."""
        return self.features.shape[2]

    @property
    def device(self) -> torch.device:
        return self.geometry.device

    def __repr__(self) -> str:
        return (
            f"GPSTokens(batch={self.batch_size}, n_tokens={self.n_tokens} per patch, channels={self.channels}, "
            f"grid={self.grid}, image_size={self.image_size}, model={self.model!r})"
        )

    def to(self, device: torch.device | str) -> "GPSTokens":
        """A copy with every tensor (layout included) on ``device``."""
        return replace(self, geometry=self.geometry.to(device), features=self.features.to(device),
                       layout=self.layout.to(device))

    def with_source(self, source: ImageKind) -> "GPSTokens":
        """A copy that remembers the kind of image it was encoded from."""
        return replace(self, source=source)

    @property
    def output_kind(self) -> ImageKind:
        """What :func:`gpstoken.decode` returns: the encoded kind, else PIL (a list for B > 1)."""
        return self.source if self.source is not None else ImageKind("pil", self.batch_size > 1)

    def as_array(self) -> torch.Tensor:
        """Tokens in the official layout ``[B,N,5+C]``: geometry then features (float32)."""
        return torch.cat([self.geometry, self.features.to(self.geometry.dtype)], dim=-1)

    # ------------------------------------------------------------------ drawing
    def draw(self, image: Any = None, *, index: int = 0, scale: int = 1) -> Image.Image:
        """Picture of the refined Gaussians (1 and 2 sigma) over their layout cells.

        Same arguments as :meth:`Layout.draw`; returns an RGB PIL image.
        """
        return draw_gaussians(self.geometry, self.layout.regions, self.image_size, self.grid,
                              image=image, index=index, scale=scale)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokens to one safetensors file (``.gpst`` recommended), atomically.

        Returns the path written; a missing folder is created (:mod:`gpstoken.io`). A folder or
        an image file name (``.png``, ...) is refused (:func:`token_file`).
        """
        path = token_file(path)
        tensors = {
            "geometry": self.geometry,
            "features": self.features,
            "layout.geometry": self.layout.geometry,
            "layout.regions": self.layout.regions,
        }
        metadata = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "image_size": json.dumps(list(self.image_size)),
            "grid": json.dumps(list(self.grid)),
            "model": self.model,
            "model_hash": self.model_hash,
        }
        return write_safetensors(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str | None = None) -> "GPSTokens":
        """Read a ``.gpst`` file written by :meth:`save` (optionally onto ``device``).

        Raises FileNotFoundError for a missing file and ValueError for a file that is not a
        safetensors file, not a gpstoken token file, of an unsupported format version, or
        inconsistent.
        """
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"load: {path} is a folder, not a token file; give the .gpst file")
        if not path.is_file():
            raise FileNotFoundError(f"load: no such token file: {path}")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                keys = set(f.keys())
                if metadata.get("format") != FORMAT:
                    raise ValueError(
                        f"load: {path} is a safetensors file but not a gpstoken token file "
                        f"(metadata format={metadata.get('format')!r}, expected {FORMAT!r}); "
                        "checkpoints are loaded with gpstoken.load_tokenizer"
                    )
                tensors = {k: f.get_tensor(k) for k in _TENSORS if k in keys}
        except SafetensorError as e:
            raise ValueError(f"load: {path} is not a .gpst token file (not a valid safetensors file: {e})") from e
        try:
            version = int(metadata.get("format_version", ""))
        except ValueError:
            version = None
        if version is None or version < 1:
            raise ValueError(f"load: {path} has an invalid format_version {metadata.get('format_version')!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"load: {path} uses .gpst format version {version}; this gpstoken reads versions up to "
                f"{FORMAT_VERSION}. Upgrade gpstoken to read it"
            )
        missing = [k for k in _TENSORS if k not in tensors]
        if missing:
            raise ValueError(f"load: {path} is missing tensors {missing}")
        try:
            image_size = tuple(json.loads(metadata["image_size"]))
            grid = tuple(json.loads(metadata["grid"]))
            model = metadata["model"]
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"load: {path} has broken metadata ({e!r}); expected image_size, grid and model") from e
        layout = Layout(tensors["layout.geometry"], tensors["layout.regions"], image_size, grid)
        tokens = cls(tensors["geometry"], tensors["features"], image_size, layout, model,
                     model_hash=metadata.get("model_hash", ""))
        return tokens.to(device) if device is not None else tokens
