"""Generator training: the texture SiT (tokens given the layout) and the layout SiT (g_init).

Pipeline:

1. **Extraction** (cached): ``extract_samples`` labeled training crops are partitioned and,
   for the texture model, encoded with the trained tokenizer into a token folder (the format
   of ``gpstoken tokenize``, :mod:`gpstoken.shards`, read back with
   :class:`gpstoken.TokenDataset`) whose name hashes the data config, the sample count, the
   seed and the tokenizer file, so a re-run (or a resumed run) reuses it; with several
   processes each writes its shards. The layout model's ``g_init [M,N,5]`` and ``labels [M]``
   are cached as one safetensors file the same way. With ``tokens`` set, the arrays come
   from that ``gpstoken tokenize --labeled`` folder instead.
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
4. **Export**: texture EMA weights under ``ema_model.`` (official format) in
   ``export/generator.safetensors``; its config (safetensors metadata, read by
   ``gpstoken.load_generator``) is ``{"texture": SiT config, "latent_mean", "latent_std",
   "tokenizer": paired tokenizer id, "class_names", "n_tokens"}`` plus, when bundled,
   ``"layout": SiT config, "layout_mean", "layout_std"``. With ``layout_from`` (a layout export, or
   a generator that bundles a layout model) its ``layout_model.`` weights and stats are bundled
   in. The layout model alone goes to ``export/layout.safetensors``. With ``export_on_save`` the
   export is also written at every periodic checkpoint.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import (
    LAYOUT_PREFIX,
    TEXTURE_PREFIX,
    GeneratorConfig,
    checkpoint_config,
    load_safetensors,
    read_keys,
    save_checkpoint,
    texture_targets,
)
from ..geometry import GEOMETRY
from ..hub import file_digest
from ..io import write_safetensors
from ..models.configs import SIT_ARCHS, SiTConfig
from ..models.sit import SiT
from ..models.tokenizer import GPSTokenizer
from ..shards import MANIFEST, build_manifest, shard_info, shard_name, write_shard
from ..token_dataset import TokenDataset
from .common import Run, RunConfig, architecture, lr_factor, set_lr
from .data import CropDataset, make_loader, training_images
from .ema import EMA
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
    class_names: override the data's class names.
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

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens is not None:
            return
        if not self.data.labeled:
            raise ValueError("data.labeled: generator training needs class labels; set it to true")
        lo, hi = self.data.token_range
        if lo != hi:
            raise ValueError(f"data.n_tokens: a generator is trained on a fixed token count, got {self.data.n_tokens}")

    def base_sit_config(self) -> SiTConfig:
        return architecture(self.model, SIT_ARCHS, SiTConfig)


# ----------------------------------------------------------------------------- extraction


def load_tokenizer_model(name_or_path: str, device: torch.device) -> GPSTokenizer:
    """A :class:`GPSTokenizer` (eval mode, on ``device``) from a registry name, Hub id or local
    safetensors file, loaded like :func:`gpstoken.load_tokenizer` loads it."""
    from ..pipeline import load_tokenizer

    return load_tokenizer(name_or_path, device=device).model


def extract(cfg: GeneratorTrainConfig, run: Run, with_tokens: bool) -> dict[str, torch.Tensor]:
    """Extract (or load from the cache) ``g_init``, ``labels`` and, with ``with_tokens``, the
    tokenizer's ``tokens`` for ``cfg.extract_samples`` training crops (see module doc)."""
    from safetensors.torch import load_file

    tok_key = ""
    if with_tokens:
        if not cfg.tokenizer:
            raise ValueError("tokenizer: texture training needs the trained tokenizer (path or registry name)")
        tok_key = file_digest(cfg.tokenizer) if os.path.isfile(cfg.tokenizer) else cfg.tokenizer
    key_src = json.dumps({"data": cfg.data.to_dict(), "n": cfg.extract_samples, "seed": cfg.seed, "tok": tok_key},
                         sort_keys=True, default=str)
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    cache = Path(cfg.cache_dir) if cfg.cache_dir else run.out / "cache"
    final = cache / f"{'tokens' if with_tokens else 'layouts'}-{key}.safetensors"
    if run.is_main:
        cache.mkdir(parents=True, exist_ok=True)
    run.accelerator.wait_for_everyone()
    if with_tokens:
        folder = cache / f"tokens-{key}"
        if not (folder / MANIFEST).exists():
            _extract_token_shards(cfg, run, folder, key)
        return token_arrays(TokenDataset(folder), run)
    if not final.exists():
        n = cfg.extract_samples
        per = -(-n // run.world)
        lo, hi = min(n, run.rank * per), min(n, (run.rank + 1) * per)
        part = _extract_range(cfg, run, lo, hi, with_tokens)
        part_path = cache / f"{final.stem}.part{run.rank}of{run.world}.safetensors"
        write_safetensors(part, part_path)
        run.accelerator.wait_for_everyone()
        if run.is_main:
            parts = [load_file(str(cache / f"{final.stem}.part{r}of{run.world}.safetensors")) for r in range(run.world)]
            merged = {k: torch.cat([p[k] for p in parts if p[k].numel()]) for k in parts[0]}
            write_safetensors(merged, final, {"key": key_src})
            for r in range(run.world):
                (cache / f"{final.stem}.part{r}of{run.world}.safetensors").unlink()
        run.accelerator.wait_for_everyone()
    data = load_file(str(final))
    run.log_text(f"{len(data['labels'])} extracted samples from {final}")
    return data


#: crops per shard of the extraction's token folder
EXTRACT_SHARD = 512


def _extract_token_shards(cfg: GeneratorTrainConfig, run: Run, folder: Path, key: str) -> None:
    """Encode the extraction crops into a token folder (:mod:`gpstoken.shards`, the format of
    ``gpstoken tokenize``): shard ``s`` holds crops ``s*EXTRACT_SHARD ...``, process ``rank``
    writes shards ``rank, rank + world, ...``; the main process writes the manifest."""
    if run.is_main:
        folder.mkdir(parents=True, exist_ok=True)
    run.accelerator.wait_for_everyone()
    n = cfg.extract_samples
    n_shards = -(-n // EXTRACT_SHARD)
    info = {"extraction": key, "tokenizer": cfg.tokenizer}
    for s in range(run.rank, n_shards, run.world):
        path = folder / shard_name(s)
        if shard_info(path) is not None:
            continue
        lo, hi = s * EXTRACT_SHARD, min(n, (s + 1) * EXTRACT_SHARD)
        part = _extract_range(cfg, run, lo, hi, True)
        t = part["tokens"]
        tensors = {"geometry": t[..., :GEOMETRY], "features": t[..., GEOMETRY:], "layout.geometry": part["g_init"],
                   "layout.regions": part["regions"], "source_size": torch.full((len(t), 2), 256, dtype=torch.int64),
                   "index": torch.arange(lo, hi, dtype=torch.int64), "label": part["labels"]}
        write_shard(path, tensors, info, [f"crop {j}" for j in range(lo, hi)], [])
    run.accelerator.wait_for_everyone()
    if run.is_main:
        _, classes = training_images(cfg.data)
        build_manifest(folder, n_shards, {"model": cfg.tokenizer, "n_tokens": cfg.data.token_range[0],
                                          "image_size": [256, 256], "classes": classes,
                                          "preprocessing": "training crops of the generator config (DataConfig)",
                                          "source": f"generator extraction {key}"})
    run.accelerator.wait_for_everyone()


def token_arrays(ds: TokenDataset, run: Optional[Run] = None) -> dict[str, torch.Tensor]:
    """``g_init [M,N,5]``, ``labels [M]`` and ``tokens [M,N,5+C]`` of a token folder (all of it)."""
    items = [ds[i] for i in range(len(ds))]
    if not items:
        raise ValueError(f"tokens: {ds.root} holds no tokens")
    labels = torch.tensor([it["label"] for it in items], dtype=torch.long)
    if int(labels.min()) < 0:
        raise ValueError(f"tokens: {ds.root} has unlabeled images; tokenize a class-folder source with --labeled")
    data = {"g_init": torch.stack([it["layout_geometry"] for it in items]), "labels": labels,
            "tokens": torch.stack([torch.cat([it["geometry"], it["features"]], -1) for it in items])}
    if run is not None:
        run.log_text(f"{len(labels)} token samples from {ds.root}")
    return data


@torch.no_grad()
def _extract_range(cfg: GeneratorTrainConfig, run: Run, lo: int, hi: int, with_tokens: bool) -> dict[str, torch.Tensor]:
    entries, _ = training_images(cfg.data)
    n_tokens = cfg.data.token_range[0]
    bs = cfg.extract_batch_size
    sampler = [[(j, n_tokens) for j in range(s, min(hi, s + bs))] for s in range(lo, hi, bs)]
    loader = make_loader(CropDataset(entries, cfg.data, cfg.seed), sampler, num_workers=cfg.data.num_workers)
    model = load_tokenizer_model(cfg.tokenizer, run.device) if with_tokens and cfg.tokenizer else None  # extract checks
    out: dict[str, list[torch.Tensor]] = {"g_init": [], "labels": []}
    if with_tokens:
        out["tokens"] = []
        out["regions"] = []
    for batch in loader:
        out["g_init"].append(batch["g_init"])
        out["labels"].append(batch["label"])
        if model is not None:
            with run.autocast():
                t = model.encode(batch["image"].to(run.device), batch["g_init"].to(run.device),
                                 batch["regions"].to(run.device))
            out["tokens"].append(t.float().cpu())
            out["regions"].append(batch["regions"])
    if not out["labels"]:
        c = GEOMETRY + (model.config.gps_c if model is not None else 0)
        empty = {"g_init": torch.zeros(0, n_tokens, GEOMETRY), "labels": torch.zeros(0, dtype=torch.long)}
        if with_tokens:
            empty["tokens"] = torch.zeros(0, n_tokens, c)
            empty["regions"] = torch.zeros(0, n_tokens, 4)
        return empty
    return {k: torch.cat(v).contiguous() for k, v in out.items()}


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
        """Write the EMA weights (see module doc); returns the export path."""
        run = self.run
        name = "generator.safetensors" if self.kind == "texture" else "layout.safetensors"
        path = run.out / "export" / name
        if run.is_main:
            dt = torch.float16 if self.cfg.export_dtype == "float16" else torch.float32
            prefix = TEXTURE_PREFIX if self.kind == "texture" else LAYOUT_PREFIX
            state = {prefix + k: v.detach().to("cpu", dt).contiguous() for k, v in self.ema.model.state_dict().items()}
            info: dict[str, Any] = {"class_names": self.class_names, "n_tokens": self.sit_config.input_size[0]}
            if self.kind == "texture":
                info.update(texture=self.sit_config.to_dict(), latent_mean=self.mean.tolist(),
                            latent_std=self.std.tolist(), tokenizer=self._paired_tokenizer())
                if self.cfg.layout_from:
                    state.update(_layout_part(self.cfg.layout_from, info))
                info = GeneratorConfig.from_dict(info).to_dict()  # the schema loaders read
            else:
                info.update(layout=self.sit_config.to_dict(), layout_mean=self.mean.tolist(),
                            layout_std=self.std.tolist())
            extra = {"train_step": run.step, "cond_noise": self.cfg.cond_noise, "trained": self.kind}
            save_checkpoint(state, path, info, "generator", extra)
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


def _layout_part(path: str, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The ``layout_model.`` weights of a layout export, or of a generator that bundles one (to
    retrain only the texture model); adds the layout config and stats to ``info``."""
    state, file_meta = load_safetensors(path)
    try:
        layout = checkpoint_config(file_meta, "generator") or {}
    except ValueError as e:
        raise ValueError(f"layout_from: {path}: {e}") from e
    if "layout" not in layout:
        raise ValueError(f"layout_from: {path} holds no layout model: pass the layout export of "
                         "`gpstoken train layout` or a generator that bundles one")
    if layout.get("n_tokens") != info["n_tokens"]:
        raise ValueError(f"layout_from: {path} makes {layout.get('n_tokens')} tokens, this model {info['n_tokens']}")
    info.update({k: layout[k] for k in ("layout", "layout_mean", "layout_std")})
    part = {k: v for k, v in state.items() if k.startswith(LAYOUT_PREFIX)}
    if not part:
        raise ValueError(f"layout_from: {path} holds no {LAYOUT_PREFIX}* weights")
    return part


def train_generator(cfg: GeneratorTrainConfig, out: str | os.PathLike, kind: str, *,
                    resume: bool = False) -> dict[str, Any]:
    """Train the texture or layout generator into ``out``; returns a summary dict."""
    return GeneratorTrainer(cfg, out, kind).train(resume=resume)
