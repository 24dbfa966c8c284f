"""How recognisable a generator's samples are: top-1 of a nearest-centroid classifier on ImageNet
features (EfficientNet-Lite0), per class, for generated samples next to held-out real crops.

    pip install 'gpstoken[eval,train]'
    python examples/recognisability.py                      # the default generator, 64 samples per class
    python examples/recognisability.py --n 8 --json rec.json --markdown rec.md   # a few minutes on a CPU

The centroids are fitted on `--fit` real crops per class, cut like the generator's training
crops; `--real` other crops per class are classified as the real reference (see
`gpstoken.recognition`). For a generator with other classes than the default one, `--real-source`
is a folder with one sub-folder per class (sorted names = the generator's class names).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from gpstoken.io import write_text
from gpstoken.pipeline import load_generator
from gpstoken.recognition import recognisability


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator", nargs="?", default="default", help="generator: registry name, Hub id or path")
    p.add_argument("--n", type=int, default=64, help="generated samples per class (fewer: faster on a CPU)")
    p.add_argument("--fit", type=int, default=32, help="real crops per class that fit the centroids")
    p.add_argument("--real", type=int, default=16, help="held-out real crops per class (the real reference)")
    p.add_argument("--real-source", default="offline", help="'offline' or a folder with one sub-folder per class")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the generator's)")
    p.add_argument("--sampler", default=None, help="sampler (default: the generator's)")
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance (default: the generator's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="samples generated at once")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    p.add_argument("--markdown", default=None, help="also write the table to this markdown file")
    a = p.parse_args()
    for flag, value in (("--n", a.n), ("--fit", a.fit), ("--real", a.real), ("--batch", a.batch)):
        if value < 1:
            p.error(f"{flag}: must be >= 1, got {value}")
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    try:
        gen = load_generator(a.generator, device=a.device)
        report = recognisability(gen, n_generated=a.n, n_fit=a.fit, n_real=a.real, real=a.real_source,
                                 seed=a.seed, steps=a.steps, sampler=a.sampler, cfg_scale=a.cfg_scale,
                                 batch_size=a.batch, log=log)
        table = report.markdown()
        if a.json:
            write_text(a.json, json.dumps({**report.to_dict(), "seconds": round(time.time() - start)}, indent=2))
        if a.markdown:
            write_text(a.markdown, table + "\n")
    except (ValueError, TypeError, FileNotFoundError, ImportError, OSError) as e:
        print(f"recognisability: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recognisability: interrupted", file=sys.stderr)
        return 130
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
