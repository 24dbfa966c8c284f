"""User-facing model objects: :class:`Tokenizer` (encode/decode) and :class:`Generator`
(two-stage generation: layout -> calibration -> texture -> decode).

Models are loaded with :func:`load_tokenizer` / :func:`load_generator` from a registry name,
a Hub repo id or a local safetensors file (see :mod:`gpstoken.hub`).
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import hub
from .geometry import GEOMETRY, PATCH, REGION, regions_from_geometry, split_patches
from .images import pad_to_patches, to_pil
from .layout import Layout, calibrate
from .layout_bank import LayoutBank
from .models.configs import SiTConfig, TokenizerConfig
from .models.sit import SiT
from .models.tokenizer import GPSTokenizer
from .partition import partition
from .sampling import cfg_velocity, sample
from .tokens import GPSTokens

#: user-facing sampler names -> gpstoken.sampling methods
SAMPLERS = {"sde": "sde", "ode": "heun", "euler": "euler", "heun": "heun", "dopri5": "dopri5"}
SIGMA_RANGE = (1e-5, 1 - 1e-5)
RHO_LIMIT = 0.99999


def _device(device: Optional[str | torch.device]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype: Optional[str | torch.dtype], device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                 "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if dtype not in names:
            raise ValueError(f"dtype: expected one of {sorted(names)}, got {dtype!r}")
        dtype = names[dtype]
    if dtype != torch.float32 and device.type != "cuda":
        raise ValueError(f"dtype: {dtype} inference needs a CUDA device; on {device.type} use float32")
    return dtype


class Tokenizer:
    """A loaded GPSToken tokenizer.

    ``encode`` turns images into :class:`GPSTokens`; ``decode`` turns tokens back into images
    ``float32 [B,3,H,W]`` in ``[-1,1]``. Images of any size ``>= 32`` are padded to multiples
    of 256 internally and cropped back.
    """

    def __init__(self, model: GPSTokenizer, name: str, device: torch.device, dtype: torch.dtype,
                 *, decode_per_patch: bool = False):
        self.model = model.eval().to(device)
        self.name = name
        self.device = device
        self.dtype = dtype
        #: decode multi-patch images patch by patch and stitch (the official L256 path) instead
        #: of one merged map with the patch-aware decoder (S64/M128)
        self.decode_per_patch = decode_per_patch

    @property
    def config(self) -> TokenizerConfig:
        return self.model.config

    def __repr__(self) -> str:
        c = self.config
        return (f"Tokenizer({self.name!r}, tokens/patch={c.gps_num}, features={c.gps_c}, "
                f"device={self.device}, dtype={self.dtype})")

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32)

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
        with torch.inference_mode(), self._autocast():
            tokens = self.model.encode(patches, g_init, regions).float()
        tokens = tokens.reshape(b, grid[0] * grid[1] * n, -1)
        return GPSTokens(tokens[..., :GEOMETRY].contiguous(), tokens[..., GEOMETRY:].contiguous(),
                         (h, w), layout, self.name)

    def decode_tensor(self, tokens: GPSTokens) -> torch.Tensor:
        """Tokens -> float32 [B,3,H,W] in [-1,1] at the tokens' image size."""
        c = self.config.gps_c
        if tokens.features.shape[-1] != c:
            raise ValueError(
                f"tokens: have {tokens.features.shape[-1]} feature channels (model {tokens.model!r}), "
                f"but tokenizer {self.name!r} decodes {c}; decode them with model={tokens.model!r}"
            )
        if tokens.model != self.name:
            warnings.warn(f"decoding tokens of {tokens.model!r} with {self.name!r}", stacklevel=3)
        grid = tokens.layout.grid
        b = tokens.geometry.shape[0]
        arr = tokens.as_array().to(self.device).reshape(b * grid[0] * grid[1], -1, GEOMETRY + c)
        with torch.inference_mode(), self._autocast():
            images = self.model.decode(arr, grid=grid, per_patch=self.decode_per_patch).float()
        h, w = tokens.image_size
        return images[..., :h, :w].clamp(-1, 1)


@dataclass
class GenerationResult:
    """Images with the tokens and layouts they were generated from."""

    images: list
    tokens: GPSTokens


class Generator:
    """Two-stage class-conditional generator: layout (g_init) first, then texture.

    texture: SiT over ``[B, 5+C, N, 1]`` conditioned on the layout; layout_model: SiT over
    ``[B, 5, N, 1]`` (optional); layout_bank: per-class bank of real layouts (optional);
    latent_mean/latent_std: float [5+C] normalisation stats of the texture model's targets.
    """

    def __init__(self, texture: SiT, tokenizer: Tokenizer, latent_mean: torch.Tensor, latent_std: torch.Tensor,
                 *, name: str, layout_model: Optional[SiT] = None, layout_bank: Optional[LayoutBank] = None,
                 layout_stats: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                 class_names: Optional[Sequence[str]] = None):
        self.texture = texture.eval().to(tokenizer.device)
        self.tokenizer = tokenizer
        self.device = tokenizer.device
        self.latent_mean = latent_mean.float().to(self.device)
        self.latent_std = latent_std.float().to(self.device)
        self.layout_model = layout_model.eval().to(self.device) if layout_model is not None else None
        self.layout_bank = layout_bank
        self.layout_stats = layout_stats
        self.name = name
        self.class_names = list(class_names) if class_names else None

    @property
    def n_tokens(self) -> int:
        return self.texture.config.input_size[0]

    @property
    def num_classes(self) -> int:
        return self.texture.config.num_classes

    def __repr__(self) -> str:
        src = "model" if self.layout_model is not None else "bank" if self.layout_bank is not None else "user"
        return (f"Generator({self.name!r}, classes={self.num_classes}, tokens={self.n_tokens}, "
                f"layout source={src}, tokenizer={self.tokenizer.name!r})")

    def _check_class(self, class_id: int) -> int:
        if not isinstance(class_id, int) or isinstance(class_id, bool):
            if self.class_names and isinstance(class_id, str) and class_id in self.class_names:
                return self.class_names.index(class_id)
            raise TypeError(f"class_id: expected an int in [0, {self.num_classes}), got {class_id!r}")
        if not 0 <= class_id < self.num_classes:
            raise ValueError(f"class_id: must be in [0, {self.num_classes}), got {class_id}")
        return class_id

    def sample_layout(self, class_id: int, n: int, *, generator: torch.Generator, steps: int = 50,
                      progress: bool = False) -> Layout:
        """Stage 1: n layouts for a class, from the layout model (calibrated) or the bank."""
        class_id = self._check_class(class_id)
        if self.layout_model is not None:
            mean, std = (s.to(self.device) for s in self.layout_stats)
            noise = torch.randn(n, GEOMETRY, self.n_tokens, 1, generator=generator, device=self.device)
            y = torch.full((n,), class_id, device=self.device, dtype=torch.long)
            with torch.inference_mode():
                g = sample(lambda x, t: self.layout_model(x, t, y), noise, method="heun", steps=steps,
                           progress=progress)
            g = g[..., 0].transpose(1, 2) * std + mean  # [n, N, 5]
            return calibrate(_layout_from_geometry(_clamp_geometry(g)))
        if self.layout_bank is not None:
            g = self.layout_bank.sample(class_id, n, generator=generator)
            return calibrate(_layout_from_geometry(g.to(self.device).float()))
        raise ValueError(f"generator {self.name!r} has no layout model or bank: pass layout= (see gpstoken.edit_layout)")

    def generate(self, class_id: int, *, n: int = 1, seed: Optional[int] = None, layout: Optional[Layout] = None,
                 cfg_scale: float = 1.5, steps: int = 50, sampler: str = "sde", guidance_interval=(0.0, 1.0),
                 progress: bool = True) -> GenerationResult:
        """Generate ``n`` images of class ``class_id``: layout -> calibration -> texture -> decode."""
        class_id = self._check_class(class_id)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n: must be a positive int, got {n!r}")
        if cfg_scale < 1.0:
            raise ValueError(f"cfg_scale: must be >= 1 (1 disables guidance), got {cfg_scale}")
        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**63))
        if layout is None:
            layout = self.sample_layout(class_id, n, generator=gen, progress=False)
        else:
            layout = _broadcast_layout(layout, n, self.n_tokens)
        g_init = layout.geometry.to(self.device)
        channels = self.texture.config.in_channels
        noise = torch.randn(n, channels, self.n_tokens, 1, generator=gen, device=self.device)
        y = torch.full((n,), class_id, device=self.device, dtype=torch.long)
        if cfg_scale == 1.0:
            velocity = functools.partial(_texture_velocity, self.texture, y=y, cond=g_init)
        else:
            null = torch.full_like(y, self.num_classes)
            noise = torch.cat([noise, noise])
            velocity = cfg_velocity(
                functools.partial(_texture_velocity, self.texture, y=torch.cat([y, null]),
                                  cond=torch.cat([g_init, g_init])),
                cfg_scale, interval=guidance_interval)
        method = SAMPLERS.get(sampler)
        if method is None:
            raise ValueError(f"sampler: expected one of {sorted(SAMPLERS)}, got {sampler!r}")
        with torch.inference_mode():
            x = sample(velocity, noise, method=method, steps=steps, generator=gen, progress=progress)[:n]
        tokens = x[..., 0].transpose(1, 2) * self.latent_std + self.latent_mean  # [n, N, 5+C]
        geometry = _clamp_geometry(tokens[..., :GEOMETRY] + g_init)
        gps = GPSTokens(geometry, tokens[..., GEOMETRY:].contiguous(), (PATCH, PATCH), layout,
                        self.tokenizer.name)
        images = to_pil(self.tokenizer.decode_tensor(gps))
        return GenerationResult(images, gps)


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


def _checkpoint(name_or_path: str, kind: str) -> tuple[dict, dict, "hub.ResolvedCheckpoint"]:
    resolved = hub.resolve(name_or_path, kind)
    state, _ = hub.load_safetensors(resolved.path)
    if resolved.config is None:
        raise hub.CheckpointFormatError(
            f"{resolved.path}: no model config found (neither gpstoken metadata in the file nor a config.json "
            f"beside it); save it with gpstoken.hub.save_checkpoint or put the config.json next to it"
        )
    return state, resolved.config, resolved


def _model_id(name_or_path: str, resolved: "hub.ResolvedCheckpoint") -> str:
    return resolved.spec.name if resolved.spec is not None else str(name_or_path)


def _build(cls, config, state: dict, name: str):
    with torch.device("meta"):
        model = cls(config)
    hub.check_state_dict(model.state_dict(), state, name=name)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model


@functools.lru_cache(maxsize=4)
def _load_tokenizer_cached(name_or_path: str, device: torch.device, dtype: torch.dtype) -> Tokenizer:
    state, config, resolved = _checkpoint(name_or_path, "tokenizer")
    model = _build(GPSTokenizer, TokenizerConfig.from_dict(config), state, str(resolved.path))
    per_patch = bool(resolved.spec.extra.get("decode_per_patch", False)) if resolved.spec else False
    return Tokenizer(model, _model_id(name_or_path, resolved), device, dtype, decode_per_patch=per_patch)


def load_tokenizer(name_or_path: str = "default", *, device=None, dtype=None) -> Tokenizer:
    """Load a tokenizer by registry name ("default", "gpstoken-m128", ...), Hub repo id
    (``owner/repo[@revision][:filename]``) or local ``.safetensors`` file/folder. Cached.

    device: default CUDA when available; dtype: float32 (default), or float16/bfloat16 on CUDA.
    """
    dev = _device(device)
    return _load_tokenizer_cached(str(name_or_path), dev, _dtype(dtype, dev))


def _sit(state: dict, prefix: str, config: dict, name: str) -> SiT:
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise hub.CheckpointFormatError(f"{name}: no weights with the key prefix {prefix!r}")
    return _build(SiT, SiTConfig.from_dict(config), sub, f"{name} [{prefix}*]")


@functools.lru_cache(maxsize=2)
def _load_generator_cached(name_or_path: str, device: torch.device, dtype: torch.dtype) -> Generator:
    """Generator checkpoints hold the texture SiT under ``ema_model.`` (official format) and
    optionally a layout SiT under ``layout_model.`` and a layout bank under ``layout_bank.``.
    Their config: ``{"texture": SiT config, "latent_mean": [5+C], "latent_std": [5+C],
    "tokenizer": name, optional "layout", "layout_mean", "layout_std", "class_names"}``;
    registry entries of official checkpoints give the SiT architecture plus these extras."""
    state, config, resolved = _checkpoint(name_or_path, "generator")
    if resolved.spec is not None and resolved.spec.arch is not None:
        config = {"texture": config, **resolved.spec.extra}
    name = str(resolved.path)
    texture = _sit(state, "ema_model.", config["texture"], name)
    layout_model = layout_stats = None
    if "layout" in config:
        layout_model = _sit(state, "layout_model.", config["layout"], name)
        layout_stats = (torch.tensor(config["layout_mean"]), torch.tensor(config["layout_std"]))
    has_bank = any(k.startswith("layout_bank.") for k in state)
    bank = LayoutBank.from_state_dict(state, prefix="layout_bank.") if has_bank else None
    tokenizer_ref = config["tokenizer"]
    if tokenizer_ref.endswith(".safetensors") and not Path(tokenizer_ref).is_absolute():
        tokenizer_ref = str(resolved.path.parent / tokenizer_ref)
    tokenizer = load_tokenizer(tokenizer_ref, device=device, dtype=dtype)
    return Generator(texture, tokenizer, torch.tensor(config["latent_mean"]), torch.tensor(config["latent_std"]),
                     name=_model_id(name_or_path, resolved), layout_model=layout_model, layout_bank=bank,
                     layout_stats=layout_stats, class_names=config.get("class_names"))


def load_generator(name_or_path: str = "default", *, device=None, dtype=None) -> Generator:
    """Load a two-stage generator (texture SiT + layout source + paired tokenizer). Cached."""
    dev = _device(device)
    return _load_generator_cached(str(name_or_path), dev, _dtype(dtype, dev))
