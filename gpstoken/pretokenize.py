"""``gpstoken tokenize``: a whole image source to sharded tokens (format: :mod:`gpstoken.shards`).

Resumable: shards are written atomically and a rerun of the same command skips the shards
that are finished (same model checkpoint, token count, size and images). Deterministic: a
shard's images are batched the same way whatever the number of processes and wherever a
run was interrupted, so the tensors are identical (given the same hardware; on the CPU every
batch is encoded with one torch thread, so also whatever ``--workers`` and the number of cores).
Multi-process: under ``accelerate launch`` / ``torchrun`` process ``RANK`` of ``WORLD_SIZE``
tokenizes shards ``RANK, RANK + WORLD_SIZE, ...`` on ``cuda:LOCAL_RANK``; whichever process
finishes last writes the manifest. By default the encoder runs in bfloat16 autocast where that
is fast (CUDA, a CPU with native bfloat16) and in float32 elsewhere; ``dtype="float32"`` gives
exact tokens. On the held-out photos bfloat16 tokens reconstruct within 0.01 dB PSNR of the
float32 ones (docs/evaluation.md).

Where the work runs (:func:`gpstoken.image_dataset.job_batches`): on CUDA, DataLoader workers
decode, crop and partition, and the main process encodes on the GPU. On the CPU each worker runs
the whole pipeline for its batches (decode, crop, partition, encode, one torch thread each) and
the main process only writes shards.
"""
from __future__ import annotations

import math
import os
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from . import hub, shards
from .geometry import GEOMETRY, PATCH, REGION, patch_grid
from .image_dataset import PreparedImages, Processes, job_batches
from .images import MIN_SIDE
from .io import output_folder
from .layout import Layout
from .partition import max_cells
from .pipeline import Tokenizer, load_tokenizer, pick_device
from .pipeline.devices import run_dtype
from .sources import open_source
from .tokens import GPSTokens
from .validate import integer

PREPROCESSING = "shorter side resized to {size} (bicubic, antialiased), centre {size}x{size} crop"


def check_token_count(n_tokens: Any, name: str = "--tokens") -> int:
    """``n_tokens`` as an int that the entropy partition can reach on a 256 patch."""
    n = integer(n_tokens, name, low=1)
    if n > max_cells(PATCH, PATCH):
        raise ValueError(f"{name}: at most {max_cells(PATCH, PATCH)} tokens per 256x256 patch, got {n}")
    return n


def encode_batch(tok: Tokenizer, images: torch.Tensor, layout: tuple[torch.Tensor, torch.Tensor],
                 fit_steps: Optional[int] = None):
    """Encode a prepared batch (:func:`gpstoken.image_dataset.collate`) with its layout."""
    size = tuple(images.shape[-2:])
    return tok.encode_tensor(images, Layout(layout[0], layout[1], size), fit_steps=fit_steps)


def token_tensors(tokens: GPSTokens) -> dict[str, torch.Tensor]:
    """The shard tensors of encoded tokens (float32 [B,N,5] / [B,N,C] / [B,N,5] / [B,N,4], on the CPU)."""
    return {"geometry": tokens.geometry.cpu(), "features": tokens.features.cpu(),
            "layout.geometry": tokens.layout.geometry.cpu(), "layout.regions": tokens.layout.regions.cpu()}


def _encode_job(tok: Tokenizer, n_tokens: int, fit_steps: int, images: torch.Tensor,
                layouts: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """tokenize's job (:func:`gpstoken.image_dataset.job_batches`): the batch's shard tensors."""
    return token_tensors(encode_batch(tok, images, layouts[n_tokens], fit_steps))


def fit_steps_of(toks: Sequence[Tokenizer], fit_steps: Optional[int]) -> list[int]:
    """Each tokenizer's test-time fitting steps: ``fit_steps`` for all, or None: each model's
    own (:attr:`Tokenizer.fit_steps`)."""
    return [t.fit_steps if fit_steps is None else fit_steps for t in toks]


#: run options a shard records that a resumed run must repeat: manifest key -> (flag, what differs)
_RESUME_OPTIONS = {"encode_dtype": ("--dtype", "encoded in {old}, this run encodes in {new}"),
                   "fit_steps": ("--fit-steps", "encoded with {old} test-time fitting steps, this run with {new}")}


def _option_mismatch(shard: Path, old: dict[str, Any], new: dict[str, Any], given: dict[str, Any]) -> str:
    """The error for a shard written by the same run but with other :data:`_RESUME_OPTIONS`:
    what differs and the flags that resume it (``given``: the flags as this run got them)."""
    keys = [k for k in _RESUME_OPTIONS if old.get(k) != new[k]]
    what = " and ".join(_RESUME_OPTIONS[k][1].format(old=old.get(k), new=new[k]) + f" ({_RESUME_OPTIONS[k][0]} "
                        f"{given[k]})" for k in keys)
    flags = " ".join(f"{_RESUME_OPTIONS[k][0]} {old.get(k)}" for k in keys)
    return f"OUT: {shard} was {what}; to resume it pass {flags}, or use another OUT folder"


def tokenize(src: str | os.PathLike, out: str | os.PathLike, n_tokens: int, *, model: str = "default",
             size: int = 256, batch_size: int = 32, shard_size: int = 1024, num_workers: Optional[int] = None,
             split: str = "train", image_column: Optional[str] = None, labeled: bool = False,
             device: Optional[str] = None, dtype: Optional[str] = None, fit_steps: Optional[int] = None,
             progress: bool = True) -> Optional[dict[str, Any]]:
    """Tokenize every image of ``src`` into ``out`` (see the module doc and
    :mod:`gpstoken.shards`). Returns the manifest when this process wrote it (the last one
    to finish), else None.

    src: folder, list file or ``datasets`` dataset (:func:`gpstoken.sources.open_source`).
    n_tokens: tokens per 256x256 patch. size: the crop side (>= 32; multiples of 256 make
    whole patches). shard_size: source images per shard. labeled: a folder with one sub-folder
    per class; each image's class index is stored (``label``), the names in the manifest.
    dtype: the encoder's autocast dtype, ``"float32"`` (exact tokens), ``"bfloat16"`` or
    ``"auto"`` / None: bfloat16 where it is fast (CUDA, a CPU with native bfloat16), float32
    elsewhere (:func:`gpstoken.pipeline.devices.fast_dtype`). The tokens are stored in float32
    either way and the manifest records the dtype used (``encode_dtype``). fit_steps: test-time
    fitting steps (:mod:`gpstoken.models.token_fit`; default: the model's own), recorded in the
    manifest (``fit_steps``). num_workers:
    DataLoader worker processes (default: on CUDA up to 4, one per usable core minus one; on
    the CPU one per usable core, shared among the processes of this machine, at most
    :data:`gpstoken.image_dataset.MAX_CPU_WORKERS`; 0: everything in this process).
    """
    n_tokens = check_token_count(n_tokens)
    size = integer(size, "--size", low=MIN_SIDE)
    batch_size = integer(batch_size, "--batch-size", low=1)
    shard_size = integer(shard_size, "--shard-size", low=1)
    if num_workers is not None:
        num_workers = integer(num_workers, "--workers", low=0)
    if fit_steps is not None:
        fit_steps = integer(fit_steps, "--fit-steps", low=0)
    output_folder(out, "OUT")
    procs = Processes.from_env()
    source = open_source(src, split=split, image_column=image_column, labeled=labeled)
    dev = pick_device(device) if device is not None else procs.device()
    tok = load_tokenizer(model, device=dev, dtype=run_dtype(dtype, dev))
    fit = fit_steps_of([tok], fit_steps)[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_id, model_sha256 = hub.portable_id(tok)
    header = {"model": model_id, "model_sha256": model_sha256, "n_tokens": n_tokens,
              "channels": tok.config.gps_c, "image_size": [size, size],
              "preprocessing": PREPROCESSING.format(size=size), "source": source.description,
              "source_images": len(source), "shard_size": shard_size, "classes": source.classes,
              "encode_dtype": str(tok.dtype).removeprefix("torch."), "fit_steps": fit}
    run = {k: header[k] for k in ("model_sha256", "n_tokens", "image_size", "shard_size", "encode_dtype", "fit_steps",
                                  "classes")}
    n_shards = -(-len(source) // shard_size)
    pending = []
    for s in range(procs.rank, n_shards, procs.world):
        ids = source.ids[s * shard_size:(s + 1) * shard_size]
        info = shards.shard_info(out / shards.shard_name(s))
        if info is None:
            pending.append(s)
        elif info["run"] != run and set(_RESUME_OPTIONS) <= set(info["run"]) and \
                {**info["run"], **{k: run[k] for k in _RESUME_OPTIONS}} == run:
            given = {"encode_dtype": dtype or "auto", "fit_steps": "default" if fit_steps is None else fit_steps}
            raise ValueError(_option_mismatch(out / shards.shard_name(s), info["run"], run, given))
        elif info["run"] != run or sorted(info["ids"] + [k["id"] for k in info["skipped"]]) != sorted(ids):
            raise ValueError(f"OUT: {out / shards.shard_name(s)} was written by a different run "
                             f"({info['run']} vs {run}, or other images); use another OUT folder or delete it")
    batches, owner = [], []
    for s in pending:
        lo, hi = s * shard_size, min(len(source), (s + 1) * shard_size)
        for b in range(lo, hi, batch_size):
            batches.append(list(range(b, min(hi, b + batch_size))))
            owner.append(s)
    if pending:
        _run(tok, source, n_tokens, size, batches, owner, out, run, num_workers,
             progress and procs.rank == 0, f"tokenize [{procs.rank}/{procs.world}]" if procs.world > 1 else "tokenize")
    return shards.build_manifest(out, n_shards, header)


def _run(tok: Tokenizer, source, n_tokens: int, size: int, batches: list[list[int]], owner: list[int],
         out: Path, run: dict[str, Any], num_workers: Optional[int], progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    job = partial(_encode_job, tok, n_tokens, run["fit_steps"])
    data = job_batches(PreparedImages(source, size, [n_tokens]), batches, job,
                       in_workers=tok.device.type == "cpu", num_workers=num_workers)
    bar = tqdm(total=sum(map(len, batches)), unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    parts: dict[str, list] = {k: [] for k in shards.TENSORS}
    skipped: list[dict[str, Any]] = []
    try:
        for b, batch in enumerate(data):
            skipped += [{"index": i, "id": source.ids[i], "reason": r} for i, r in batch["skipped"]]
            if batch["out"] is not None:
                for k, v in (*batch["out"].items(), ("source_size", batch["source_size"]), ("index", batch["index"]),
                             ("label", batch["label"])):
                    parts[k].append(v)
            bar.update(len(batches[b]))
            if b + 1 == len(batches) or owner[b + 1] != owner[b]:
                _write(out, owner[b], parts, skipped, source, run, n_tokens * math.prod(patch_grid(size, size)),
                       tok.config.gps_c)
                parts = {k: [] for k in shards.TENSORS}
                skipped = []
    finally:
        bar.close()
        data.close()


def _write(out: Path, s: int, parts: dict[str, list], skipped: list[dict[str, Any]], source, run: dict[str, Any],
           n: int, c: int) -> None:
    empty = {"geometry": torch.zeros(0, n, GEOMETRY), "features": torch.zeros(0, n, c),
             "layout.geometry": torch.zeros(0, n, GEOMETRY), "layout.regions": torch.zeros(0, n, REGION),
             "source_size": torch.zeros(0, 2, dtype=torch.int64), "index": torch.zeros(0, dtype=torch.int64),
             "label": torch.zeros(0, dtype=torch.int64)}
    tensors = {k: torch.cat(v) if v else empty[k] for k, v in parts.items()}
    ids = [source.ids[i] for i in tensors["index"].tolist()]
    shards.write_shard(out / shards.shard_name(s), tensors, run, ids, skipped)
