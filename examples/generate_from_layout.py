"""Two-stage generation from a layout you choose: the feature no other tokenizer has.

    python examples/generate_from_layout.py --class 4 -o from_layout.png

Stage 1 (the layout) comes from you instead of the layout model: here the entropy partition
of a photo, with extra small Gaussians placed by hand in its top-left corner. Stage 2 (the
texture) is sampled by the generator conditioned on that layout. Saves:
layout | sample from the model's own layout | samples from your layout.
"""
from __future__ import annotations

import argparse

from PIL import Image

import gpstoken


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--class", dest="class_id", type=int, default=4)
    p.add_argument("--image", default="examples/data/chelsea.png", help="photo whose partition gives the layout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("-o", "--output", default="from_layout.png")
    a = p.parse_args()

    gen = gpstoken.load_generator("default")
    photo = Image.open(a.image).convert("RGB").resize((256, 256))
    layout = gpstoken.edit_layout(photo, n_tokens=gen.n_tokens)
    # remove the 4 last tokens and place 4 small Gaussians of your own in the top-left corner
    n = layout.n_tokens
    layout = gpstoken.edit_layout(layout, remove=list(range(n - 4, n)),
                                  add=[(0, 0, 31, 31), (32, 0, 63, 31), (0, 32, 31, 63), (32, 32, 63, 63)])
    own = gpstoken.generate(a.class_id, n=1, seed=a.seed, steps=a.steps, model=gen)
    mine = gpstoken.generate(a.class_id, n=2, seed=a.seed, steps=a.steps, layout=layout, model=gen)
    tiles = [layout.draw(), *own, *mine]
    canvas = Image.new("RGB", (256 * len(tiles), 256), "white")
    for i, t in enumerate(tiles):
        canvas.paste(t.convert("RGB").resize((256, 256)), (256 * i, 0))
    canvas.save(a.output)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
