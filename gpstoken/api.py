"""Module-level public functions (re-exported by ``gpstoken``).

Every image argument accepts a PIL image, a numpy array (HxWx3 uint8 or float in [0,1]),
a torch tensor ([3,H,W] or [B,3,H,W] float in [-1,1]) or a list of these; outputs come back
in the kind that was given.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from . import hub, validate
from .layout import Layout
from .layout import calibrate as _calibrate
from .partition import partition
from .pipeline import Generator, Tokenizer, load_generator, load_tokenizer
from .tokens import GPSTokens

ImageLike = Any


def _tokenizer(model: str | Tokenizer, device=None) -> Tokenizer:
    return model if isinstance(model, Tokenizer) else load_tokenizer(model, device=device)


def encode(image: ImageLike, n_tokens: Optional[int] = None, *, layout: Optional[Layout] = None,
           model: str | Tokenizer = "default", device=None, fit_steps: Optional[int] = None) -> GPSTokens:
    """Encode images into GPS tokens: :meth:`Tokenizer.encode` of ``model``.

    image: any accepted image kind, H, W >= 32. n_tokens: tokens per 256x256 patch (default:
    what the model was trained with); ignored when ``layout`` is given. layout: a
    :class:`Layout` from :func:`partition` / :func:`edit_layout` for these images.
    fit_steps: test-time fitting steps after the encoder (default: the model's own, 4 for the
    embedded default, 0 for the official models; 0: the encoder's tokens as they are).
    Returns :class:`GPSTokens` with geometry [B, k*m*n_tokens, 5] and features [B, ..., C].
    """
    return _tokenizer(model, device).encode(image, n_tokens, layout=layout, fit_steps=fit_steps)


def decode(tokens: GPSTokens, *, model: Optional[str | Tokenizer] = None, device=None) -> ImageLike:
    """Decode :class:`GPSTokens` into images of the encoded size, in the kind that was encoded
    (PIL for tokens loaded from a file): :meth:`Tokenizer.decode`. model: defaults to
    ``tokens.model`` when that is a registry name (the embedded default included); tokens of any
    other model (a Hub id, a local file) need ``model=``, so that a token file never makes
    gpstoken load or download what it names."""
    if not isinstance(tokens, GPSTokens):
        raise TypeError("tokens: expected gpstoken.GPSTokens (from encode or GPSTokens.load), got "
                        f"{type(tokens).__name__}")
    if model is None:
        if tokens.model != "default" and tokens.model not in hub.list_pretrained("tokenizer"):
            raise ValueError(
                f"model: the tokens were made by {tokens.model!r}, which is not a registered model; pass "
                f"model= (--model on the command line): the checkpoint file, or the Hub id if you trust it"
            )
        model = tokens.model
    return _tokenizer(model, device).decode(tokens)


def reconstruct(image: ImageLike, n_tokens: Optional[int] = None, *, layout: Optional[Layout] = None,
                model: str | Tokenizer = "default", device=None, fit_steps: Optional[int] = None) -> ImageLike:
    """``decode(encode(image, n_tokens, fit_steps=fit_steps))`` with one tokenizer
    (:meth:`Tokenizer.reconstruct`): same kind and size as the input."""
    return _tokenizer(model, device).reconstruct(image, n_tokens, layout=layout, fit_steps=fit_steps)


def edit_layout(image_or_layout: ImageLike | Layout, *, n_tokens: Optional[int] = None,
                priority: Any = None, add: Optional[Sequence] = None, remove: Optional[Sequence[int]] = None,
                move: Optional[dict] = None, calibrate: bool = True, model: str | Tokenizer = "default") -> Layout:
    """Build or edit a token layout.

    image_or_layout: an image (it is partitioned with ``n_tokens`` per patch, default the
    model's) or an existing :class:`Layout`. priority: a mask (HxW bool/float in [0, 1]) or a
    list of pixel boxes (x0, y0, x1, y1) that get more tokens (needs an image). remove: token
    indices to drop; move: ``{index: (x, y)}`` new centres in image pixels (a token stays in
    its 256 patch); add: pixel boxes (x0, y0, x1, y1) of new Gaussians. calibrate: snap the
    result to valid partition cells (docs/algorithms.md section 7). Operations apply in the
    order remove, move, add; ``move`` indices refer to the layout after ``remove``.
    Returns a :class:`Layout`.
    """
    calibrate = validate.flag(calibrate, "calibrate")
    indices, centres = validate.moves(move) if move is not None else ([], [])
    if isinstance(image_or_layout, Layout):
        if priority is not None:
            raise ValueError("priority: needs the image, not a Layout; call edit_layout(image, priority=...)")
        layout = image_or_layout
        if n_tokens is not None and n_tokens != layout.n_tokens:
            raise ValueError(f"n_tokens: {n_tokens} disagrees with the layout's {layout.n_tokens} tokens per patch; "
                             "leave it out when editing a Layout")
    else:
        if n_tokens is None:
            n_tokens = _tokenizer(model).config.gps_num
        layout = partition(image_or_layout, n_tokens, priority=priority)
    if remove is not None:
        layout = layout.remove(remove)
    if indices:
        layout = layout.move(indices, centres)
    if add is not None:
        layout = layout.add(add)
    return _calibrate(layout) if calibrate else layout


def generate(class_id: int | str, *, n: int = 1, seed: Optional[int] = None, layout: Optional[Layout] = None,
             cfg_scale: Optional[float] = None, steps: Optional[int] = None, sampler: Optional[str] = None,
             guidance_interval: Optional[tuple[float, float]] = None, model: str | Generator = "default",
             device=None, progress: bool = True) -> list:
    """Two-stage class-conditional generation (:meth:`Generator.generate`): layout -> texture -> decode.

    class_id: class index or name (``207`` or ``"golden retriever"`` with
    ``model="gpstoken-sit-xl"``). Returns a list of ``n`` PIL images (256x256). layout: a user
    layout (e.g. from :func:`edit_layout` on a 256x256 image with the generator's token count)
    replaces stage 1. cfg_scale, steps, sampler, guidance_interval: default to the model's
    sampling defaults (``Generator.sampling``).
    """
    gen = model if isinstance(model, Generator) else load_generator(model, device=device)
    return gen.generate(class_id, n=n, seed=seed, layout=layout, cfg_scale=cfg_scale, steps=steps, sampler=sampler,
                        guidance_interval=guidance_interval, progress=progress).images
