"""One-command GPU session: spend a lent GPU's few minutes on issue 12's training and issue 13's table.

Run on the device machine from the carried repository (``docs/model_card.md``, "When a GPU is
lent", has the exact device-tool call), after ``python examples/gpu/prepare.py`` built the data
pack ``.devdata/gpu`` here:

    python examples/gpu/session.py --budget-minutes 9          # on the GPU; results in $OUT
    python examples/gpu/session.py --device cpu --budget-minutes 12 --out runs/gpu_dry/out  # dry run (slow CPU)

Phases, in this order, each in its own process group with a time box (a phase that overruns is
killed; the next one starts on time). A box is the phase's share of the time left, so time a
phase does not use goes to the later ones:

* ``setup``: the native partition (the pack's stable-ABI build, else one compiled with the
  machine's C compiler, else the pure-torch path), checked against the pure-torch partition;
* ``tests``: the render, backend and histogram-kernel tests, on CUDA with the real Triton kernels;
* ``half``: float16 and bfloat16 reconstruction against float32 on the held-out crops, the
  float32 re-decode of a non-finite half-precision decode (forced), and the partition of CUDA
  images against the CPU one;
* ``train``: the embedded light tokenizer continued from the shipped weights
  (``examples/configs/tiny_tokenizer_light_gpu.json``, photos from the pack); a probe measures
  steps/s, then the run resumes with ``max_steps`` set so that its cosine schedule ends with the box;
* ``eval``: the new and the shipped tokenizer and the bicubic thumbnail on the held-out crops at
  64 / 128 / 256 tokens (``examples/evaluate_tokenizer.py``);
* ``bench``: ``benchmarks/bench_throughput.py``, reconstruct, random-weight M128 and the default,
  bfloat16 / float16 / float32: batch 16 and 64 first, then batch 1 beside the naive loop;
* ``texture``: the generator's texture model retrained on the tokens of the new tokenizer when it
  beat the shipped one at every token count, else of the shipped one
  (``examples/configs/tiny_texture_retrain.json``).

What comes back (at most 8 files in ``--out``): ``summary.json`` (rewritten after every phase:
statuses, times, figures), ``session.log`` (every phase's output), ``tokenizer.safetensors``
and ``tokenizer_metrics.jsonl``, ``heldout.md``, ``bench.md``, ``generator.safetensors`` and
``texture_metrics.jsonl``. A phase's files are copied as soon as it ends, so a later failure
loses nothing. ``--device cpu`` runs every phase with tiny sizes (a dry run of the wiring).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its modules, also when loaded by path
from session_phases import Phases  # noqa: E402
from session_runner import FLOORS, REPO, RESERVE_S, SHARES, Session  # noqa: E402

PACK = REPO / ".devdata" / "gpu"


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-minutes", type=float, default=9.0,
                   help="wall-clock minutes for all phases (default 9: the device tool runs a command for at most 10)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (default), or cpu: a dry run of every phase with tiny sizes")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_session/out",
                   help="folder for the files that come back (default: $OUT, else runs/gpu_session/out)")
    p.add_argument("--work", default="runs/gpu_session", help="work folder (runs, caches; default runs/gpu_session)")
    p.add_argument("--pack", default=str(PACK), help="the data pack of examples/gpu/prepare.py (default .devdata/gpu)")
    p.add_argument("--phases", nargs="+", default=list(SHARES),
                   help=f"run only these phases (in the fixed order; default all: {' '.join(SHARES)}); eval "
                        "then reads the tokenizer a train phase left in --work, texture uses the shipped "
                        "tokenizer unless eval ran")
    a = p.parse_args(argv)
    unknown = [x for x in a.phases if x not in SHARES]
    if unknown:
        p.error(f"--phases: unknown {unknown}; choose from {list(SHARES)}")
    least = (sum(FLOORS[x] for x in a.phases) + RESERVE_S) / 60
    if not a.budget_minutes >= least:
        p.error(f"--budget-minutes: at least {least:.2f} for these phases (their floors), got {a.budget_minutes}")
    env = {"GPSTOKEN_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if a.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; use --device cpu for a dry run")
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        p.error(f"--out: {out} is not empty; give a new folder (the session's files would mix with others)")
    session = Session(out.resolve(), Path(a.work).resolve(), 60.0 * a.budget_minutes, env)
    session.summary.update(device=a.device, budget_minutes=a.budget_minutes)
    summary = session.run([(n, fn) for n, fn in Phases(session, a.device, Path(a.pack).resolve()).all()
                           if n in a.phases])
    for name in ("heldout.md", "bench.md"):
        if (out / name).is_file():
            print(f"\n{name}:\n{(out / name).read_text()}")
    print(f"\nsession: {summary['seconds']:.0f} s; files in {out}: {', '.join(summary['files'])}")
    for name, rec in summary["phases"].items():  # one line each (the tool shows the output's tail)
        brief = {k: v for k, v in rec.items() if k not in ("rows", "box_s")}
        print(f"{name}: {json.dumps(brief, default=str)[:600]}")
    return 0 if all(r.get("status") == "ok" for r in summary["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
