"""Cost of one tokenizer training step on CPU, and where the time goes.

    python benchmarks/bench_train_step.py examples/configs/tiny_tokenizer.json \
        examples/configs/tiny_tokenizer_v2.json [--batch 2] [--reps 2] [--threads 2]

For each train config: one full step (forward, L1+L2 loss, backward, Adam) at ``--batch``
images of 256x256 with 128-token layouts, as the trainer runs it (the config's
``mixed_precision`` autocast and ``freeze``d parameters), best of ``--reps``; the configs
take turns, so a change in machine load affects all of them alike. One table: seconds per
step and per image, and the speed-up over the first config. Then, for the first config's
architecture: the forward+backward seconds (fp32, nothing frozen) of every part alone, on
inputs of the shapes the step gives it (the encoder: stem, RoIAlign, transformer; the
render; each decoder stage: mid blocks, every level's res blocks, every upsample, the output
head), with its share of their sum; and the data cost of one sample (a random multi-scale
crop of an offline photo and its entropy partition), which a DataLoader worker pays in
parallel. Weights are randomly initialised (speed does not depend on them).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import best_of  # noqa: E402

from gpstoken.models.tokenizer import GPSTokenizer  # noqa: E402
from gpstoken.train.data import PATCH, CropDataset, layout_arrays, training_images  # noqa: E402
from gpstoken.train.losses import reconstruction_loss  # noqa: E402
from gpstoken.train.tokenizer_trainer import TokenizerTrainConfig, freeze_parameters  # noqa: E402

DATA_SAMPLES = 8


def fwd_bwd(module: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    """A closure running ``module(*inputs)`` forward and backward (a fixed random cotangent)."""
    leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in inputs]
    with torch.no_grad():
        cot = torch.randn_like(module(*leaves))

    def run() -> None:
        out = module(*leaves)
        out.backward(cot)

    return run


def sample_batch(batch: int, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth random images [B,3,256,256] in [-1,1] and their entropy-partition layouts."""
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1
    images = torch.nn.functional.interpolate(low, size=(PATCH, PATCH), mode="bicubic").clamp(-1, 1)
    layouts = [layout_arrays(img, n_tokens) for img in images]
    return images, torch.stack([g for g, _ in layouts]), torch.stack([r for _, r in layouts])


def decoder_stages(model: GPSTokenizer, feat: torch.Tensor) -> list[tuple[str, Callable[[], None]]]:
    """(name, fwd+bwd closure) of every decoder stage, fed with the activations of one pass."""
    dec = model.decoder
    grid = (1, 1)
    stages: list[tuple[str, Callable[[], None]]] = []
    with torch.no_grad():
        h = dec.conv_in(feat)
    stages.append(("decoder conv_in", fwd_bwd(dec.conv_in, feat)))

    def mid(x: torch.Tensor) -> torch.Tensor:
        h = dec.mid.block_1(x, grid)
        if dec.mid.attn_1 is not None:  # absent in the light variant (mid_attn=False)
            h = dec.mid.attn_1(h, grid)
        return dec.mid.block_2(h, grid)

    stages.append((f"decoder mid ({h.shape[2]}px)", fwd_bwd(mid, h)))
    with torch.no_grad():
        h = mid(h)
    for i in reversed(range(len(dec.up))):
        level = dec.up[i]

        def blocks(x: torch.Tensor, level=level) -> torch.Tensor:
            for block in level.block:
                x = block(x, grid)
            return x

        stages.append((f"decoder level {i} blocks ({h.shape[2]}px, {len(level.block)} blocks)", fwd_bwd(blocks, h)))
        with torch.no_grad():
            h = blocks(h)
        if level.upsample is not None:
            stages.append((f"decoder level {i} upsample (to {2 * h.shape[2]}px)", fwd_bwd(level.upsample, h)))
            with torch.no_grad():
                h = level.upsample(h)

    def head(x: torch.Tensor) -> torch.Tensor:
        return dec.conv_out(dec.norm_out(x, (1, 1), swish=True))

    stages.append((f"decoder head ({h.shape[2]}px)", fwd_bwd(head, h)))
    return stages


def make_step(path: str, batch: int, n_tokens: int) -> tuple[TokenizerTrainConfig, GPSTokenizer, Callable[[], None]]:
    """The config, model and a closure running one training step as the trainer does."""
    cfg = TokenizerTrainConfig.from_json(path)
    torch.manual_seed(0)
    model = GPSTokenizer(cfg.tokenizer_config())
    frozen = freeze_parameters(model, cfg.freeze)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if n not in frozen], lr=1e-5)
    images, g, r = sample_batch(batch, n_tokens)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            recon, _ = model(images, g, r)
        loss = reconstruction_loss(recon.float(), images, cfg.l1_weight, cfg.l2_weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return cfg, model, step


def breakdown(cfg: TokenizerTrainConfig, batch: int, n_tokens: int, reps: int) -> None:
    """Print the fwd+bwd seconds of every part (fp32, nothing frozen) and the data cost."""
    torch.manual_seed(0)
    model = GPSTokenizer(cfg.tokenizer_config())
    images, g, r = sample_batch(batch, n_tokens)
    data = CropDataset(training_images(cfg.data)[0], cfg.data, cfg.seed)
    t = time.perf_counter()
    for i in range(DATA_SAMPLES):  # distinct photos: each is decoded, as a worker's first time
        data[(i, n_tokens)]
    t_data = (time.perf_counter() - t) / DATA_SAMPLES
    with torch.no_grad():
        tokens = model.encode(images, g, r)
        feat = model.render(tokens)
    parts = [("encoder (stem, RoIAlign, transformer)", fwd_bwd(lambda x: model.encode(x, g, r), images)),
             ("render (splat)", fwd_bwd(model.render, tokens))]
    parts += decoder_stages(model, feat)
    timed = [(name, best_of(fn, reps, warmup=True)) for name, fn in parts]
    total = sum(t for _, t in timed)
    print(f"\ndata: {t_data:.3f} s per sample ({cfg.data.init} layout, crop of a freshly decoded photo, one worker)\n")
    print(f"| part (fwd + bwd, fp32, batch {batch}) | seconds | share |")
    print("|---|---|---|")
    for name, t in timed:
        print(f"| {name} | {t:.3f} | {100 * t / total:.0f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="tokenizer train config JSON files")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-parts", action="store_true", help="only the full steps")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    runs = [make_step(c, a.batch, a.tokens) for c in a.configs]
    best = [float("inf")] * len(runs)
    for rep in range(a.reps + 1):  # configs interleaved, so a change in machine load hits all alike
        for i, (_, _, step) in enumerate(runs):
            t = time.perf_counter()
            step()
            if rep:  # rep 0 warms up
                best[i] = min(best[i], time.perf_counter() - t)
    print(f"| config | params | autocast | frozen | s/step (batch {a.batch}, {a.tokens} tokens) | s/image | "
          f"speed-up vs first |")
    print("|---|---|---|---|---|---|---|")
    for c, (cfg, model, _), t in zip(a.configs, runs, best):
        n = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"| {c} | {n:.2f}M | {cfg.mixed_precision} | {', '.join(cfg.freeze) or '-'} | {t:.2f} | "
              f"{t / a.batch:.2f} | {best[0] / t:.2f}x |")
    if not a.no_parts:
        breakdown(runs[0][0], a.batch, a.tokens, a.reps)


if __name__ == "__main__":
    main()
