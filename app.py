"""Hugging Face Space entry point: the ``gpstoken studio`` page on 0.0.0.0:7860 (docs/studio.md).

    python app.py                 # or, in a Docker Space: CMD ["python", "app.py"]

Environment: ``PORT`` (default 7860), ``GPSTOKEN_MODEL`` (tokenizer, default "default"),
``GPSTOKEN_GENERATOR`` (generator, default "default"; "none" turns generation off).
It listens on all interfaces, as a Space must; on your own machine use ``gpstoken studio``,
which listens on localhost only.
"""
from __future__ import annotations

import os
from pathlib import Path

from gpstoken.studio import serve

if __name__ == "__main__":
    generator = os.environ.get("GPSTOKEN_GENERATOR", "default")
    serve(os.environ.get("GPSTOKEN_MODEL", "default"), None if generator.lower() == "none" else generator,
          host="0.0.0.0", port=int(os.environ.get("PORT", "7860")),
          examples=Path(__file__).resolve().parent / "examples" / "data")
