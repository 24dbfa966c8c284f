"""Ship a trained tokenizer as the embedded default: copy an export (e.g. a run's
``export/tokenizer.safetensors``) to ``gpstoken/weights/gpstoken_tiny.safetensors`` in float16,
keeping its metadata and setting the default test-time fitting steps (``fit_steps``,
:mod:`gpstoken.models.token_fit`).

    python examples/ship_tokenizer.py runs/tiny_light_restart/export/tokenizer.safetensors --fit-steps 4

Ship only after `examples/evaluate_tokenizer.py` shows the new weights better at 64, 128 and 256
tokens (docs/model_card.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import gpstoken
from gpstoken import checkpoint
from gpstoken.io import write_safetensors

DEFAULT_OUT = Path(gpstoken.__file__).parent / "weights" / "gpstoken_tiny.safetensors"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("export", help="the tokenizer checkpoint to ship (.safetensors written by gpstoken)")
    p.add_argument("--fit-steps", type=int, required=True, help="default test-time fitting steps (0: none)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where to write (default: the embedded default)")
    a = p.parse_args()
    if a.fit_steps < 0:
        raise SystemExit(f"--fit-steps: must be >= 0, got {a.fit_steps}")
    state, meta = checkpoint.load_safetensors(a.export)
    if checkpoint.checkpoint_config(meta, "tokenizer") is None:
        raise SystemExit(f"{a.export}: not a gpstoken tokenizer checkpoint (no config in its metadata)")
    meta = {k: v for k, v in meta.items() if k != "fit_steps"}
    if a.fit_steps:
        meta["fit_steps"] = str(a.fit_steps)
    write_safetensors({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, a.out, meta)
    print(f"wrote {a.out} (fit_steps {a.fit_steps})")


if __name__ == "__main__":
    main()
