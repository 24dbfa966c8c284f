"""``gpstoken tokenize``: a whole image source to sharded tokens (format: :mod:`gpstoken.shards`).

Resumable: shards are written atomically and a rerun of the same command skips the shards
that are finished (same model checkpoint, token count, size and images). Deterministic: a
shard's images are batched the same way whatever the number of processes and wherever a
run was interrupted, so the tensors are identical (given the same hardware; on the CPU every
batch is encoded with one torch thread, so also whatever ``--workers`` and the number of cores).
Multi-process: under ``accelerate launch`` / ``torchrun`` process ``RANK`` of ``WORLD_SIZE``
tokenizes shards ``RANK, RANK + WORLD_SIZE, ...`` on ``cuda:LOCAL_RANK``; whichever process
finishes last writes the manifest. The encoder runs in bfloat16 autocast on CUDA and in float32
on the CPU unless ``dtype`` says otherwise (bfloat16 on a CPU with native bfloat16 about halves
the encoder's time, at bfloat16 precision of the tokens).

Where the work runs: on CUDA, DataLoader workers decode, crop and partition, and the main
process encodes on the GPU. On the CPU each worker runs the whole pipeline for its batches
(decode, crop, partition, encode, one torch thread each) and the main process only writes
shards: one single-threaded process per core keeps every core busy, while a main process
encoding with several threads beside the workers would oversubscribe the cores.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from . import hub, shards
from .geometry import GEOMETRY, PATCH, REGION, patch_grid
from .image_dataset import PreparedImages, Processes, collate, loader
from .images import MIN_SIDE
from .layout import Layout
from .partition import max_cells
from .pipeline import Tokenizer, load_tokenizer
from .sources import open_source
from .tokens import GPSTokens

PREPROCESSING = "shorter side resized to {size} (bicubic, antialiased), centre {size}x{size} crop"
#: default number of encoding worker processes of a CPU run: one per usable core, at most this
#: many (each holds its own activations)
MAX_CPU_WORKERS = 8


def _check_int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return value


def check_token_count(n_tokens: Any, name: str = "--tokens") -> int:
    """``n_tokens`` as an int that the entropy partition can reach on a 256 patch."""
    n = _check_int(n_tokens, name, 1)
    if n > max_cells(PATCH, PATCH):
        raise ValueError(f"{name}: at most {max_cells(PATCH, PATCH)} tokens per 256x256 patch, got {n}")
    return n


def encode_batch(tok: Tokenizer, images: torch.Tensor, layout: tuple[torch.Tensor, torch.Tensor]):
    """Encode a prepared batch (:func:`gpstoken.image_dataset.collate`) with its layout."""
    size = tuple(images.shape[-2:])
    return tok.encode_tensor(images, Layout(layout[0], layout[1], size))


def token_tensors(tokens: GPSTokens) -> dict[str, torch.Tensor]:
    """The shard tensors of encoded tokens (float32 [B,N,5] / [B,N,C] / [B,N,5] / [B,N,4], on the CPU)."""
    return {"geometry": tokens.geometry.cpu(), "features": tokens.features.cpu(),
            "layout.geometry": tokens.layout.geometry.cpu(), "layout.regions": tokens.layout.regions.cpu()}


class EncodingCollate:
    """``collate_fn`` of a CPU run: :func:`gpstoken.image_dataset.collate` a batch, then encode it
    where it was collated (a DataLoader worker), so each worker runs the whole pipeline. The
    batch comes back with ``tokens`` (:func:`token_tensors`, None when every image was skipped)
    in place of ``image`` and ``layouts``."""

    def __init__(self, tok: Tokenizer, n_tokens: int) -> None:
        self.tok = tok
        self.n_tokens = n_tokens

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(items)
        image, layouts = batch.pop("image"), batch.pop("layouts", None)
        if image is None:
            batch["tokens"] = None
        else:
            batch["tokens"] = token_tensors(encode_batch(self.tok, image, layouts[self.n_tokens]))
        return batch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch runs with ``n`` intra-op threads inside the block (the count is restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tokenize(src: str | os.PathLike, out: str | os.PathLike, n_tokens: int, *, model: str = "default",
             size: int = 256, batch_size: int = 32, shard_size: int = 1024, num_workers: Optional[int] = None,
             split: str = "train", image_column: Optional[str] = None, labeled: bool = False,
             device: Optional[str] = None, dtype: Optional[str] = None,
             progress: bool = True) -> Optional[dict[str, Any]]:
    """Tokenize every image of ``src`` into ``out`` (see the module doc and
    :mod:`gpstoken.shards`). Returns the manifest when this process wrote it (the last one
    to finish), else None.

    src: folder, list file or ``datasets`` dataset (:func:`gpstoken.sources.open_source`).
    n_tokens: tokens per 256x256 patch. size: the crop side (>= 32; multiples of 256 make
    whole patches). shard_size: source images per shard. labeled: a folder with one sub-folder
    per class; each image's class index is stored (``label``), the names in the manifest.
    dtype: the encoder's autocast dtype, ``"float32"`` or ``"bfloat16"`` (None: bfloat16 on
    CUDA, float32 on the CPU; the tokens are stored in float32 either way). num_workers:
    DataLoader worker processes (default: on CUDA up to 4, one per usable core minus one; on
    the CPU one per usable core, shared among the processes of this machine, at most
    :data:`MAX_CPU_WORKERS`; 0: everything in this process).
    """
    n_tokens = check_token_count(n_tokens)
    size = _check_int(size, "--size", MIN_SIDE)
    batch_size = _check_int(batch_size, "--batch-size", 1)
    shard_size = _check_int(shard_size, "--shard-size", 1)
    if num_workers is not None:
        num_workers = _check_int(num_workers, "--workers", 0)
    procs = Processes.from_env()
    source = open_source(src, split=split, image_column=image_column, labeled=labeled)
    dev = torch.device(device) if device is not None else procs.device()
    if dtype not in (None, "float32", "bfloat16"):
        raise ValueError(f"--dtype: expected float32 or bfloat16, got {dtype!r}")
    tok = load_tokenizer(model, device=dev, dtype=dtype or ("bfloat16" if dev.type == "cuda" else "float32"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_id, model_sha256 = hub.portable_id(tok)
    header = {"model": model_id, "model_sha256": model_sha256, "n_tokens": n_tokens,
              "channels": tok.config.gps_c, "image_size": [size, size],
              "preprocessing": PREPROCESSING.format(size=size), "source": source.description,
              "source_images": len(source), "shard_size": shard_size, "classes": source.classes,
              "encode_dtype": str(tok.dtype).removeprefix("torch.")}
    run = {k: header[k] for k in ("model_sha256", "n_tokens", "image_size", "shard_size", "encode_dtype", "classes")}
    n_shards = -(-len(source) // shard_size)
    pending = []
    for s in range(procs.rank, n_shards, procs.world):
        ids = source.ids[s * shard_size:(s + 1) * shard_size]
        info = shards.shard_info(out / shards.shard_name(s))
        if info is None:
            pending.append(s)
        elif info["run"] != run or sorted(info["ids"] + [k["id"] for k in info["skipped"]]) != sorted(ids):
            raise ValueError(f"OUT: {out / shards.shard_name(s)} was written by a different run "
                             f"({info['run']} vs {run}, or other images); use another OUT folder or delete it")
    batches, owner = [], []
    for s in pending:
        lo, hi = s * shard_size, min(len(source), (s + 1) * shard_size)
        for b in range(lo, hi, batch_size):
            batches.append(list(range(b, min(hi, b + batch_size))))
            owner.append(s)
    if num_workers is None and tok.device.type == "cpu":
        num_workers = min(MAX_CPU_WORKERS, procs.cores())
    if pending:
        _run(tok, source, n_tokens, size, batches, owner, out, run, num_workers,
             progress and procs.rank == 0, f"tokenize [{procs.rank}/{procs.world}]" if procs.world > 1 else "tokenize")
    return shards.build_manifest(out, n_shards, header)


def _run(tok: Tokenizer, source, n_tokens: int, size: int, batches: list[list[int]], owner: list[int],
         out: Path, run: dict[str, Any], num_workers: Optional[int], progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    cpu = tok.device.type == "cpu"
    data = loader(PreparedImages(source, size, [n_tokens]), batches, num_workers,
                  EncodingCollate(tok, n_tokens) if cpu else collate)
    bar = tqdm(total=sum(map(len, batches)), unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    parts: dict[str, list] = {k: [] for k in shards.TENSORS}
    skipped: list[dict[str, Any]] = []
    try:
        with torch_threads(1) if cpu else nullcontext():  # with 0 workers the batches are encoded here
            for b, batch in enumerate(data):
                skipped += [{"index": i, "id": source.ids[i], "reason": r} for i, r in batch["skipped"]]
                tokens = batch["tokens"] if cpu else (
                    None if batch["image"] is None
                    else token_tensors(encode_batch(tok, batch["image"], batch["layouts"][n_tokens])))
                if tokens is not None:
                    for k, v in (*tokens.items(), ("source_size", batch["source_size"]), ("index", batch["index"]),
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


def _write(out: Path, s: int, parts: dict[str, list], skipped: list[dict[str, Any]], source, run: dict[str, Any],
           n: int, c: int) -> None:
    empty = {"geometry": torch.zeros(0, n, GEOMETRY), "features": torch.zeros(0, n, c),
             "layout.geometry": torch.zeros(0, n, GEOMETRY), "layout.regions": torch.zeros(0, n, REGION),
             "source_size": torch.zeros(0, 2, dtype=torch.int64), "index": torch.zeros(0, dtype=torch.int64),
             "label": torch.zeros(0, dtype=torch.int64)}
    tensors = {k: torch.cat(v) if v else empty[k] for k, v in parts.items()}
    ids = [source.ids[i] for i in tensors["index"].tolist()]
    shards.write_shard(out / shards.shard_name(s), tensors, run, ids, skipped)
