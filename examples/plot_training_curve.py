"""Plot a tokenizer run's held-out PSNR against optimizer steps (needs matplotlib).

Reads the ``eval_psnr`` records of ``RUN/metrics.jsonl`` (the trainer's periodic evaluation
of the EMA weights on the held-out crops; a resumed run appends to the same file) and draws
them with optional reference lines, e.g. the bicubic baseline and the starting model as
measured by ``examples/evaluate_tokenizer.py`` at the same token count:

    python examples/plot_training_curve.py runs/tiny_light [runs/tiny_light_uniform] docs/images/tiny_light_curve.png \
        --ref "bicubic thumbnail (30x30x3)=22.38" --title "128 tokens, 8 held-out photos"

A warm restart (a new run folder started with ``--init-from`` another run's weights) is drawn
where it continues with ``--offset RUN=STEPS``.
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
    p.add_argument("runs", type=Path, nargs="+",
                   help="run folder(s) with metrics.jsonl, one line each; then the output PNG")
    p.add_argument("--start", type=float, default=None, help="held-out PSNR at step 0 (the initial weights)")
    p.add_argument("--ref", action="append", default=[], help="LABEL=PSNR horizontal reference line (repeatable)")
    p.add_argument("--title", default="held-out PSNR during training")
    p.add_argument("--offset", action="append", default=[],
                   help="RUN=STEPS: that run started from weights already trained for STEPS steps (a warm restart "
                        "with --init-from); its curve is drawn from step STEPS on (repeatable)")
    a = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(a.runs) < 2:
        raise SystemExit("expected RUN [RUN ...] PNG")
    *runs, png = a.runs
    offsets: dict[Path, int] = {}
    for item in a.offset:
        name, _, steps = item.rpartition("=")
        if Path(name) not in runs or not steps.isdigit():
            raise SystemExit(f"--offset {item!r}: expected RUN=STEPS with RUN one of the run folders given")
        offsets[Path(name)] = int(steps)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for run in runs:
        curve = read_curve(run)
        if a.start is not None:
            curve = [(0, a.start)] + [c for c in curve if c[0] > 0]
        if not curve:
            raise SystemExit(f"{run}: no eval_psnr records yet")
        shift = offsets.get(run, 0)
        ax.plot([s + shift for s, _ in curve], [v for _, v in curve], "o-", ms=3, label=f"EMA weights ({run.name})")
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
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    print(f"wrote {png} ({len(runs)} run(s); last: step {curve[-1][0]}, {curve[-1][1]:.2f} dB)")


if __name__ == "__main__":
    main()
