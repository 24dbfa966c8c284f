"""Tokenizer training (paper recipe): L1/L2 + optional ST-LPIPS + PatchGAN hinge loss with a
VQGAN adaptive weight, Adam(0.5, 0.9), EMA, periodic PSNR/SSIM on held-out crops, EMA export
in the official key format.

>>> from gpstoken.train import TokenizerTrainConfig, train_tokenizer
>>> cfg = TokenizerTrainConfig.from_json("examples/configs/tiny_tokenizer.json")
>>> summary = train_tokenizer(cfg, "runs/tiny_tok")   # runs/tiny_tok/export/tokenizer.safetensors
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..images import to_uint8
from ..io import save_image
from ..metrics import psnr, ssim
from ..models.configs import TOKENIZER_ARCHS, TokenizerConfig
from ..models.tokenizer import GPSTokenizer
from .common import Run, RunConfig, architecture, lr_factor, set_lr
from .data import CropDataset, EvalDataset, StepBatchSampler, heldout_images, make_loader, training_images
from .ema import EMA
from .losses import (
    PatchDiscriminator,
    adaptive_weight,
    hinge_d_loss,
    hinge_g_loss,
    maybe_perceptual,
    reconstruction_loss,
)


@dataclass
class TokenizerTrainConfig(RunConfig):
    """Tokenizer training options (JSON fields; see :class:`RunConfig` for the common ones).

    model: a registered architecture name (``gpstoken.models.configs.TOKENIZER_ARCHS``) or a
    ``TokenizerConfig`` dict. l1_weight / l2_weight: pixel losses. perceptual_weight: ST-LPIPS
    (optional package; 0 disables). disc_weight: PatchGAN hinge loss weight (0 disables),
    scaled by the adaptive weight when ``adaptive_disc_weight``; the GAN starts at
    ``disc_start`` optimizer steps. disc_lr: defaults to ``lr``. init_from: a safetensors
    tokenizer to start from (fine-tuning). freeze: parameter-name prefixes (official keys,
    e.g. ``"preprocess_img"`` for the encoder's full-resolution stem) kept fixed: they get
    no gradient, which also skips their backward pass. eval_n_tokens: tokens of the evaluation
    crops (default: the largest training count). sample_count: images in the PNG sample grids.
    """

    model: Any = "gpstoken-m128"
    betas: tuple[float, float] = (0.5, 0.9)
    l1_weight: float = 1.0
    l2_weight: float = 0.0
    perceptual_weight: float = 0.0
    perceptual_net: str = "alex"
    disc_weight: float = 0.5
    disc_start: int = 20000
    disc_channels: int = 64
    disc_layers: int = 3
    disc_lr: Optional[float] = None
    adaptive_disc_weight: bool = True
    init_from: Optional[str] = None
    freeze: tuple[str, ...] = ()
    eval_n_tokens: Optional[int] = None
    sample_count: int = 8

    def tokenizer_config(self) -> TokenizerConfig:
        return architecture(self.model, TOKENIZER_ARCHS, TokenizerConfig)


def load_weights(path: str | os.PathLike, model: torch.nn.Module, prefix: str = "") -> None:
    """Load the weights of a safetensors file (those under ``prefix``, prefix stripped) into
    ``model``, checked by :func:`gpstoken.checkpoint.fit_state_dict` (extra keys dropped with a
    warning, missing / mis-shaped / non-finite ones refused)."""
    from ..checkpoint import fit_state_dict, load_safetensors, sub_state_dict

    state, _ = load_safetensors(path)
    if prefix:
        state = sub_state_dict(state, prefix, name=f"init_from {path}")
    state = fit_state_dict(model.state_dict(), state, name=f"init_from {path}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Save rows of ``[B,3,H,W]`` images in ``[-1,1]`` as one PNG grid."""
    grid = torch.cat([torch.cat(list(r.float().cpu().clamp(-1, 1)), dim=2) for r in rows], dim=1)
    arr = to_uint8(grid).permute(1, 2, 0).numpy()
    save_image(Image.fromarray(np.ascontiguousarray(arr)), path)


def export_tokenizer(model: torch.nn.Module, config: TokenizerConfig, path: str | os.PathLike, *,
                     dtype: str = "float32", extra_metadata: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model``'s weights (official keys) to a safetensors file loadable by
    ``gpstoken.load_tokenizer`` / ``GPSTokenizer.load_state_dict(strict=True)``."""
    from ..checkpoint import save_checkpoint

    dt = torch.float16 if dtype == "float16" else torch.float32
    state = {k: v.detach().to("cpu", dt if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    save_checkpoint(state, path, config.to_dict(), "tokenizer", extra_metadata or {})
    return Path(path)


def freeze_parameters(model: torch.nn.Module, prefixes: tuple[str, ...] | list[str]) -> set[str]:
    """Set ``requires_grad=False`` on the parameters whose names start with one of
    ``prefixes``; returns their names. Raises when a prefix names no parameter."""
    names = [n for n, _ in model.named_parameters()]
    frozen: set[str] = set()
    for prefix in prefixes:
        hit = {n for n in names if n == prefix or n.startswith(prefix.rstrip(".") + ".")}
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise ValueError(f"freeze: {prefix!r} names no parameter; top-level modules: {tops}")
        frozen |= hit
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return frozen


class TokenizerTrainer:
    """Builds the models, optimizers and data of a tokenizer run and trains it (see module doc)."""

    def __init__(self, cfg: TokenizerTrainConfig, out: str | os.PathLike) -> None:
        self.cfg = cfg
        self.run = Run(cfg, out, "tokenizer")
        acc = self.run.accelerator
        self.model_config = cfg.tokenizer_config()
        with self.run.seeded():
            model = GPSTokenizer(self.model_config)
            disc = PatchDiscriminator(3, cfg.disc_channels, cfg.disc_layers)
        if cfg.init_from:
            load_weights(cfg.init_from, model)
        frozen = freeze_parameters(model, cfg.freeze)
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
        self.ema.model.to(self.run.device)
        self.perceptual = maybe_perceptual(cfg.perceptual_weight, cfg.perceptual_net)
        if self.perceptual is not None:
            self.perceptual.to(self.run.device)
        if cfg.compile:
            model.compile()
        trainable = [p for name, p in model.named_parameters() if name not in frozen]
        opt_g = torch.optim.Adam(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr or cfg.lr, betas=cfg.betas)
        self.model, self.disc, self.opt_g, self.opt_d = acc.prepare(model, disc, opt_g, opt_d)
        acc.register_for_checkpointing(self.ema)
        self.entries, _ = training_images(cfg.data)
        self.heldout = heldout_images(cfg.data)
        self._eval_batch: Optional[dict[str, torch.Tensor]] = None

    @property
    def raw_model(self) -> GPSTokenizer:
        return self.run.accelerator.unwrap_model(self.model)

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        cfg, run = self.cfg, self.run
        dataset: Dataset = CropDataset(self.entries, cfg.data, cfg.seed)
        choices = cfg.data.token_choices()
        if cfg.data.cache:
            from .crop_cache import CachedCrops  # imported here: `python -m gpstoken.train.crop_cache` runs it

            cached = CachedCrops(cfg.data.cache)
            choices = [n for n in cached.token_counts if n in choices]
            if not choices:
                raise ValueError(f"data.cache: {cfg.data.cache} caches token counts {cached.token_counts}, "
                                 f"none in data.n_tokens {cfg.data.n_tokens!r}")
            dataset = cached
        sampler = StepBatchSampler(cfg.batch_size, choices, rank=run.rank, world=run.world,
                                   start=run.step * cfg.grad_accum, seed=cfg.seed)
        loader = make_loader(dataset, sampler,
                             num_workers=cfg.data.num_workers, pin_memory=run.device.type == "cuda")
        for batch in loader:
            yield _to_device(batch, run.device)

    def _gan_active(self) -> bool:
        return self.cfg.disc_weight > 0 and self.run.step >= self.cfg.disc_start

    def train_step(self, batches: Iterator[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over ``grad_accum`` micro-batches; returns mean losses."""
        cfg, run, acc = self.cfg, self.run, self.run.accelerator
        lr = cfg.lr * lr_factor(run.step, cfg.max_steps, cfg.lr_warmup, cfg.lr_schedule)
        set_lr(self.opt_g, lr)
        set_lr(self.opt_d, (cfg.disc_lr or cfg.lr) * lr / cfg.lr)
        gan = self._gan_active()
        raw_disc = acc.unwrap_model(self.disc)
        last_layer = self.raw_model.decoder.conv_out.weight
        stats: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last else acc.no_sync(self.model)
            with sync:
                with run.autocast():
                    recon, _ = self.model(batch["image"], batch["g_init"], batch["regions"])
                recon = recon.float()
                rec = reconstruction_loss(recon, batch["image"], cfg.l1_weight, cfg.l2_weight)
                nll = rec
                terms = {"rec": rec.detach()}
                if self.perceptual is not None:
                    p = self.perceptual(recon, batch["image"])
                    nll = nll + cfg.perceptual_weight * p
                    terms["perceptual"] = p.detach()
                loss = nll
                if gan:
                    raw_disc.requires_grad_(False)
                    with run.autocast():
                        g_loss = hinge_g_loss(raw_disc(recon).float())
                    w = adaptive_weight(nll, g_loss, last_layer) if cfg.adaptive_disc_weight else torch.ones(())
                    raw_disc.requires_grad_(True)
                    loss = loss + cfg.disc_weight * w * g_loss
                    terms.update(g_loss=g_loss.detach(), adaptive_w=w)
                acc.backward(loss / cfg.grad_accum)
            if gan:
                dsync = contextlib.nullcontext() if last else acc.no_sync(self.disc)
                with dsync:
                    with run.autocast():
                        logits = self.disc(torch.cat([batch["image"], recon.detach()])).float()
                    real, fake = logits.chunk(2)
                    d_loss = hinge_d_loss(real, fake)
                    acc.backward(d_loss / cfg.grad_accum)
                terms["d_loss"] = d_loss.detach()
            terms["loss"] = loss.detach()
            for k, v in terms.items():
                stats[k] = stats.get(k, 0.0) + float(v) / cfg.grad_accum
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip)
        self.opt_g.step()
        self.opt_g.zero_grad(set_to_none=True)
        if gan:
            if cfg.grad_clip > 0:
                acc.clip_grad_norm_(self.disc.parameters(), cfg.grad_clip)
            self.opt_d.step()
            self.opt_d.zero_grad(set_to_none=True)
        self.ema.update(self.raw_model)
        run.progress.step += 1
        stats["lr"] = lr
        return stats

    def eval_batch(self) -> Optional[dict[str, torch.Tensor]]:
        """The fixed held-out crops (built once), or None without held-out images."""
        if self._eval_batch is None and self.heldout:
            n = self.cfg.eval_n_tokens or self.cfg.data.token_choices()[-1]
            ds = EvalDataset(self.heldout, self.cfg.data, n)
            items = [ds[i] for i in range(len(ds))]
            self._eval_batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        return self._eval_batch

    @torch.no_grad()
    def evaluate(self, save_samples: bool) -> dict[str, float]:
        """PSNR / SSIM / L1 of the EMA model on the held-out crops (main process); optionally
        saves ``samples/step_N.png`` (originals above, reconstructions below)."""
        batch = self.eval_batch()
        if batch is None:
            return {}
        dev = self.run.device
        recons = []
        for i in range(0, len(batch["image"]), max(1, self.cfg.batch_size)):
            part = {k: v[i:i + self.cfg.batch_size].to(dev) for k, v in batch.items()}
            with self.run.autocast():
                recons.append(self.ema.model(part["image"], part["g_init"], part["regions"])[0].float().cpu())
        recon, images = torch.cat(recons), batch["image"]
        metrics = {"eval_psnr": psnr(recon, images).mean().item(), "eval_ssim": ssim(recon, images).mean().item(),
                   "eval_l1": (recon - images).abs().mean().item()}
        if save_samples:
            k = min(self.cfg.sample_count, len(images))
            save_grid([images[:k], recon[:k]], self.run.out / "samples" / f"step_{self.run.step:07d}.png")
        return metrics

    def export(self) -> Path:
        """EMA weights to ``export/tokenizer.safetensors`` (config and step in the metadata)."""
        path = self.run.out / "export" / "tokenizer.safetensors"
        if self.run.is_main:
            export_tokenizer(self.ema.model, self.model_config, path, dtype=self.cfg.export_dtype,
                             extra_metadata={"train_step": self.run.step, "ema_decay": self.cfg.ema_decay,
                                             "init": self.cfg.data.init})
        self.run.accelerator.wait_for_everyone()
        return path

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``max_steps`` or ``max_minutes``; checkpoint and export at the end."""
        cfg, run = self.cfg, self.run
        if resume:
            run.resume()
        batches = self._batches()
        run.start_bar()
        stats: dict[str, float] = {}
        last_eval: dict[str, float] = {}
        try:
            while run.step < cfg.max_steps:
                stats = self.train_step(batches)
                run.tick({"loss": stats["loss"]})
                if run.every(cfg.log_every):
                    run.log_metrics(run.mean_over_processes(stats))
                want_eval, want_samples = run.every(cfg.eval_every), run.every(cfg.sample_every)
                if (want_eval or want_samples) and run.is_main:
                    last_eval = self.evaluate(want_samples)
                    if want_eval and last_eval:
                        run.log_metrics(last_eval)
                if run.checkpoint_or_stop(self.export if cfg.export_on_save else None):
                    break
        finally:
            run.close_bar()
        run.save()
        if run.is_main:
            last_eval = self.evaluate(True)
            run.log_metrics({"final": True, **last_eval})
        path = self.export()
        return {"step": run.step, "export": str(path), "train": stats, "eval": last_eval}


def train_tokenizer(cfg: TokenizerTrainConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, Any]:
    """Train a tokenizer into ``out`` (see :class:`TokenizerTrainer`); returns a summary dict
    with the final step, the export path and the last train / eval metrics."""
    return TokenizerTrainer(cfg, out).train(resume=resume)
