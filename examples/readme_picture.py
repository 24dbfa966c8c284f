"""Make the README's first picture: input, Gaussian layout, reconstruction (256x256 each).

    python examples/readme_picture.py -o docs/images/readme.png [--model default] [--tokens 128]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

import gpstoken

HERE = Path(__file__).parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", type=Path, required=True, help="output PNG")
    p.add_argument("--image", type=Path, default=HERE / "data" / "astronaut.png")
    p.add_argument("--model", default="default")
    p.add_argument("--tokens", type=int, default=128)
    a = p.parse_args()
    img = Image.open(a.image).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    tok = gpstoken.load_tokenizer(a.model, device="cpu")
    tokens = tok.encode(img, n_tokens=a.tokens)
    rec = tok.decode(tokens)
    layout = tokens.draw(img)
    panels = [img, layout, rec]
    sheet = Image.new("RGB", (256 * len(panels), 256))
    for i, panel in enumerate(panels):
        sheet.paste(panel.convert("RGB").resize((256, 256)), (256 * i, 0))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
