"""The class grid of the model card: a few samples of every class of a generator in one PNG.

    python examples/class_grid.py -o docs/images/class_grid.png          # the default generator
    python examples/class_grid.py runs/tiny_texture/export/generator.safetensors -o grid.png

Row r holds classes `r*K .. r*K+K-1` (`K = --classes-per-row`, default 2), each as `--per-class`
samples side by side, `--tile` pixels each. Sampling: seed, sampler and steps as given (the
model card's grid: seed 0, ODE Heun, 25 steps, the model's own layouts), guidance as the
generator's default.
"""
from __future__ import annotations

import argparse
import math
import sys

from PIL import Image

from gpstoken.io import save_image
from gpstoken.pipeline import load_generator


def class_grid(generator, per_class: int = 4, classes_per_row: int = 2, tile: int = 128, *, seed: int = 0,
               steps: int = 25, sampler: str = "ode") -> Image.Image:
    """A grid of ``per_class`` samples of every class of ``generator`` (a loaded Generator)."""
    k = generator.num_classes
    rows = math.ceil(k / classes_per_row)
    canvas = Image.new("RGB", (tile * per_class * classes_per_row, tile * rows), "white")
    for c in range(k):
        result = generator.generate(c, n=per_class, seed=seed, steps=steps, sampler=sampler, progress=False)
        r, j = divmod(c, classes_per_row)
        for i, im in enumerate(result.images):
            canvas.paste(im.convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS),
                         ((j * per_class + i) * tile, r * tile))
        print(f"class {c} {(generator.class_names or [str(c)] * k)[c]}: {per_class} samples", file=sys.stderr)
    return canvas


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator", nargs="?", default="default", help="generator: registry name, Hub id or path")
    p.add_argument("-o", "--output", default="class_grid.png", help="PNG to write")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--classes-per-row", type=int, default=2)
    p.add_argument("--tile", type=int, default=128, help="side of one sample in the grid, pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="ode")
    p.add_argument("--device", default=None)
    a = p.parse_args()
    for name in ("per_class", "classes_per_row", "tile"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(a, name)}")
    try:
        gen = load_generator(a.generator, device=a.device)
        grid = class_grid(gen, a.per_class, a.classes_per_row, a.tile, seed=a.seed, steps=a.steps, sampler=a.sampler)
        save_image(grid, a.output)
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"class_grid: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
