"""Reconstruction with and without a priority box, saved as one side-by-side PNG.

    python examples/priority_box.py examples/data/astronaut.png --box 60 20 190 150 --tokens 64 -o priority.png

Columns: input | layout without priority | reconstruction | layout with the box | reconstruction.
The box (pixels x0 y0 x1 y1) feeds the partition's bias map, so more Gaussians land inside it.
"""
from __future__ import annotations

import argparse

from PIL import Image, ImageDraw

import gpstoken


def side_by_side(images: list[Image.Image]) -> Image.Image:
    w, h = images[0].size
    canvas = Image.new("RGB", (w * len(images), h), "white")
    for i, im in enumerate(images):
        canvas.paste(im.convert("RGB"), (i * w, 0))
    return canvas


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image")
    p.add_argument("--box", type=int, nargs=4, default=[60, 20, 190, 150], metavar=("X0", "Y0", "X1", "Y1"))
    p.add_argument("--tokens", type=int, default=64, help="tokens per 256x256 patch")
    p.add_argument("-o", "--output", default="priority.png")
    a = p.parse_args()

    img = Image.open(a.image).convert("RGB")
    plain = gpstoken.edit_layout(img, n_tokens=a.tokens)
    focused = gpstoken.edit_layout(img, n_tokens=a.tokens, priority=[tuple(a.box)])
    columns = [img]
    for layout in (plain, focused):
        tokens = gpstoken.encode(img, layout=layout)
        drawn = tokens.draw(img)
        if layout is focused:
            ImageDraw.Draw(drawn).rectangle(a.box, outline=(0, 255, 0), width=2)
        columns += [drawn, gpstoken.decode(tokens)]
    side_by_side(columns).save(a.output)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
