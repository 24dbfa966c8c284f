"""How recognisable a generator's samples are: top-1 of a nearest-centroid classifier on ImageNet
features (EfficientNet-Lite0), per class, for generated samples next to held-out real crops.

    pip install 'gpstoken[eval,train]'
    python examples/recognisability.py                      # the default generator, 64 samples per class
    python examples/recognisability.py --n 8 --json rec.json --markdown rec.md
    python examples/recognisability.py --n 16 --cfg-scale 1 1.5 2.5 4 --sampler sde ode --reference ref.safetensors

The centroids are fitted on `--fit` real crops per class, cut like the generator's training
crops; `--real` other crops per class are classified as the real reference (see
`gpstoken.recognition`). Several values of the sampling options make a sweep over every
combination: the samples of all settings share their layouts, and the tables give the overall
top-1 (+- one binomial standard error) per setting and the top-1 per class and setting.
`--reference FILE` keeps the fitted centroids and the real top-1 for the next run with the
same real-crop settings. For a generator with other classes than the default one,
`--real-source` is a folder with one sub-folder per class (sorted names = the generator's class
names). On a CPU shared with another busy process, `--threads 1` avoids the waits of
threads that are not scheduled (tens of times slower there).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch

from gpstoken.io import write_text
from gpstoken.pipeline import load_generator
from gpstoken.recognition import recognisability_sweep, sweep_markdown


def _interval(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH flow times such as 0.2,1, got {text!r}") from None
    return low, high


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generator", nargs="?", default="default", help="generator: registry name, Hub id or path")
    p.add_argument("--n", type=int, default=64, help="generated samples per class and setting")
    p.add_argument("--fit", type=int, default=32, help="real crops per class that fit the centroids")
    p.add_argument("--real", type=int, default=16, help="held-out real crops per class (the real reference)")
    p.add_argument("--real-source", default="offline", help="'offline' or a folder with one sub-folder per class")
    p.add_argument("--steps", type=int, nargs="+", default=[None], help="sampling steps (default: the generator's)")
    p.add_argument("--sampler", nargs="+", default=[None], help="sampler: sde, ode, ... (default: the generator's)")
    p.add_argument("--cfg-scale", type=float, nargs="+", default=[None],
                   help="classifier-free guidance scale (default: the generator's)")
    p.add_argument("--guidance-interval", type=_interval, nargs="+", default=[None], metavar="LOW,HIGH",
                   help="flow times where guidance applies, e.g. 0,1 (default: the generator's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=8, help="samples generated at once")
    p.add_argument("--reference", default=None, help="file that keeps the fitted centroids between runs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", default=None, help="also write the reports to this JSON file")
    p.add_argument("--markdown", default=None, help="also write the table(s) to this markdown file")
    a = p.parse_args()
    for flag, value in (("--n", a.n), ("--fit", a.fit), ("--real", a.real), ("--batch", a.batch),
                        ("--threads", a.threads or 1)):
        if value < 1:
            p.error(f"{flag}: must be >= 1, got {value}")
    if a.threads:
        torch.set_num_threads(a.threads)
    settings = [{"steps": st, "sampler": sa, "cfg_scale": cf, "guidance_interval": gi}
                for st, sa, cf, gi in itertools.product(a.steps, a.sampler, a.cfg_scale, a.guidance_interval)]
    start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    try:
        gen = load_generator(a.generator, device=a.device)
        reports = recognisability_sweep(gen, settings, n_generated=a.n, n_fit=a.fit, n_real=a.real,
                                        real=a.real_source, seed=a.seed, batch_size=a.batch, reference=a.reference,
                                        log=log)
        table = reports[0].markdown() if len(reports) == 1 else sweep_markdown(reports)
        if a.json:
            payload = [r.to_dict() for r in reports]
            write_text(a.json, json.dumps({"reports": payload, "seconds": round(time.time() - start)}, indent=2))
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
