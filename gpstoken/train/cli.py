"""``gpstoken train tokenizer|layout|texture --config FILE`` (also ``python -m gpstoken.train.cli``,
which is what ``accelerate launch -m gpstoken.train.cli ...`` runs on every process). The run
lives here; :mod:`gpstoken.cli` holds the arguments, parses them and reports errors."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence


def run_args(args: argparse.Namespace) -> dict:
    """Run the training command described by parsed ``args``; returns the run summary."""
    from pathlib import Path

    from ..hub import check_repo_id
    from .common import require_train_deps

    if not Path(args.config).is_file():
        raise FileNotFoundError(f"--config: {args.config} is not a file; give a train config JSON "
                                "(examples/configs/ has some)")
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


def report(args: argparse.Namespace, summary: dict) -> None:
    """Print what a finished run did (main process only)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"gpstoken train {args.kind}: done at step {summary['step']}, exported {summary['export']}")
        if "pushed" in summary:
            print(f"gpstoken train {args.kind}: pushed to {summary['pushed']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m gpstoken.train.cli`` (what ``accelerate launch`` runs): the
    same as ``gpstoken train ...``, errors included (one line, exit 1 or 2; ``--debug``)."""
    from ..cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
