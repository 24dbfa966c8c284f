"""Generator training: the texture SiT (tokens given the layout) and the layout SiT (g_init).

Pipeline:

1. **Extraction** (cached, :mod:`.generator_data`): ``g_init``, ``labels`` and, for the
   texture model, the tokenizer's tokens of ``extract_samples`` labeled training crops; with
   ``tokens`` set, the arrays come from that ``gpstoken tokenize --labeled`` folder instead.
2. **Normalisation**: per-channel mean / std over all tokens. The texture target is
   ``[geometry - g_init, features]`` (21 channels for C=16), since generation adds ``g_init``
   back after de-normalisation (docs/algorithms.md section 6). The layout target is ``g_init``.
   Channels that never vary (rho of ``g_init`` is always 0) get std 1.
3. **Flow matching**: ``x_t = t * x1 + (1 - t) * x0`` with ``x0 ~ N(0, I)``, ``t ~ U(0, 1)``;
   the SiT predicts the velocity ``x1 - x0`` (MSE). Labels are dropped with the SiT's
   ``class_dropout_prob`` (training mode) for classifier-free guidance. The texture model is
   conditioned on the layout with noise added during training:
   ``cond = g_init + cond_noise * std(g_init) * eps`` (``cond_noise = 0.5``: noise of half each
   geometry channel's standard deviation, the paper's 0.5-std layout noise), which makes it
   robust to generated / calibrated layouts. The layout model has ``cond_channels = 0`` and
   uses its positional embedding.
4. **Export** (:mod:`.generator_export`): the EMA weights to ``export/generator.safetensors``
   (texture, optionally bundling the layout model of ``layout_from``) or
   ``export/layout.safetensors``. With ``export_on_save`` the export is also written at every
   periodic checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import LAYOUT_PREFIX, TEXTURE_PREFIX, read_keys, texture_targets
from ..geometry import GEOMETRY
from ..models.configs import SIT_ARCHS, SiTConfig
from ..models.sit import SiT
from ..sampling import SamplingDefaults
from ..token_dataset import TokenDataset
from .common import Run, RunConfig, architecture, lr_factor, set_lr
from .data import training_images
from .ema import EMA
from .generator_data import extract, token_arrays
from .generator_export import _layout_part, export_generator
from .tokenizer_trainer import load_weights


@dataclass
class GeneratorTrainConfig(RunConfig):
    """Generator training options (JSON fields; see :class:`RunConfig` for the common ones).

    model: a registered SiT architecture (``SIT_ARCHS``) or a ``SiTConfig`` dict; the fields
    ``input_size``, ``in_channels``, ``cond_channels`` and ``num_classes`` are derived from
    the data and the tokenizer. tokenizer: the trained tokenizer (path or registry name;
    required for ``texture``). tokenizer_id: the id written to the export (default: the
    tokenizer's id). extract_samples / extract_batch_size: crops to encode and the encoding
    batch. cache_dir: extraction cache (default ``<out>/cache``). cond_noise: layout
    condition noise in units of each geometry channel's std (texture). layout_from: a layout
    export (or a generator bundling a layout model) to bundle into the texture export.
    class_names: override the data's class names. sampling: the sampling defaults the texture
    export records (``{"steps", "sampler", "cfg_scale", "guidance_interval"}``, each optional;
    :class:`~gpstoken.sampling.SamplingDefaults`' values when absent), i.e. what
    ``Generator.generate`` uses without arguments; choose them by a metric (examples/recognisability.py).
    init_from: a safetensors generator to start from (``ema_model.`` / ``layout_model.``
    prefixed keys or plain keys). tokens: a ``gpstoken tokenize --labeled`` folder to train on
    instead of extracting crops (``data`` is then not used; ``tokenizer`` defaults to the
    folder's model).
    """

    model: Any = "SiT-XL/2-gs"
    tokenizer: Optional[str] = None
    tokenizer_id: Optional[str] = None
    extract_samples: int = 4096
    extract_batch_size: int = 32
    cache_dir: Optional[str] = None
    cond_noise: float = 0.5
    layout_from: Optional[str] = None
    class_names: Optional[list[str]] = None
    init_from: Optional[str] = None
    tokens: Optional[str] = None
    sampling: Optional[SamplingDefaults] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.sampling, dict):
            try:
                self.sampling = SamplingDefaults.from_dict(self.sampling)
            except (TypeError, ValueError) as e:
                raise ValueError(str(e) if str(e).startswith("sampling:") else f"sampling: {e}") from None
        elif self.sampling is not None and not isinstance(self.sampling, SamplingDefaults):
            raise ValueError(f"sampling: expected an object such as {{\"cfg_scale\": 2.5, \"sampler\": \"sde\"}}, "
                             f"got {self.sampling!r}")
        if self.tokens is not None:
            return
        if not self.data.labeled:
            raise ValueError("data.labeled: generator training needs class labels; set it to true")
        lo, hi = self.data.token_range
        if lo != hi:
            raise ValueError(f"data.n_tokens: a generator is trained on a fixed token count, got {self.data.n_tokens}")

    def base_sit_config(self) -> SiTConfig:
        return architecture(self.model, SIT_ARCHS, SiTConfig)


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``[M, N, C]`` over M and N (std 1 where it is ~0)."""
    flat = x.reshape(-1, x.shape[-1]).double()
    mean, std = flat.mean(0), flat.std(0)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return mean.float(), std.float()


# ----------------------------------------------------------------------------- training


class GeneratorTrainer:
    """Trains the texture (``kind="texture"``) or layout (``kind="layout"``) SiT."""

    def __init__(self, cfg: GeneratorTrainConfig, out: str | os.PathLike, kind: str) -> None:
        if kind not in ("texture", "layout"):
            raise ValueError(f"kind: expected 'texture' or 'layout', got {kind!r}")
        if kind == "layout" and cfg.sampling is not None:
            raise ValueError("sampling: the sampling defaults belong to the texture export (the generator); "
                             "remove them from the layout config")
        self.cfg, self.kind = cfg, kind
        self.run = Run(cfg, out, kind)
        dev = self.run.device
        if cfg.tokens is not None:
            ds = TokenDataset(cfg.tokens)
            classes = ds.classes
            cfg.tokenizer = cfg.tokenizer or ds.model
            data = token_arrays(ds, self.run)
        else:
            _, classes = training_images(cfg.data)
            data = extract(cfg, self.run, with_tokens=kind == "texture")
        self.class_names = list(cfg.class_names or classes)
        self.g_init = data["g_init"].to(dev)
        self.labels = data["labels"].to(dev)
        n_tokens = self.g_init.shape[1]
        if kind == "texture":
            x = texture_targets(data["tokens"], data["g_init"])
            self.cond_std = data["g_init"].reshape(-1, GEOMETRY).std(0).to(dev)
        else:
            x = data["g_init"]
        self.mean, self.std = channel_stats(x)
        self.x = ((x - self.mean) / self.std).to(dev)
        self.sit_config = dataclasses.replace(
            cfg.base_sit_config(), input_size=(n_tokens, 1), in_channels=x.shape[-1],
            cond_channels=GEOMETRY if kind == "texture" else 0, num_classes=len(self.class_names))
        if int(self.labels.max()) >= len(self.class_names):
            raise ValueError(f"labels go up to {int(self.labels.max())} but there are {len(self.class_names)} classes")
        if kind == "texture" and cfg.layout_from:  # refused now rather than at the first export
            _layout_part(cfg.layout_from, {"n_tokens": n_tokens})
        with self.run.seeded():
            model = SiT(self.sit_config)
        if cfg.init_from:
            want = LAYOUT_PREFIX if kind == "layout" else TEXTURE_PREFIX
            prefix = want if any(k.startswith(want) for k in read_keys(cfg.init_from)) else ""
            load_weights(cfg.init_from, model, prefix)
        self.ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
        self.ema.model.to(dev)
        if cfg.compile:
            model.compile()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        self.model, self.opt = self.run.accelerator.prepare(model, opt)
        self.run.accelerator.register_for_checkpointing(self.ema)

    def _indices(self, batch: int) -> torch.Tensor:
        """Sample indices of this process for global micro-batch ``batch`` (epoch-wise permutation)."""
        cfg, run, m = self.cfg, self.run, len(self.labels)
        first = (batch * run.world + run.rank) * cfg.batch_size
        ids = np.arange(first, first + cfg.batch_size)
        epochs, pos = np.divmod(ids, m)
        out = [np.random.default_rng([cfg.seed, 5, int(e)]).permutation(m)[p] for e, p in zip(epochs, pos)]
        return torch.as_tensor(np.array(out), device=self.run.device)

    def loss(self, idx: torch.Tensor) -> torch.Tensor:
        """Velocity-matching loss on samples ``idx``."""
        x1 = self.x[idx].transpose(1, 2).unsqueeze(-1)  # [B, C, N, 1]
        x0 = torch.randn_like(x1)
        t = torch.rand(len(idx), device=x1.device)
        tt = t.view(-1, 1, 1, 1)
        xt = tt * x1 + (1 - tt) * x0
        cond = None
        if self.kind == "texture":
            g = self.g_init[idx]
            cond = g + self.cfg.cond_noise * self.cond_std * torch.randn_like(g)
        with self.run.autocast():
            v = self.model(xt, t, self.labels[idx], cond)
        return F.mse_loss(v.float(), x1 - x0)

    def train_step(self) -> dict[str, float]:
        cfg, run, acc = self.cfg, self.run, self.run.accelerator
        lr = cfg.lr * lr_factor(run.step, cfg.max_steps, cfg.lr_warmup, cfg.lr_schedule)
        set_lr(self.opt, lr)
        total = 0.0
        for micro in range(cfg.grad_accum):
            idx = self._indices(run.step * cfg.grad_accum + micro)
            ctx = acc.no_sync(self.model) if micro < cfg.grad_accum - 1 else contextlib.nullcontext()
            with ctx:
                loss = self.loss(idx)
                acc.backward(loss / cfg.grad_accum)
            total += float(loss.detach()) / cfg.grad_accum
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(acc.unwrap_model(self.model))
        run.progress.step += 1
        return {"loss": total, "lr": lr}

    def _paired_tokenizer(self) -> str:
        if self.cfg.tokenizer_id:
            return self.cfg.tokenizer_id
        tok = str(self.cfg.tokenizer)
        return str(Path(tok).resolve()) if os.path.isfile(tok) else tok

    def export(self) -> Path:
        """Write the EMA weights (:func:`.generator_export.export_generator`); returns the export path."""
        run = self.run
        name = "generator.safetensors" if self.kind == "texture" else "layout.safetensors"
        path = run.out / "export" / name
        if run.is_main:
            texture = self.kind == "texture"
            export_generator(path, self.kind, self.ema.model, self.sit_config, (self.mean, self.std),
                             self.class_names, tokenizer=self._paired_tokenizer() if texture else None,
                             layout_from=self.cfg.layout_from if texture else None, sampling=self.cfg.sampling,
                             dtype=self.cfg.export_dtype,
                             extra_metadata={"train_step": run.step, "cond_noise": self.cfg.cond_noise,
                                             "trained": self.kind})
        run.accelerator.wait_for_everyone()
        return path

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``max_steps`` or ``max_minutes``; checkpoint and export at the end."""
        cfg, run = self.cfg, self.run
        if resume:
            run.resume()
        self.model.train()
        run.start_bar()
        stats: dict[str, float] = {}
        try:
            while run.step < cfg.max_steps:
                stats = self.train_step()
                run.tick({"loss": stats["loss"]})
                if run.every(cfg.log_every):
                    run.log_metrics(run.mean_over_processes(stats))
                if run.checkpoint_or_stop(self.export if cfg.export_on_save else None):
                    break
        finally:
            run.close_bar()
        run.save()
        path = self.export()
        return {"step": run.step, "export": str(path), "train": stats}


def train_generator(cfg: GeneratorTrainConfig, out: str | os.PathLike, kind: str, *,
                    resume: bool = False) -> dict[str, Any]:
    """Train the texture or layout generator into ``out``; returns a summary dict."""
    return GeneratorTrainer(cfg, out, kind).train(resume=resume)
