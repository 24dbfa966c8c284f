"""User-facing model objects: :class:`Tokenizer` (encode/decode/reconstruct) and :class:`Generator`
(two-stage generation: layout -> texture -> decode), their loaders, and save/push.

Models are loaded with :func:`load_tokenizer` / :func:`load_generator` from a registry name,
a Hub repo id, or a local safetensors file or folder (see :mod:`gpstoken.hub`); the file
formats are :mod:`gpstoken.checkpoint`'s. The module functions of :mod:`gpstoken.api` are thin
wrappers over these objects.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from . import checkpoint, hub, validate
from . import images as _images
from .checkpoint import GeneratorConfig
from .geometry import GEOMETRY, PATCH, REGION, regions_from_geometry, split_patches
from .images import pad_to_patches, to_pil
from .layout import Layout, calibrate
from .layout_bank import LayoutBank, load_layout_bank
from .models.configs import SiTConfig, TokenizerConfig
from .models.sit import SiT
from .models.tokenizer import GPSTokenizer
from .partition import partition_images
from .runtime import native_cpu_bfloat16
from .sampling import SAMPLERS, VelocityFn, cfg_velocity, check_sampling, sample
from .tokens import GPSTokens

ImageLike = Any
SIGMA_RANGE = (1e-5, 1 - 1e-5)
#: memory bounds (peak memory no longer grows with the image beyond its input-resolution maps):
#: patches per encoder batch; images of more patches than UNTILED_PATCHES are decoded
#: DECODE_TILE x DECODE_TILE patches at a time (exact, see gpstoken.models.tiled); a progress
#: bar is shown above PROGRESS_PATCHES patches
ENCODE_CHUNK = 4
UNTILED_PATCHES = 4
DECODE_TILE = 1
PROGRESS_PATCHES = 4
RHO_LIMIT = 0.99999


def _device(device: Optional[str | torch.device]) -> torch.device:
    """``device`` (None: cuda when available, else cpu) checked against what this machine has."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a device name ({e}); use 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asked for, but CUDA is not available on this machine "
                             "(no GPU, or a CPU-only torch build); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} does not exist; this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


def _dtype(dtype: Optional[str | torch.dtype], device: torch.device) -> torch.dtype:
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


class Tokenizer:
    """A loaded GPSToken tokenizer.

    ``encode`` turns images into :class:`GPSTokens`, ``decode`` turns them back into images
    of the encoded size, ``reconstruct`` does both (diffusers' ``vae.encode``/``vae.decode``
    pattern). Images of any size ``>= 32`` are padded to multiples of 256 internally and
    cropped back. ``resolved``: where the weights came from (None when built in memory).
    """

    def __init__(self, model: GPSTokenizer, name: str, device: torch.device, dtype: torch.dtype,
                 *, decode_per_patch: bool = False, resolved: Optional[hub.ResolvedCheckpoint] = None):
        self.model = model.eval().to(device)
        #: portable model id (registry name, Hub id or checkpoint file name), recorded in tokens
        self.name = name
        self.device = device
        self.dtype = dtype
        #: decode multi-patch images patch by patch and stitch (the official L256 path) instead
        #: of one merged map with the patch-aware decoder (S64/M128)
        self.decode_per_patch = decode_per_patch
        self.resolved = resolved

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
                f"device={self.device}, dtype={self.dtype})")

    def _autocast(self, dtype: Optional[torch.dtype] = None):
        dtype = self.dtype if dtype is None else dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype != torch.float32)

    # ------------------------------------------------------------------ image-level API
    def encode(self, image: ImageLike, n_tokens: Optional[int] = None, *, layout: Optional[Layout] = None) -> GPSTokens:
        """Encode images into GPS tokens.

        image: a PIL image, numpy array (HxWx3 uint8 or float in [0,1]), torch tensor
        ([3,H,W] or [B,3,H,W] float in [-1,1]) or a list of these; H, W >= 32. n_tokens: tokens
        per 256x256 patch (default: what the model was trained with); layout: a :class:`Layout`
        from :func:`gpstoken.partition` / :func:`gpstoken.edit_layout` for these images.
        Returns :class:`GPSTokens` with geometry [B, k*m*n_tokens, 5] and features [B, ..., C].
        """
        x, kind = _images.to_tensor(image)
        if layout is None:
            layout = partition_images(x, n_tokens if n_tokens is not None else self.config.gps_num)
        elif not isinstance(layout, Layout):
            raise TypeError(f"layout: expected a gpstoken.Layout, got {type(layout).__name__}")
        elif n_tokens is not None and n_tokens != layout.n_tokens:
            raise ValueError(f"n_tokens: {n_tokens} disagrees with the layout's {layout.n_tokens} tokens per patch")
        return self.encode_tensor(x, layout).with_source(kind)

    def decode(self, tokens: GPSTokens) -> ImageLike:
        """Decode :class:`GPSTokens` into images of the encoded size, in the kind that was
        encoded (PIL for tokens loaded from a file)."""
        if not isinstance(tokens, GPSTokens):
            raise TypeError(f"tokens: expected gpstoken.GPSTokens (from encode or GPSTokens.load), "
                            f"got {type(tokens).__name__}")
        return _images.from_tensor(self.decode_tensor(tokens), tokens.output_kind)

    def reconstruct(self, image: ImageLike, n_tokens: Optional[int] = None, *,
                    layout: Optional[Layout] = None) -> ImageLike:
        """``decode(encode(image, n_tokens, layout=layout))``: same kind and size as the input."""
        return self.decode(self.encode(image, n_tokens, layout=layout))

    # ------------------------------------------------------------------ tensor-level API
    def encode_tensor(self, images: torch.Tensor, layout: Layout) -> GPSTokens:
        """images: float [B,3,H,W] in [-1,1]; layout: a :class:`Layout` for those images."""
        b, _, h, w = images.shape
        if layout.image_size != (h, w):
            raise ValueError(f"layout: made for images of size {layout.image_size}, got images of size {(h, w)}")
        layout = _expand_batch(layout, b, "images")
        padded, grid = pad_to_patches(images.to(self.device))
        patches = split_patches(padded, grid)
        n = layout.n_tokens
        g_init = layout.geometry.to(self.device).reshape(len(patches), n, GEOMETRY)
        regions = layout.regions.to(self.device).reshape(len(patches), n, REGION)
        chunks = range(0, len(patches), ENCODE_CHUNK)
        with torch.inference_mode(), self._autocast():
            tokens = torch.cat([
                self.model.encode(patches[i:i + ENCODE_CHUNK], g_init[i:i + ENCODE_CHUNK],
                                  regions[i:i + ENCODE_CHUNK]).float()
                for i in tqdm(chunks, desc="encode", unit="chunk", disable=len(patches) <= PROGRESS_PATCHES,
                              leave=False, dynamic_ncols=True)
            ])
        tokens = tokens.reshape(b, grid[0] * grid[1] * n, -1)
        model_id, model_hash = hub.portable_id(self)
        return GPSTokens(tokens[..., :GEOMETRY].contiguous(), tokens[..., GEOMETRY:].contiguous(),
                         (h, w), layout, model_id, model_hash=model_hash)

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


@dataclass
class GenerationResult:
    """Images with the tokens and layouts they were generated from."""

    images: list
    tokens: GPSTokens


class Generator:
    """Two-stage class-conditional generator: layout (g_init) first, then texture.

    texture: SiT over ``[B, 5+C, N, 1]`` conditioned on the layout; config: its
    :class:`~gpstoken.checkpoint.GeneratorConfig` (normalisation, class names, sampling
    defaults, optional layout SiT config); layout_model: SiT over ``[B, 5, N, 1]`` (optional);
    layout_bank: per-class bank of real layouts (optional, e.g. the official ``initg.pickle``).
    """

    def __init__(self, texture: SiT, tokenizer: Tokenizer, config: GeneratorConfig, *, name: str,
                 layout_model: Optional[SiT] = None, layout_bank: Optional[LayoutBank] = None,
                 resolved: Optional[hub.ResolvedCheckpoint] = None):
        if tokenizer.config.gps_c + GEOMETRY != texture.config.in_channels:
            raise ValueError(
                f"tokenizer: {tokenizer.name!r} makes {tokenizer.config.gps_c + GEOMETRY}-channel tokens but "
                f"generator {name!r} makes {texture.config.in_channels}; pass the tokenizer it was trained with"
            )
        if layout_bank is not None and layout_bank.n_tokens != texture.config.input_size[0]:
            raise ValueError(f"layout_bank: holds layouts of {layout_bank.n_tokens} tokens, generator {name!r} "
                             f"makes {texture.config.input_size[0]}")
        self.texture = texture.eval().to(tokenizer.device)
        self.tokenizer = tokenizer
        self.device = tokenizer.device
        self.config = config
        self.latent_mean = torch.tensor(config.latent_mean, device=self.device)
        self.latent_std = torch.tensor(config.latent_std, device=self.device)
        self.layout_model = layout_model.eval().to(self.device) if layout_model is not None else None
        self.layout_bank = layout_bank
        self.name = name
        self.resolved = resolved

    @property
    def n_tokens(self) -> int:
        return self.texture.config.input_size[0]

    @property
    def num_classes(self) -> int:
        return self.texture.config.num_classes

    @property
    def class_names(self) -> Optional[list[str]]:
        return list(self.config.class_names) if self.config.class_names else None

    @property
    def sampling(self):
        """The :class:`~gpstoken.sampling.SamplingDefaults` ``generate`` uses."""
        return self.config.sampling

    def __repr__(self) -> str:
        src = "model" if self.layout_model is not None else "bank" if self.layout_bank is not None else "user"
        return (f"Generator({self.name!r}, classes={self.num_classes}, tokens={self.n_tokens}, "
                f"layout source={src}, tokenizer={self.tokenizer.name!r})")

    def _classes_hint(self) -> str:
        names = self.class_names
        listing = (", ".join(f"{i} {n}" for i, n in enumerate(names)) if names and len(names) <= 32
                   else f"0-{self.num_classes - 1}")
        hint = f"generator {self.name!r} has {self.num_classes} classes ({listing})"
        if self.num_classes != 1000:
            hint += ('; the 1000 ImageNet classes (e.g. 207 or "golden retriever") need the official generator: '
                     'model="gpstoken-sit-xl"')
        return hint

    def class_index(self, class_id: int | str) -> int:
        """The class index of ``class_id``: an int in ``[0, num_classes)`` or a class name
        (case-insensitive). ValueError/TypeError naming the classes otherwise."""
        if isinstance(class_id, str):
            names = [n.lower() for n in self.class_names or []]
            hits = [i for i, n in enumerate(names) if n == class_id.strip().lower()]
            if len(hits) == 1:
                return hits[0]
            if hits:
                raise ValueError(f"class_id: {class_id!r} names several classes {hits}; pass the index")
            raise ValueError(f"class_id: {class_id!r} is not a class name of this generator; {self._classes_hint()}")
        if isinstance(class_id, bool) or not isinstance(class_id, int):
            raise TypeError(f"class_id: expected an int or a class name, got {class_id!r}")
        if not 0 <= class_id < self.num_classes:
            raise ValueError(f"class_id: {class_id} is out of range; {self._classes_hint()}")
        return class_id

    def sample_layout(self, class_id: int | str, n: int, *, generator: torch.Generator, steps: int = 50,
                      progress: bool = False) -> Layout:
        """Stage 1: n layouts for a class, from the layout model (calibrated) or the bank.

        Bank layouts are real partitions of training images, used as they are, drawn without
        replacement like the official sampler (which pops each stored layout once).
        """
        class_id = self.class_index(class_id)
        layout_model = self.layout_model
        if layout_model is not None:
            mean = torch.tensor(self.config.layout_mean, device=self.device)
            std = torch.tensor(self.config.layout_std, device=self.device)
            noise = torch.randn(n, GEOMETRY, self.n_tokens, 1, generator=generator, device=self.device)
            y = torch.full((n,), class_id, device=self.device, dtype=torch.long)
            with torch.inference_mode():
                g = sample(lambda x, t: layout_model(x, t, y), noise, method="heun", steps=steps,
                           progress=progress)
            g = g[..., 0].transpose(1, 2) * std + mean  # [n, N, 5]
            return calibrate(_layout_from_geometry(_clamp_geometry(g)))
        if self.layout_bank is not None:
            if class_id not in self.layout_bank:
                raise ValueError(f"class_id: class {class_id} has no layouts in the layout bank; pass layout=")
            return _layout_from_geometry(self.layout_bank.sample(class_id, n, generator=generator).to(self.device))
        raise ValueError(
            f"generator {self.name!r} has no layout model or bank: pass layout= (see gpstoken.edit_layout), or "
            f"load it with its layout bank: load_generator(..., layout_bank='path/to/initg.pickle')"
        )

    def generate(self, class_id: int | str, *, n: int = 1, seed: Optional[int] = None,
                 layout: Optional[Layout] = None, cfg_scale: Optional[float] = None, steps: Optional[int] = None,
                 sampler: Optional[str] = None, guidance_interval: Optional[tuple[float, float]] = None,
                 progress: bool = True) -> GenerationResult:
        """Generate ``n`` 256x256 images of class ``class_id`` (index or class name):
        layout -> texture -> decode.

        layout: a user layout (from :func:`gpstoken.edit_layout` on a 256x256 image with this
        generator's token count) replaces stage 1. cfg_scale (>= 1), steps, sampler (a key of
        ``gpstoken.sampling.SAMPLERS``) and guidance_interval (``(low, high)`` flow times in
        [0, 1]) default to :attr:`sampling` (the official generator: 1.5, 250, "sde", (0.2, 1)).
        """
        class_id = self.class_index(class_id)
        n = validate.integer(n, "n", low=1)
        seed = validate.integer(seed, "seed", low=0, high=2**63 - 1) if seed is not None else None
        progress = validate.flag(progress, "progress")
        d = self.sampling
        cfg_scale = d.cfg_scale if cfg_scale is None else cfg_scale
        steps = d.steps if steps is None else steps
        sampler = d.sampler if sampler is None else sampler
        guidance_interval = d.guidance_interval if guidance_interval is None else guidance_interval
        check_sampling(steps, sampler, cfg_scale, guidance_interval)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        if layout is None:
            layout = self.sample_layout(class_id, n, generator=gen, progress=False)
        else:
            layout = _broadcast_layout(layout, n, self.n_tokens)
        g_init = layout.geometry.to(self.device)
        channels = self.texture.config.in_channels
        noise = torch.randn(n, channels, self.n_tokens, 1, generator=gen, device=self.device)
        y = torch.full((n,), class_id, device=self.device, dtype=torch.long)
        velocity: VelocityFn
        if cfg_scale == 1.0:
            velocity = functools.partial(_texture_velocity, self.texture, y=y, cond=g_init)
        else:
            null = torch.full_like(y, self.num_classes)
            noise = torch.cat([noise, noise])
            velocity = cfg_velocity(
                functools.partial(_texture_velocity, self.texture, y=torch.cat([y, null]),
                                  cond=torch.cat([g_init, g_init])),
                float(cfg_scale), interval=(float(guidance_interval[0]), float(guidance_interval[1])))
        with torch.inference_mode():
            x = sample(velocity, noise, method=SAMPLERS[sampler], steps=steps, generator=gen, progress=progress)[:n]
        targets = x[..., 0].transpose(1, 2) * self.latent_std + self.latent_mean  # [n, N, 5+C]
        tokens = checkpoint.tokens_from_targets(targets, g_init)
        model_id, model_hash = hub.portable_id(self.tokenizer)
        gps = GPSTokens(_clamp_geometry(tokens[..., :GEOMETRY]), tokens[..., GEOMETRY:].contiguous(),
                        (PATCH, PATCH), layout, model_id, model_hash=model_hash)
        images = to_pil(self.tokenizer.decode_tensor(gps))
        return GenerationResult(images, gps)

    # ------------------------------------------------------------------ save / push
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``model.safetensors`` (texture SiT under ``ema_model.``, layout SiT under
        ``layout_model.``, layout bank under ``layout_bank.``), ``config.json`` and a ``README.md``
        into ``folder``. A registered tokenizer is referred to by name; any other is saved
        beside it as ``tokenizer.safetensors``. Returns the folder."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tok = self.tokenizer
        if tok.resolved is not None and tok.resolved.spec is not None:
            tokenizer_ref = tok.resolved.spec.name
        else:
            tokenizer_ref = "tokenizer.safetensors"
            tok_state, tok_config, tok_extra = tok._checkpoint_parts()
            checkpoint.save_checkpoint(tok_state, folder / tokenizer_ref, tok_config, "tokenizer", tok_extra)
        state = {checkpoint.TEXTURE_PREFIX + k: v.detach().float() for k, v in self.texture.state_dict().items()}
        if self.layout_model is not None:
            state.update({checkpoint.LAYOUT_PREFIX + k: v.detach().float()
                          for k, v in self.layout_model.state_dict().items()})
        if self.layout_bank is not None:
            state.update(self.layout_bank.state_dict(prefix=checkpoint.BANK_PREFIX))
        config = replace(self.config, tokenizer=tokenizer_ref)
        t = self.texture.config
        about = (f"GPSToken two-stage generator: SiT ({t.depth} blocks, width {t.hidden_size}) over {self.n_tokens} "
                 f"tokens, {self.num_classes} classes, tokenizer {tokenizer_ref}")
        return hub.save_folder(folder, state, config.to_dict(), "generator", {},
                               hub.model_card("generator", self.name, about))

    def push_to_hub(self, repo_id: str, *, private: Optional[bool] = None, token: Optional[str] = None,
                    commit_message: Optional[str] = None) -> str:
        """Upload :meth:`save_pretrained`'s files to the Hub repo ``repo_id`` (created when
        missing); returns the commit URL. ``load_generator(repo_id)`` reads it back."""
        return hub.push_folder(self.save_pretrained, repo_id, private=private, token=token,
                               commit_message=commit_message or f"Upload GPSToken generator {self.name}")


def _clamp_geometry(g: torch.Tensor) -> torch.Tensor:
    """Generated geometry [..., 5] -> valid Gaussians: sigma in SIGMA_RANGE, |rho| <= RHO_LIMIT."""
    return torch.cat([g[..., :2].clamp(*SIGMA_RANGE), g[..., 2:3].clamp(-RHO_LIMIT, RHO_LIMIT), g[..., 3:]], -1)


def _texture_velocity(model: SiT, x: torch.Tensor, t: torch.Tensor, *, y: torch.Tensor,
                      cond: torch.Tensor) -> torch.Tensor:
    return model(x, t, y, cond)


def _layout_from_geometry(g: torch.Tensor) -> Layout:
    """A single-patch Layout from geometry [B,N,5] (regions implied by the Gaussians)."""
    return Layout(g.float(), regions_from_geometry(g), (PATCH, PATCH), (1, 1))


def _broadcast_layout(layout: Layout, n: int, n_tokens: int) -> Layout:
    if not isinstance(layout, Layout):
        raise TypeError(f"layout: expected a gpstoken.Layout (see gpstoken.edit_layout), got {type(layout).__name__}")
    if layout.grid != (1, 1) or layout.n_tokens != n_tokens:
        raise ValueError(
            f"layout: the generator makes one 256x256 patch of {n_tokens} tokens; got a layout with grid "
            f"{layout.grid} and {layout.n_tokens} tokens per patch (use edit_layout(..., n_tokens={n_tokens}) "
            f"on a 256x256 image)"
        )
    return _expand_batch(layout, n, "n")


def _expand_batch(layout: Layout, n: int, of: str) -> Layout:
    """``layout`` for a batch of ``n``: as is, or a batch-1 layout repeated n times."""
    if layout.batch_size == n:
        return layout
    if layout.batch_size != 1:
        raise ValueError(f"layout: has batch size {layout.batch_size}, but {of} has {n}; use 1 or {n}")
    return Layout(layout.geometry.expand(n, -1, -1).contiguous(), layout.regions.expand(n, -1, -1).contiguous(),
                  layout.image_size, layout.grid)


def _build(cls, config, state: dict, name: str):
    with torch.device("meta"):
        model = cls(config)
    state = checkpoint.fit_state_dict(model.state_dict(), state, name=name)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model


@functools.lru_cache(maxsize=4)
def _load_tokenizer_cached(name_or_path: str, arch: Optional[str], device: torch.device,
                           dtype: torch.dtype) -> Tokenizer:
    resolved = hub.resolve(name_or_path, "tokenizer", arch=arch)
    state, meta = checkpoint.load_safetensors(resolved.path)
    if resolved.config is None:  # a config.json that is not a tokenizer config, or none at all
        raise checkpoint.CheckpointFormatError(f"{resolved.path}: no tokenizer config found")
    try:
        config = TokenizerConfig.from_dict(resolved.config)
    except (TypeError, ValueError) as e:
        raise checkpoint.CheckpointFormatError(f"{resolved.path}: not a tokenizer config ({e})") from e
    model = _build(GPSTokenizer, config, state, str(resolved.path))
    per_patch = meta.get("decode_per_patch") == "true" or any(
        s.decode_per_patch for s in (resolved.spec, hub.spec_of_arch(resolved.arch, "tokenizer")) if s is not None)
    return Tokenizer(model, hub.model_id(resolved), device, dtype, decode_per_patch=per_patch,
                     resolved=resolved)


def load_tokenizer(name_or_path: str | Path = "default", *, arch: Optional[str] = None, device=None,
                   dtype=None) -> Tokenizer:
    """Load a tokenizer by registry name ("default", "gpstoken-m128", ...), Hub id
    (``owner/repo[@revision][:filename]``) or local ``.safetensors`` file / folder. Cached.

    Files as the official release publishes them (no config, possibly extra keys) load too: L256
    is recognised from its shapes, S64/M128 from the file name (``gpstoken_m128.safetensors``) or
    ``arch=`` (a ``gpstoken.models.configs.TOKENIZER_ARCHS`` name). device: default CUDA when
    available; dtype: float32 (default), or float16/bfloat16 on CUDA, or bfloat16 on a CPU with
    native bfloat16 (AVX512-BF16, AMX; :func:`gpstoken.runtime.native_cpu_bfloat16`).
    """
    dev = _device(device)
    return _load_tokenizer_cached(str(name_or_path), arch, dev, _dtype(dtype, dev))


def _sit(state: dict, prefix: str, config: SiTConfig, name: str) -> SiT:
    return _build(SiT, config, checkpoint.sub_state_dict(state, prefix, name=name), f"{name} [{prefix}*]")


def _generator_config(resolved: hub.ResolvedCheckpoint, state: dict, meta: dict) -> tuple[GeneratorConfig, bool]:
    """(config, official): the file's own config, or the official generator's for a file as the
    official release publishes it (``ema_model.*`` weights, no metadata)."""
    if resolved.config is not None:
        if "pretrained_gpstoken_means" in resolved.config:
            return GeneratorConfig.from_official(resolved.config, hub.OFFICIAL_GENERATOR.generator_config()), True
        return GeneratorConfig.from_dict(resolved.config), resolved.spec is not None and resolved.spec.arch is not None
    if checkpoint.is_official_generator(state, meta):
        return hub.OFFICIAL_GENERATOR.generator_config(), True
    raise checkpoint.CheckpointFormatError(
        f"{resolved.path}: not a generator checkpoint (no gpstoken config in it or in a config.json beside it, "
        f"and no official {checkpoint.TEXTURE_PREFIX}* weights)"
    )


def _paired_tokenizer(config: GeneratorConfig, resolved: hub.ResolvedCheckpoint, official: bool,
                      tokenizer: Optional[str | Tokenizer], device, dtype) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    ref = tokenizer if tokenizer is not None else resolved.reference(config.tokenizer)
    if tokenizer is None and official and config.tokenizer in hub.list_pretrained("tokenizer"):
        beside = resolved.sibling(hub.get_spec(config.tokenizer).filename)  # the official weights/ folder
        ref = str(beside) if beside is not None and resolved.repo_id is None else ref
    try:
        return load_tokenizer(ref, device=device, dtype=dtype)
    except checkpoint.CheckpointNotFoundError as e:
        raise checkpoint.CheckpointNotFoundError(
            f"generator {resolved.source}: its tokenizer {ref!r} cannot be found. Put the tokenizer file "
            f"next to the generator file, or pass it: load_generator(..., tokenizer='path/to/tokenizer.safetensors'). "
            f"({e})"
        ) from e


def _layout_bank(state: dict, resolved: hub.ResolvedCheckpoint, layout_bank: Optional[str | Path],
                 official: bool) -> Optional[LayoutBank]:
    if layout_bank is not None:
        return load_layout_bank(layout_bank)
    if any(k.startswith(checkpoint.BANK_PREFIX) for k in state):
        return LayoutBank.from_state_dict(state, prefix=checkpoint.BANK_PREFIX)
    if official:
        name = hub.OFFICIAL_GENERATOR.layout_bank
        path = resolved.sibling(name) if name is not None else None
        return load_layout_bank(path) if path is not None else None
    return None


@functools.lru_cache(maxsize=2)
def _load_generator_cached(name_or_path: str, tokenizer: Optional[str | Tokenizer], layout_bank: Optional[str],
                           device: torch.device, dtype: torch.dtype) -> Generator:
    resolved = hub.resolve(name_or_path, "generator")
    state, meta = checkpoint.load_safetensors(resolved.path)
    config, official = _generator_config(resolved, state, meta)
    name = str(resolved.path)
    texture = _sit(state, checkpoint.TEXTURE_PREFIX, config.texture, name)
    layout_model = _sit(state, checkpoint.LAYOUT_PREFIX, config.layout, name) if config.layout is not None else None
    bank = _layout_bank(state, resolved, layout_bank, official)
    tok = _paired_tokenizer(config, resolved, official, tokenizer, device, dtype)
    return Generator(texture, tok, config, name=hub.model_id(resolved), layout_model=layout_model,
                     layout_bank=bank, resolved=resolved)


def load_generator(name_or_path: str | Path = "default", *, tokenizer: Optional[str | Tokenizer] = None,
                   layout_bank: Optional[str | Path] = None, device=None, dtype=None) -> Generator:
    """Load a two-stage generator (texture SiT + layout source + paired tokenizer). Cached.

    name_or_path: registry name, Hub id, a ``.safetensors`` file, or a folder. The official
    generator loads as published: a folder holding ``generator.safetensors`` (and
    ``initg.pickle``, ``gpstoken_m128.safetensors``, optionally a ``config.json``) needs no
    config. tokenizer: overrides the paired tokenizer (name, path or a loaded Tokenizer);
    layout_bank: a layout bank (the official ``initg.pickle`` or a safetensors bank) for stage 1.
    """
    dev = _device(device)
    bank = str(layout_bank) if layout_bank is not None else None
    tok = tokenizer if isinstance(tokenizer, Tokenizer) or tokenizer is None else str(tokenizer)
    return _load_generator_cached(str(name_or_path), tok, bank, dev, _dtype(dtype, dev))
