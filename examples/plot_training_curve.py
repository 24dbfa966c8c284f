"""Plot a tokenizer run's held-out PSNR against optimizer steps (needs matplotlib).

Reads the ``eval_psnr`` records of ``RUN/metrics.jsonl`` (the trainer's periodic evaluation
of the EMA weights on the held-out crops; a resumed run appends to the same file) and draws
them with optional reference lines, e.g. the bicubic baseline and the starting model as
measured by ``examples/evaluate_tokenizer.py`` at the same token count:

    python examples/plot_training_curve.py runs/tiny_cpu docs/images/tiny_cpu_curve.png \
        --start 19.39 --ref "bicubic thumbnail (30x30x3)=22.38" --title "128 tokens, 8 held-out photos"
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_curve(run: Path) -> list[tuple[int, float]]:
    """(step, eval_psnr) of a run, in step order; the last record wins for a repeated step."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run}: no metrics.jsonl (is it a training run folder?)")
    points: dict[int, float] = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "eval_psnr" in rec:
            points[int(rec["step"])] = float(rec["eval_psnr"])
    return sorted(points.items())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="run folder with metrics.jsonl")
    p.add_argument("png", type=Path, help="output PNG")
    p.add_argument("--start", type=float, default=None, help="held-out PSNR at step 0 (the initial weights)")
    p.add_argument("--ref", action="append", default=[], help="LABEL=PSNR horizontal reference line (repeatable)")
    p.add_argument("--title", default="held-out PSNR during training")
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = read_curve(a.run)
    if a.start is not None:
        curve = [(0, a.start)] + [c for c in curve if c[0] > 0]
    if not curve:
        raise SystemExit(f"{a.run}: no eval_psnr records yet")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot([s for s, _ in curve], [v for _, v in curve], "o-", ms=3, label=f"EMA weights ({a.run.name})")
    for ref in a.ref:
        label, _, value = ref.rpartition("=")
        if not label:
            raise SystemExit(f"--ref {ref!r}: expected LABEL=PSNR")
        ax.axhline(float(value), ls="--", lw=1, color="grey")
        ax.text(0, float(value), f" {label}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(a.title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    a.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.png)
    print(f"wrote {a.png} ({len(curve)} points, last: step {curve[-1][0]}, {curve[-1][1]:.2f} dB)")


if __name__ == "__main__":
    main()
