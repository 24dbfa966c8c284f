"""Module-level public functions (re-exported by ``gpstoken``).

Every image argument accepts a PIL image, a numpy array (HxWx3 uint8 or float in [0,1]),
a torch tensor ([3,H,W] or [B,3,H,W] float in [-1,1]) or a list of these; outputs come back
in the kind that was given.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from . import images as _images
from .layout import Layout, calibrate as _calibrate
from .partition import partition
from .pipeline import Generator, Tokenizer, load_generator, load_tokenizer
from .tokens import GPSTokens

ImageLike = Any


def _tokenizer(model: str | Tokenizer, device=None) -> Tokenizer:
    return model if isinstance(model, Tokenizer) else load_tokenizer(model, device=device)


def encode(image: ImageLike, n_tokens: Optional[int] = None, *, layout: Optional[Layout] = None,
           model: str | Tokenizer = "default", device=None) -> GPSTokens:
    """Encode images into GPS tokens.

    image: any accepted image kind, H, W >= 32. n_tokens: tokens per 256x256 patch (default:
    what the model was trained with); ignored when ``layout`` is given. layout: a
    :class:`Layout` from :func:`partition` / :func:`edit_layout` for these images.
    Returns :class:`GPSTokens` with geometry [B, k*m*n_tokens, 5] and features [B, ..., C].
    """
    tok = _tokenizer(model, device)
    x, kind = _images.to_tensor(image)
    if layout is None:
        layout = partition(x, n_tokens if n_tokens is not None else tok.config.gps_num)
    elif not isinstance(layout, Layout):
        raise TypeError(f"layout: expected a gpstoken.Layout, got {type(layout).__name__}")
    elif n_tokens is not None and n_tokens != layout.n_tokens:
        raise ValueError(f"n_tokens: {n_tokens} disagrees with the layout's {layout.n_tokens} tokens per patch")
    return tok.encode_tensor(x, layout).with_source(kind)


def decode(tokens: GPSTokens, *, model: Optional[str | Tokenizer] = None, device=None) -> ImageLike:
    """Decode :class:`GPSTokens` into images of the encoded size, in the kind that was encoded
    (PIL for tokens loaded from a file). model: defaults to ``tokens.model``."""
    if not isinstance(tokens, GPSTokens):
        raise TypeError(f"tokens: expected gpstoken.GPSTokens (from encode or GPSTokens.load), got {type(tokens).__name__}")
    tok = _tokenizer(model if model is not None else tokens.model, device)
    return _images.from_tensor(tok.decode_tensor(tokens), tokens.output_kind)


def reconstruct(image: ImageLike, n_tokens: Optional[int] = None, **kw) -> ImageLike:
    """``decode(encode(image, n_tokens, **kw))``: same kind and size as the input."""
    return decode(encode(image, n_tokens, **kw), model=kw.get("model", "default"), device=kw.get("device"))


def edit_layout(image_or_layout: ImageLike | Layout, *, n_tokens: Optional[int] = None,
                priority: Any = None, add: Optional[Sequence] = None, remove: Optional[Sequence[int]] = None,
                move: Optional[dict] = None, calibrate: bool = True, model: str | Tokenizer = "default") -> Layout:
    """Build or edit a token layout.

    image_or_layout: an image (it is partitioned with ``n_tokens`` per patch, default the
    model's) or an existing :class:`Layout`. priority: a mask (HxW bool/float) or a list of
    pixel boxes (x0, y0, x1, y1) that get more tokens (needs an image). remove: token indices
    to drop; move: {index: (x, y)} new centres in pixels; add: pixel boxes (x0, y0, x1, y1) of
    new Gaussians. calibrate: snap the result to valid partition cells (docs/algorithms.md section 7).
    Operations apply in the order remove, move, add.
    """
    if isinstance(image_or_layout, Layout):
        if priority is not None:
            raise ValueError("priority: needs the image, not a Layout; call edit_layout(image, priority=...)")
        layout = image_or_layout
    else:
        if n_tokens is None:
            n_tokens = _tokenizer(model).config.gps_num
        layout = partition(image_or_layout, n_tokens, priority=priority)
    if remove:
        layout = layout.remove(remove)
    if move:
        layout = layout.move(list(move), list(move.values()))
    if add:
        layout = layout.add(add)
    return _calibrate(layout) if calibrate else layout


def generate(class_id: int, *, n: int = 1, seed: Optional[int] = None, layout: Optional[Layout] = None,
             cfg_scale: float = 1.5, steps: int = 50, sampler: str = "sde",
             model: str | Generator = "default", device=None, progress: bool = True) -> list:
    """Two-stage class-conditional generation: layout -> calibration -> texture -> decode.

    Returns a list of ``n`` PIL images (256x256). layout: a user layout (e.g. from
    :func:`edit_layout` on a 256x256 image with the generator's token count) replaces stage 1.
    """
    gen = model if isinstance(model, Generator) else load_generator(model, device=device)
    return gen.generate(class_id, n=n, seed=seed, layout=layout, cfg_scale=cfg_scale, steps=steps,
                        sampler=sampler, progress=progress).images

