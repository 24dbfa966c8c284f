"""``gpstoken train tokenizer|layout|texture --config FILE`` (also ``python -m gpstoken.train.cli``,
which is what ``accelerate launch -m gpstoken.train.cli ...`` runs on every process)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

KINDS = ("tokenizer", "layout", "texture")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of one ``train`` command."""
    p.add_argument("kind", choices=KINDS, help="what to train: the tokenizer, the layout SiT or the texture SiT")
    p.add_argument("--config", required=True, help="train config JSON (see examples/configs/)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init-from", default=None, help="safetensors weights to start from (fine-tuning)")
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: checkpoint, export and stop after this many minutes")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="override mixed_precision")
    p.add_argument("--tokenizer", default=None, help="texture: override the config's tokenizer")
    p.add_argument("--layout-from", default=None, help="texture: bundle this layout export into the generator")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="tokenizer/texture: upload the exported model to this Hub repo (owner/name) at the end")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpstoken train", description="Train GPSToken models (needs gpstoken[train]).")
    add_train_arguments(p)
    return p


def run_args(args: argparse.Namespace) -> dict:
    """Run the training command described by parsed ``args``; returns the run summary."""
    from pathlib import Path

    from ..hub import check_repo_id
    from .common import require_train_deps

    if args.push_to_hub is not None:  # before any work
        if args.kind == "layout":
            raise ValueError("--push-to-hub: a layout export is not a model on its own; push the texture generator "
                             "trained with --layout-from instead")
        check_repo_id(args.push_to_hub, "--push-to-hub")
    require_train_deps()
    from .generator_trainer import GeneratorTrainConfig, train_generator
    from .tokenizer_trainer import TokenizerTrainConfig, train_tokenizer

    cls = TokenizerTrainConfig if args.kind == "tokenizer" else GeneratorTrainConfig
    cfg = cls.from_json(args.config)
    if args.max_steps is not None:
        cfg.max_steps = args.max_steps
    if args.max_minutes is not None:
        cfg.max_minutes = args.max_minutes
    if args.mixed_precision is not None:
        cfg.mixed_precision = args.mixed_precision
    if args.init_from is not None:
        cfg.init_from = args.init_from
    if args.kind != "tokenizer":
        if args.tokenizer is not None:
            cfg.tokenizer = args.tokenizer
        if args.layout_from is not None:
            cfg.layout_from = args.layout_from
    elif args.tokenizer or args.layout_from:
        raise ValueError("--tokenizer / --layout-from apply to layout and texture training only")
    out = args.out or str(Path("runs") / Path(args.config).stem)
    if args.kind == "tokenizer":
        summary = train_tokenizer(cfg, out, resume=args.resume)
    else:
        summary = train_generator(cfg, out, args.kind, resume=args.resume)
    if args.push_to_hub is not None and os.environ.get("RANK", "0") == "0":
        from ..pipeline import load_generator, load_tokenizer

        load = load_tokenizer if args.kind == "tokenizer" else load_generator
        summary["pushed"] = load(summary["export"], device="cpu").push_to_hub(args.push_to_hub)
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: returns a process exit code (1 with a message on configuration errors)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        summary = run_args(args)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"gpstoken train {args.kind}: error: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"gpstoken train {args.kind}: done at step {summary['step']}, exported {summary['export']}")
        if "pushed" in summary:
            print(f"gpstoken train {args.kind}: pushed to {summary['pushed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
