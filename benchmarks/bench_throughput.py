"""Throughput (images/s) and peak memory of gpstoken's stages, batched vs a naive per-image loop.

    python benchmarks/bench_throughput.py [--models default m128] [--batch 1 4] [--dtype float32]
                                          [--images 8] [--tokens 128] [--fit-steps N] [--device cpu|cuda]

Stages, on 256x256 centre crops of the example photos (cycled):

* ``partition``: entropy partition of a batch (``gpstoken.partition``);
* ``encode`` / ``decode``: ``Tokenizer.encode_tensor`` / ``decode_tensor`` of a batch;
* ``reconstruct``: partition + encode + decode of a batch;
* ``tokenize``: ``gpstoken tokenize`` end to end (files -> shards: DataLoader workers decode,
  partition and, on the CPU, encode; shard writes), ``--batch-size`` = the batch.

Each batched row is shown beside the naive loop that does the same job one image at a time
through the public API (``gpstoken.partition`` / ``encode`` / ``decode`` / ``reconstruct`` per
image; for ``tokenize``: open, crop, ``gpstoken.encode`` and ``GPSTokens.save`` per image).
Models (``--models``): any registry name, Hub id or checkpoint file (default: ``default``, the
embedded tokenizer), and ``s64`` / ``m128`` / ``l256``: that official architecture with random
weights, built from the registry config (speed and memory only). Peak memory:
``torch.cuda.max_memory_allocated`` on CUDA, else the peak summed RSS of the process and its
DataLoader workers during the stage (sampled every 2 ms; pages shared with the parent count
once per process, so an upper bound). CPU ms/img: CPU time of the process and its workers per
image, which a shared machine's load changes far less than the wall time. dtype float16 only
on CUDA, bfloat16 on CUDA and on CPUs with native bfloat16 (AVX512-BF16, AMX). Each batched row
and its naive loop run in the same dtype and take turns (batched, naive, batched, ...), so a
changing load hits both alike (``--naive-dtype float32``: the naive loop in float32 whatever the
row's dtype; ``--naive-threads 1``: the naive loop with one torch thread, to separate what the
batched pipeline gains from its threading from what it gains from batching and overlap).
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
from gpstoken.image_dataset import torch_threads, usable_cores  # noqa: E402
from gpstoken.images import center_crop, to_tensor  # noqa: E402
from gpstoken.models.configs import TOKENIZER_ARCHS  # noqa: E402
from gpstoken.models.tokenizer import GPSTokenizer  # noqa: E402
from gpstoken.pretokenize import tokenize  # noqa: E402
from gpstoken.runtime import native_cpu_bfloat16  # noqa: E402


class Peak:
    """Peak memory (MiB) while the block runs: the CUDA allocator peak, or the sampled RSS of
    this process plus its children (DataLoader workers; the list is refreshed every 50 ms).
    Summed RSS counts pages a worker shares with its parent (libraries, the forked model) once
    per process, so on the CPU it is an upper bound when workers run. ``sampler_cpu``: CPU
    seconds the sampling thread used (subtracted from the measured CPU time)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib = 0.0
        self.sampler_cpu = 0.0

    def _rss(self) -> int:
        total = 0
        for proc in [self._proc, *self._children]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a worker that exited meanwhile
                pass
        return total

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._proc = psutil.Process()
            self._children: list[psutil.Process] = []
            self._stop = threading.Event()
            self._max = self._rss()

            def sample() -> None:
                last = 0.0
                while not self._stop.wait(0.002):
                    if time.perf_counter() - last > 0.05:
                        self._children, last = self._proc.children(recursive=True), time.perf_counter()
                    self._max = max(self._max, self._rss())
                self.sampler_cpu = time.thread_time()

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
            self.mib = max(self._max, self._rss()) / 2**20


def _cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its finished children (workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn, device: torch.device) -> tuple[float, float, float]:
    """(seconds, peak MiB, CPU seconds) of one call of ``fn``."""
    with Peak(device) as peak:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cpu, t0 = _cpu_seconds(), time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu
    return seconds, peak.mib, cpu - peak.sampler_cpu


def measure(fns: list, n_images: int, device: torch.device, reps: int) -> list[tuple[float, float, float]]:
    """(images/s of the best of ``reps`` timed runs, peak MiB of those runs, CPU ms per image
    of the fastest run) of each function, after one warm-up each. The functions take turns
    (a, b, a, b, ...), so on a shared machine a change of load hits them alike and their ratio
    stays fair. The CPU time leaves out the memory sampler's thread."""
    for fn in fns:
        fn()
    best = [(float("inf"), 0.0)] * len(fns)
    peak = [0.0] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            seconds, mib, cpu = _timed(fn, device)
            best[i], peak[i] = min(best[i], (seconds, cpu)), max(peak[i], mib)
    return [(n_images / b, m, 1000 * c / n_images) for (b, c), m in zip(best, peak)]


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
    ap.add_argument("--naive-threads", type=int, default=None,
                    help="torch threads of the naive loop (default: torch's default, what a user's loop gets)")
    ap.add_argument("--workers", type=int, default=None,
                    help="tokenize: DataLoader workers (default: gpstoken tokenize's default)")
    ap.add_argument("--fit-steps", type=int, default=None,
                    help="test-time fitting steps of encode, reconstruct and tokenize, batched and naive alike "
                         "(default: each model's own: 4 for the embedded default, 0 for the official shapes)")
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
    what = torch.cuda.get_device_name(device) if cuda else f"CPU, {usable_cores()} cores"
    fitting = "each model's own" if a.fit_steps is None else a.fit_steps
    print(f"device: {what}; torch {torch.__version__}, {torch.get_num_threads()} threads; {n_img} images of 256x256 "
          f"per run, {a.tokens} tokens; best of {a.reps}, batched and naive runs taking turns; test-time fitting "
          f"steps: {fitting} (both); naive loop in "
          f"{a.naive_dtype or 'the row dtype'} with {a.naive_threads or torch.get_num_threads()} threads; "
          f"load average at the start {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("CPU ms/img: CPU time (user + system) of the process and its DataLoader workers per image; "
          "load: the 1-minute load average after the row\n")
    print("| model | dtype | stage | batch | img/s | peak MiB | CPU ms/img | naive loop img/s | naive peak MiB | "
          "naive CPU ms/img | speed-up | load |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
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
                                           dtype, a.workers, a.fit_steps)
                        rows = measure([fn, _with_threads(naive, a.naive_threads)] if a.naive else [fn], n_img,
                                       device, a.reps)
                        ips, mib, cpu = rows[0]
                        if a.naive:
                            nips, nmib, ncpu = rows[1]
                            naive_cells = f"{nips:.3g} | {nmib:.0f} | {ncpu:.0f} | {ips / nips:.2f}x"
                        else:
                            naive_cells = "- | - | - | -"
                        print(f"| {name} | {dtype} | {stage} | {b} | {ips:.3g} | {mib:.0f} | {cpu:.0f} | "
                              f"{naive_cells} | {os.getloadavg()[0]:.1f} |", flush=True)
        print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def _with_threads(fn, threads):
    """``fn`` run with ``threads`` torch threads (restored after); ``fn`` itself when None."""
    if threads is None:
        return fn

    def run() -> None:
        with torch_threads(threads):
            fn()

    return run


def _stage(stage, tok, naive_tok, ref, x_all, pil, src, tmp, b, n, device, dtype, workers, fit):
    """(batched function with ``tok``, naive per-image function with ``naive_tok``) for one stage."""
    chunks = list(x_all.split(b))
    layouts = [gpstoken.partition(c, n) for c in chunks]
    x_dev = [c.to(device) for c in chunks]

    if stage == "partition":
        return (lambda: [gpstoken.partition(c, n) for c in chunks],
                lambda: [gpstoken.partition(im, n) for im in pil])
    if stage == "encode":
        return (lambda: [tok.encode_tensor(c, lay, fit_steps=fit) for c, lay in zip(x_dev, layouts)],
                lambda: [gpstoken.encode(im, n, model=naive_tok, fit_steps=fit) for im in pil])
    if stage == "decode":
        tokens = [tok.encode_tensor(c, lay, fit_steps=fit) for c, lay in zip(x_dev, layouts)]
        single = [gpstoken.encode(im, n, model=naive_tok, fit_steps=fit) for im in pil]
        return (lambda: [tok.decode_tensor(t) for t in tokens],
                lambda: [gpstoken.decode(t, model=naive_tok) for t in single])
    if stage == "reconstruct":
        return (lambda: [tok.decode_tensor(tok.encode_tensor(c.to(device), gpstoken.partition(c, n), fit_steps=fit))
                         for c in chunks],
                lambda: [gpstoken.reconstruct(im, n, model=naive_tok, fit_steps=fit) for im in pil])
    if stage == "tokenize":
        run = iter(range(10**6))

        def batched() -> None:
            tokenize(src, tmp / f"tok-{dtype}-{b}-{next(run)}", n, model=ref, batch_size=b, shard_size=max(64, b),
                     num_workers=workers, device=str(device), dtype=dtype, fit_steps=fit, progress=False)

        def naive() -> None:
            out = tmp / f"naive-{dtype}-{b}-{next(run)}"
            out.mkdir()
            for p in sorted(src.glob("*.png")):
                img = center_crop(Image.open(p), 256)
                gpstoken.encode(img, n, model=naive_tok, fit_steps=fit).save(out / f"{p.stem}.gpst")

        return batched, naive
    raise ValueError(f"--stages: unknown stage {stage!r}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
