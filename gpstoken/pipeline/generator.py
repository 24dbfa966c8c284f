"""The :class:`Generator` user object: two-stage class-conditional generation (stage 1 layout
from a layout SiT or a bank of real layouts, stage 2 texture SiT with guidance), and its save / push."""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from numbers import Integral
from pathlib import Path
from typing import Optional

import torch

from .. import checkpoint, hub, validate
from ..checkpoint import GeneratorConfig
from ..geometry import GEOMETRY, PATCH, regions_from_geometry
from ..images import to_pil
from ..layout import Layout, calibrate
from ..layout_bank import LayoutBank
from ..models.sit import SiT
from ..sampling import SAMPLERS, SamplingDefaults, VelocityFn, cfg_velocity, sample
from ..tokens import GPSTokens
from .tokenizer import Tokenizer, expand_batch

SIGMA_RANGE = (1e-5, 1 - 1e-5)
RHO_LIMIT = 0.99999


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
        """The class index of ``class_id``: an int (numpy ints too) in ``[0, num_classes)`` or a class name
        (case-insensitive). ValueError/TypeError naming the classes otherwise."""
        if isinstance(class_id, str):
            names = [n.lower() for n in self.class_names or []]
            hits = [i for i, n in enumerate(names) if n == class_id.strip().lower()]
            if len(hits) == 1:
                return hits[0]
            if hits:
                raise ValueError(f"class_id: {class_id!r} names several classes {hits}; pass the index")
            raise ValueError(f"class_id: {class_id!r} is not a class name of this generator; {self._classes_hint()}")
        if isinstance(class_id, bool) or not isinstance(class_id, Integral):
            raise TypeError(f"class_id: expected an int or a class name, got {class_id!r}")
        class_id = int(class_id)  # numpy integers too
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
        given = {"cfg_scale": cfg_scale, "steps": steps, "sampler": sampler, "guidance_interval": guidance_interval}
        sampling = replace(self.sampling, **{k: v for k, v in given.items() if v is not None})  # checks them
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        if layout is None:
            layout = self.sample_layout(class_id, n, generator=gen, progress=False)
        else:
            layout = expand_batch(_check_layout(layout, self.n_tokens), n, "n")
        return self.sample_texture(class_id, layout, generator=gen, sampling=sampling, progress=progress)

    def sample_texture(self, class_id: int | str, layout: Layout, *, generator: torch.Generator,
                       sampling: Optional[SamplingDefaults] = None, progress: bool = False) -> GenerationResult:
        """Stage 2: texture tokens for ``layout`` (a :class:`Layout` of ``B`` single 256x256
        patches with this generator's token count, e.g. from :meth:`sample_layout`), decoded to
        ``B`` images of class ``class_id``.

        sampling: cfg_scale, steps, sampler and guidance_interval (default :attr:`sampling`;
        another setting: ``dataclasses.replace(gen.sampling, cfg_scale=4.0)``). ``generator``
        (on :attr:`device`) supplies the noise: ``generate(c, n=n, seed=s)`` is
        :meth:`sample_layout` then this method on one generator seeded with ``s``, so restoring
        a generator's state after stage 1 gives ``generate``'s images for several settings of
        one layout.
        """
        class_id = self.class_index(class_id)
        layout = _check_layout(layout, self.n_tokens)
        s = self.sampling if sampling is None else sampling
        if not isinstance(s, SamplingDefaults):
            raise TypeError(f"sampling: expected a gpstoken.sampling.SamplingDefaults (e.g. "
                            f"dataclasses.replace(generator.sampling, cfg_scale=4.0)), got {type(s).__name__}")
        cfg_scale, guidance_interval = s.cfg_scale, s.guidance_interval
        n = layout.batch_size
        g_init = layout.geometry.to(self.device)
        channels = self.texture.config.in_channels
        noise = torch.randn(n, channels, self.n_tokens, 1, generator=generator, device=self.device)
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
            x = sample(velocity, noise, method=SAMPLERS[s.sampler], steps=s.steps, generator=generator,
                       progress=progress)[:n]
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


def _check_layout(layout: Layout, n_tokens: int) -> Layout:
    """``layout`` when it is single-patch 256x256 layouts of ``n_tokens`` tokens; TypeError/ValueError otherwise."""
    if not isinstance(layout, Layout):
        raise TypeError(f"layout: expected a gpstoken.Layout (see gpstoken.edit_layout), got {type(layout).__name__}")
    if layout.grid != (1, 1) or layout.n_tokens != n_tokens:
        raise ValueError(
            f"layout: the generator makes one 256x256 patch of {n_tokens} tokens; got a layout with grid "
            f"{layout.grid} and {layout.n_tokens} tokens per patch (use edit_layout(..., n_tokens={n_tokens}) "
            f"on a 256x256 image)"
        )
    return layout
