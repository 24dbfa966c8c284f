"""The :class:`Tokenizer` user object: images <-> GPS tokens (encode / decode / reconstruct),
with bounded memory on large images, and its save / push."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from .. import hub
from .. import images as _images
from ..geometry import GEOMETRY, REGION, split_patches
from ..images import pad_to_patches
from ..layout import Layout
from ..models.configs import TokenizerConfig
from ..models.memory_format import set_inference_format
from ..models.token_fit import fit_tokens
from ..models.tokenizer import GPSTokenizer
from ..partition import partition_images
from ..tokens import GPSTokens
from ..validate import integer

ImageLike = Any
#: memory bounds (peak memory no longer grows with the image beyond its input-resolution maps):
#: patches per encoder batch; images of more patches than UNTILED_PATCHES are decoded
#: DECODE_TILE x DECODE_TILE patches at a time (exact, see gpstoken.models.tiled); a progress
#: bar is shown for images of more than PROGRESS_PATCHES patches (not for batches of small images)
ENCODE_CHUNK = 4
UNTILED_PATCHES = 4
DECODE_TILE = 1
PROGRESS_PATCHES = 4


class Tokenizer:
    """A loaded GPSToken tokenizer.

    ``encode`` turns images into :class:`GPSTokens`, ``decode`` turns them back into images
    of the encoded size, ``reconstruct`` does both (diffusers' ``vae.encode``/``vae.decode``
    pattern). Images of any size ``>= 32`` are padded to multiples of 256 internally and
    cropped back. ``resolved``: where the weights came from (None when built in memory).
    ``fit_steps``: steps of test-time fitting after the encoder (:mod:`gpstoken.models.token_fit`;
    0 = the encoder's tokens as they are, as in the official models); the checkpoint's
    ``fit_steps`` metadata sets it (4 for the embedded default), ``encode(..., fit_steps=)``
    overrides it per call.
    """

    def __init__(self, model: GPSTokenizer, name: str, device: torch.device, dtype: torch.dtype,
                 *, decode_per_patch: bool = False, resolved: Optional[hub.ResolvedCheckpoint] = None,
                 fit_steps: int = 0):
        self.model = model.eval().to(device)
        set_inference_format(self.model, device)
        #: portable model id (registry name, Hub id or checkpoint file name), recorded in tokens
        self.name = name
        self.device = device
        self.dtype = dtype
        #: decode multi-patch images patch by patch and stitch (the official L256 path) instead
        #: of one merged map with the patch-aware decoder (S64/M128)
        self.decode_per_patch = decode_per_patch
        self.resolved = resolved
        self.fit_steps = fit_steps

    @property
    def config(self) -> TokenizerConfig:
        return self.model.config

    @property
    def checkpoint_hash(self) -> str:
        """SHA-256 of the loaded checkpoint file ("" for a model not loaded from a file)."""
        return hub.portable_id(self)[1]

    def __repr__(self) -> str:
        c = self.config
        return (f"Tokenizer({self.name!r}, tokens/patch={c.gps_num}, features={c.gps_c}, "
                f"fit_steps={self.fit_steps}, device={self.device}, dtype={self.dtype})")

    def _autocast(self, dtype: Optional[torch.dtype] = None):
        dtype = self.dtype if dtype is None else dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    # ------------------------------------------------------------------ image-level API
    def encode(self, image: ImageLike, n_tokens: Optional[int] = None, *, layout: Optional[Layout] = None,
               fit_steps: Optional[int] = None) -> GPSTokens:
        """Encode images into GPS tokens.

        image: a PIL image, numpy array (HxWx3 uint8 or float in [0,1]), torch tensor
        ([3,H,W] or [B,3,H,W] float in [-1,1]) or a list of these; H, W >= 32. n_tokens: tokens
        per 256x256 patch (default: what the model was trained with); layout: a :class:`Layout`
        from :func:`gpstoken.partition` / :func:`gpstoken.edit_layout` for these images;
        fit_steps: test-time fitting steps (default ``self.fit_steps``; 0: none).
        Returns :class:`GPSTokens` with geometry [B, k*m*n_tokens, 5] and features [B, ..., C].
        """
        fit_steps = self._fit_steps(fit_steps)
        x, kind = _images.to_tensor(image)
        if layout is None:
            layout = partition_images(x, n_tokens if n_tokens is not None else self.config.gps_num)
        elif not isinstance(layout, Layout):
            raise TypeError(f"layout: expected a gpstoken.Layout, got {type(layout).__name__}")
        elif n_tokens is not None and n_tokens != layout.n_tokens:
            raise ValueError(f"n_tokens: {n_tokens} disagrees with the layout's {layout.n_tokens} tokens per patch")
        return self.encode_tensor(x, layout, fit_steps=fit_steps).with_source(kind)

    def _fit_steps(self, fit_steps: Optional[int]) -> int:
        return self.fit_steps if fit_steps is None else integer(fit_steps, "fit_steps", low=0)

    def decode(self, tokens: GPSTokens) -> ImageLike:
        """Decode :class:`GPSTokens` into images of the encoded size, in the kind that was
        encoded (PIL for tokens loaded from a file)."""
        if not isinstance(tokens, GPSTokens):
            raise TypeError(f"tokens: expected gpstoken.GPSTokens (from encode or GPSTokens.load), "
                            f"got {type(tokens).__name__}")
        return _images.from_tensor(self.decode_tensor(tokens), tokens.output_kind)

    def reconstruct(self, image: ImageLike, n_tokens: Optional[int] = None, *,
                    layout: Optional[Layout] = None, fit_steps: Optional[int] = None) -> ImageLike:
        """``decode(encode(image, n_tokens, layout=layout, fit_steps=fit_steps))``: same kind and
        size as the input."""
        return self.decode(self.encode(image, n_tokens, layout=layout, fit_steps=fit_steps))

    # ------------------------------------------------------------------ tensor-level API
    def encode_tensor(self, images: torch.Tensor, layout: Layout, *, fit_steps: Optional[int] = None) -> GPSTokens:
        """images: float [B,3,H,W] in [-1,1]; layout: a :class:`Layout` for those images;
        fit_steps: as in :meth:`encode` (trusted: an int >= 0 or None)."""
        fit_steps = self.fit_steps if fit_steps is None else fit_steps
        b, _, h, w = images.shape
        if layout.image_size != (h, w):
            raise ValueError(f"layout: made for images of size {layout.image_size}, got images of size {(h, w)}")
        layout = expand_batch(layout, b, "images")
        padded, grid = pad_to_patches(images.to(self.device))
        patches = split_patches(padded, grid)
        n = layout.n_tokens
        g_init = layout.geometry.to(self.device).reshape(len(patches), n, GEOMETRY)
        regions = layout.regions.to(self.device).reshape(len(patches), n, REGION)
        chunks = range(0, len(patches), ENCODE_CHUNK)
        tokens = torch.cat([
            self._encode_chunk(patches[i:i + ENCODE_CHUNK], g_init[i:i + ENCODE_CHUNK], regions[i:i + ENCODE_CHUNK],
                               fit_steps)
            for i in tqdm(chunks, desc="encode", unit="chunk", disable=grid[0] * grid[1] <= PROGRESS_PATCHES,
                          leave=False, dynamic_ncols=True)
        ])
        tokens = tokens.reshape(b, grid[0] * grid[1] * n, -1)
        model_id, model_hash = hub.portable_id(self)
        return GPSTokens(tokens[..., :GEOMETRY].contiguous(), tokens[..., GEOMETRY:].contiguous(),
                         (h, w), layout, model_id, model_hash=model_hash)

    def _encode_chunk(self, patches: torch.Tensor, g_init: torch.Tensor, regions: torch.Tensor,
                      fit_steps: int) -> torch.Tensor:
        """patches: float [P,3,256,256] -> float32 tokens [P,N,5+C], fitted to each patch alone."""
        with torch.inference_mode(), self._autocast():
            tokens = self.model.encode(patches, g_init, regions).float()
        if not fit_steps:
            return tokens
        with self._autocast():
            return fit_tokens(self.model.decode, tokens, patches, fit_steps)

    def decode_tensor(self, tokens: GPSTokens) -> torch.Tensor:
        """Tokens -> float32 [B,3,H,W] in [-1,1] at the tokens' image size."""
        c = self.config.gps_c
        if tokens.features.shape[-1] != c:
            raise ValueError(
                f"tokens: have {tokens.features.shape[-1]} feature channels (model {tokens.model!r}), "
                f"but tokenizer {self.name!r} decodes {c}; decode them with model={tokens.model!r}"
            )
        if tokens.model_hash and self.checkpoint_hash and tokens.model_hash != self.checkpoint_hash:
            warnings.warn(f"tokens were made by {tokens.model!r} (checkpoint sha256 {tokens.model_hash[:12]}...), "
                          f"decoding with {self.name!r} (sha256 {self.checkpoint_hash[:12]}...): another checkpoint",
                          stacklevel=3)
        elif tokens.model != self.name:
            warnings.warn(f"decoding tokens of {tokens.model!r} with {self.name!r}", stacklevel=3)
        grid = tokens.layout.grid
        b = tokens.geometry.shape[0]
        arr = tokens.as_array().to(self.device).reshape(b * grid[0] * grid[1], -1, GEOMETRY + c)
        images = self._decode(arr, grid, self.dtype)
        if self.dtype != torch.float32 and not bool(torch.isfinite(images).all()):
            warnings.warn(f"decoding in {self.dtype} gave non-finite values; decoded again in float32",
                          RuntimeWarning, stacklevel=3)
            images = self._decode(arr, grid, torch.float32)
        h, w = tokens.image_size
        return images[..., :h, :w].clamp(-1, 1)

    def _decode(self, arr: torch.Tensor, grid: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """arr: float [B*k*m,N,5+C] -> float32 [B,3,256k,256m]; tiled above UNTILED_PATCHES patches."""
        big = grid[0] * grid[1] > UNTILED_PATCHES
        with torch.inference_mode(), self._autocast(dtype):
            return self.model.decode(arr, grid=grid, per_patch=self.decode_per_patch, tile=DECODE_TILE if big else None,
                                     progress=grid[0] * grid[1] > PROGRESS_PATCHES).float()

    # ------------------------------------------------------------------ save / push
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` (weights + config metadata), ``config.json`` and a
        ``README.md`` model card into ``folder`` (created); :func:`load_tokenizer` reads it back
        from the folder or, once pushed, from ``"owner/repo"``. Returns the folder."""
        state, config, extra = self._checkpoint_parts()
        return hub.save_folder(folder, state, config, "tokenizer", extra,
                               hub.model_card("tokenizer", self.name, _describe_tokenizer(self.config)))

    def _checkpoint_parts(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, str]]:
        """(state, config, extra metadata) of a tokenizer checkpoint of this model."""
        state = {k: v.detach().float() for k, v in self.model.state_dict().items()}
        extra = {"decode_per_patch": "true"} if self.decode_per_patch else {}
        if self.fit_steps:
            extra["fit_steps"] = str(self.fit_steps)
        return state, self.config.to_dict(), extra

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: Optional[str] = None) -> str:
        """Upload :meth:`save_pretrained`'s files to the Hub repo ``repo_id`` (created when
        missing) with ``huggingface_hub``; returns the commit URL."""
        return hub.push_folder(self.save_pretrained, repo_id, private=private, token=token,
                               commit_message=commit_message or f"Upload GPSToken tokenizer {self.name}")


def _describe_tokenizer(c: TokenizerConfig) -> str:
    return (f"GPSToken tokenizer: {c.gps_num} tokens per 256x256 patch, {c.gps_c} feature channels, "
            f"{c.gpsenc_n}-layer encoder of width {c.gpsenc_c}")


def expand_batch(layout: Layout, n: int, of: str) -> Layout:
    """``layout`` for a batch of ``n``: as is, or a batch-1 layout repeated n times."""
    if layout.batch_size == n:
        return layout
    if layout.batch_size != 1:
        raise ValueError(f"layout: has batch size {layout.batch_size}, but {of} has {n}; use 1 or {n}")
    return Layout(layout.geometry.expand(n, -1, -1).contiguous(), layout.regions.expand(n, -1, -1).contiguous(),
                  layout.image_size, layout.grid)
