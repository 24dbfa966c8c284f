"""Throughput (images/s) and peak memory of gpstoken's stages, batched vs a naive per-image loop.

    python benchmarks/bench_throughput.py [--models default m128] [--batch 1 4] [--dtype float32]
                                          [--images 8] [--tokens 128] [--device cpu|cuda]

Stages, on 256x256 centre crops of the example photos (cycled):

* ``partition``: entropy partition of a batch (``gpstoken.partition``);
* ``encode`` / ``decode``: ``Tokenizer.encode_tensor`` / ``decode_tensor`` of a batch;
* ``reconstruct``: partition + encode + decode of a batch;
* ``tokenize``: ``gpstoken tokenize`` end to end (files -> shards: decoding and the partition
  in DataLoader workers, batched encode, shard writes), ``--batch-size`` = the batch.

Each batched row is shown beside the naive loop that does the same job one image at a time
through the public API (``gpstoken.partition`` / ``encode`` / ``decode`` / ``reconstruct`` per
image; for ``tokenize``: open, crop, ``gpstoken.encode`` and ``GPSTokens.save`` per image).
Models (``--models``): any registry name, Hub id or checkpoint file (default: ``default``, the
embedded tokenizer), and ``s64`` / ``m128`` / ``l256``: that official architecture with random
weights, built from the registry config (speed and memory only). Peak memory:
``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak RSS during the stage
(sampled every 2 ms). dtype float16 only on CUDA, bfloat16 on CUDA and on CPUs with native
bfloat16 (AVX512-BF16, AMX). Each batched row and its naive loop run in the same dtype and take
turns (batched, naive, batched, ...), so a shared machine's changing load hits both alike
(``--naive-dtype float32``: the naive loop in float32 whatever the row's dtype).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gpstoken  # noqa: E402
from gpstoken import hub  # noqa: E402
from gpstoken.images import center_crop, to_tensor  # noqa: E402
from gpstoken.models.configs import TOKENIZER_ARCHS  # noqa: E402
from gpstoken.models.tokenizer import GPSTokenizer  # noqa: E402
from gpstoken.pretokenize import tokenize  # noqa: E402
from gpstoken.runtime import native_cpu_bfloat16  # noqa: E402


class Peak:
    """Peak memory (MiB) while the block runs: CUDA allocator peak, or sampled process RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._proc = psutil.Process()
            self._stop = threading.Event()
            self._max = self._proc.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(0.002):
                    self._max = max(self._max, self._proc.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.mib = max(self._max, self._proc.memory_info().rss) / 2**20


def _timed(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, peak MiB) of one call of ``fn``."""
    with Peak(device) as peak:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    return seconds, peak.mib


def measure(fns: list, n_images: int, device: torch.device, reps: int) -> list[tuple[float, float]]:
    """(images/s of the best of ``reps`` timed runs, peak MiB of those runs) of each function,
    after one warm-up each. The functions take turns (a, b, a, b, ...), so on a shared machine
    a change of load hits them alike and their ratio stays fair."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    peak = [0.0] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            seconds, mib = _timed(fn, device)
            best[i], peak[i] = min(best[i], seconds), max(peak[i], mib)
    return [(n_images / b, m) for b, m in zip(best, peak)]


#: --models names that stand for an official architecture with random weights (speed and memory only)
RANDOM = {"m128": "gpstoken-m128", "s64": "gpstoken-s64", "l256": "gpstoken-l256"}


def model_file(name: str, tmp: Path) -> str:
    """What to load for ``--models`` entry ``name``: a random-weight checkpoint for the
    :data:`RANDOM` names, else ``name`` itself (registry name, Hub id or checkpoint file)."""
    if name not in RANDOM:
        return name
    config = TOKENIZER_ARCHS[RANDOM[name]]
    torch.manual_seed(0)
    model = GPSTokenizer(config)
    path = tmp / f"{name}-random.safetensors"
    hub.save_checkpoint(model.state_dict(), path, config.to_dict(), "tokenizer")
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["default", "m128"],
                    help="registry names, Hub ids or checkpoint files; s64 / m128 / l256: that official "
                         "architecture with random weights (default: default m128)")
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch sizes (default: 1 4 on CPU, 1 16 64 on CUDA)")
    ap.add_argument("--dtype", nargs="+", default=None,
                    help="float32 / bfloat16 / float16 (default: float32 bfloat16 on CUDA and on a CPU with native "
                         "bfloat16, else float32)")
    ap.add_argument("--images", type=int, default=None, help="images per timed run (default: the largest batch)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--stages", nargs="+", default=["partition", "encode", "decode", "reconstruct", "tokenize"])
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True, help="also time the per-image loop")
    ap.add_argument("--naive-dtype", default=None,
                    help="dtype of the naive loop's model (default: the row's dtype), e.g. float32 to compare "
                         "tokenize --dtype bfloat16 with the plain per-image loop")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    batches = a.batch or ([1, 16, 64] if cuda else [1, 4])
    dtypes = a.dtype or (["float32", "bfloat16"] if cuda or native_cpu_bfloat16() else ["float32"])
    n_img = a.images or max(batches)
    photos = [center_crop(Image.open(p), 256) for p in sorted((REPO / "examples" / "data").glob("*.png"))]
    pil = [photos[i % len(photos)] for i in range(n_img)]
    x_all = torch.cat([to_tensor(im)[0] for im in pil])
    what = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {what}; torch {torch.__version__}; {n_img} images of 256x256 per run, {a.tokens} tokens; "
          f"best of {a.reps}, batched and naive runs taking turns; naive loop in "
          f"{a.naive_dtype or 'the row dtype'}; load average at the start "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| model | dtype | stage | batch | img/s | peak MiB | naive loop img/s | naive peak MiB | speed-up |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        src = tmp / "images"
        src.mkdir()
        for i, im in enumerate(pil):
            im.save(src / f"{i:05d}.png")
        for name in a.models:
            ref = model_file(name, tmp)
            for dtype in dtypes:
                tok = gpstoken.load_tokenizer(ref, device=device, dtype=dtype)
                naive_tok = gpstoken.load_tokenizer(ref, device=device, dtype=a.naive_dtype or dtype)
                for stage in a.stages:
                    if stage == "tokenize" and dtype not in ("float32", "bfloat16"):
                        continue  # gpstoken tokenize --dtype: float32 or bfloat16
                    for b in batches:
                        fn, naive = _stage(stage, tok, naive_tok, ref, x_all, pil, src, tmp, b, a.tokens, device,
                                           dtype)
                        rows = measure([fn, naive] if a.naive else [fn], n_img, device, a.reps)
                        (ips, mib), (nips, nmib) = rows[0], rows[1] if a.naive else (float("nan"), float("nan"))
                        print(f"| {name} | {dtype} | {stage} | {b} | {ips:.3g} | {mib:.0f} | {nips:.3g} | {nmib:.0f} | "
                              f"{ips / nips:.2f}x |", flush=True)
        print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _stage(stage, tok, naive_tok, ref, x_all, pil, src, tmp, b, n, device, dtype):
    """(batched function with ``tok``, naive per-image function with ``naive_tok``) for one stage."""
    chunks = list(x_all.split(b))
    layouts = [gpstoken.partition(c, n) for c in chunks]
    x_dev = [c.to(device) for c in chunks]

    if stage == "partition":
        return (lambda: [gpstoken.partition(c, n) for c in chunks],
                lambda: [gpstoken.partition(im, n) for im in pil])
    if stage == "encode":
        return (lambda: [tok.encode_tensor(c, lay) for c, lay in zip(x_dev, layouts)],
                lambda: [gpstoken.encode(im, n, model=naive_tok) for im in pil])
    if stage == "decode":
        tokens = [tok.encode_tensor(c, lay) for c, lay in zip(x_dev, layouts)]
        single = [gpstoken.encode(im, n, model=naive_tok) for im in pil]
        return (lambda: [tok.decode_tensor(t) for t in tokens],
                lambda: [gpstoken.decode(t, model=naive_tok) for t in single])
    if stage == "reconstruct":
        return (lambda: [tok.decode_tensor(tok.encode_tensor(c.to(device), gpstoken.partition(c, n))) for c in chunks],
                lambda: [gpstoken.reconstruct(im, n, model=naive_tok) for im in pil])
    if stage == "tokenize":
        run = iter(range(10**6))

        def batched() -> None:
            tokenize(src, tmp / f"tok-{dtype}-{b}-{next(run)}", n, model=ref, batch_size=b, shard_size=max(64, b),
                     device=str(device), dtype=dtype, progress=False)

        def naive() -> None:
            out = tmp / f"naive-{dtype}-{b}-{next(run)}"
            out.mkdir()
            for p in sorted(src.glob("*.png")):
                img = center_crop(Image.open(p), 256)
                gpstoken.encode(img, n, model=naive_tok).save(out / f"{p.stem}.gpst")

        return batched, naive
    raise ValueError(f"--stages: unknown stage {stage!r}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
