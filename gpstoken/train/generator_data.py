"""The generator's training arrays: ``g_init [M,N,5]``, ``labels [M]`` and, for the texture
model, the trained tokenizer's ``tokens [M,N,5+C]`` of ``extract_samples`` labeled training crops.

Extraction is cached. The texture model's crops are partitioned and encoded into a token folder
(the format of ``gpstoken tokenize``, :mod:`gpstoken.shards`, read back with
:class:`gpstoken.TokenDataset`) whose name hashes the data config, the sample count, the seed
and the tokenizer file, so a re-run (or a resumed run) reuses it; with several processes each
writes its shards. The layout model's ``g_init`` and ``labels`` are cached as one safetensors
file the same way. :func:`token_arrays` reads the same arrays from any labeled token folder
(``gpstoken tokenize --labeled``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from ..geometry import GEOMETRY
from ..hub import file_digest
from ..io import write_safetensors
from ..models.tokenizer import GPSTokenizer
from ..shards import MANIFEST, build_manifest, shard_info, shard_name, write_shard
from ..token_dataset import TokenDataset
from .common import Run
from .data import CropDataset, make_loader, training_images

if TYPE_CHECKING:
    from .generator_trainer import GeneratorTrainConfig

__all__ = ["EXTRACT_SHARD", "extract", "load_tokenizer_model", "token_arrays"]


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
