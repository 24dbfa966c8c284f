"""The studio's work, without HTTP: sessions holding an image and its layouts, encode/decode
with the user's priority boxes and Gaussian edits, two-stage generation from an edited layout,
PSNR, and the files a user downloads.

Everything goes through the public API (``gpstoken.edit_layout``, ``gpstoken.calibrate``, the
loaded ``Tokenizer`` / ``Generator`` objects, :class:`~gpstoken.GPSTokens`). Coordinates in
requests and results are **working-image pixels** (x = column, y = row); the working image
is the upload, downscaled so that its longer side is at most ``Limits.max_side``.

Results are plain JSON-able dicts (see :meth:`Studio.encode` and :meth:`Studio.generate`).
"""
from __future__ import annotations

import io
import math
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from PIL import Image, UnidentifiedImageError

import gpstoken
from gpstoken.images import MIN_SIDE, to_tensor
from gpstoken.layout import image_pixels
from gpstoken.metrics import psnr

#: example photos of a source checkout (absent from an installed wheel: pass ``examples=``)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
Report = Callable[[str], None]


class StudioError(ValueError):
    """A request the studio refuses; ``status`` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What the studio accepts.

    max_upload_bytes: largest upload. max_pixels: largest decoded image (width*height)
    accepted before downscaling (guards against decompression bombs). max_side: working
    images are downscaled so that max(H, W) <= max_side; the default 256 keeps every image
    one 256 patch, where any add/remove edit is possible (in a grid of patches every patch
    must keep the same token count). min/max_tokens: token-count range
    per 256 patch. max_steps: sampler steps for generation. max_sessions: images kept in
    memory (least recently used dropped first).
    """

    max_upload_bytes: int = 16 * 2**20
    max_pixels: int = 40_000_000
    max_side: int = 256
    min_tokens: int = 16
    max_tokens: int = 512
    max_steps: int = 100
    max_sessions: int = 16


@dataclass
class Result:
    """One encoded (or generated) state of a session."""

    tokens: gpstoken.GPSTokens
    image: Image.Image  # reconstruction, or the generated picture
    n_tokens: int  # tokens per patch asked for (partition) / held by the layout
    priority: list[list[int]]  # boxes the partition favoured
    version: int


@dataclass
class Session:
    """An image being edited: the working image and its two latest results (before, after)."""

    id: str
    image: Image.Image
    name: str
    kind: str  # "photo" | "generated"
    class_id: Optional[int] = None
    before: Optional[Result] = None
    after: Optional[Result] = None
    versions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _ints(value: Any, n: int, what: str) -> list[int]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise StudioError(f"{what}: expected {n} numbers, got {value!r}")
    try:
        out = [int(round(float(v))) for v in value]
    except (TypeError, ValueError):
        raise StudioError(f"{what}: expected {n} numbers, got {value!r}") from None
    return out


def _int(value: Any, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise StudioError(f"{what}: expected an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= int(value) <= hi:
        raise StudioError(f"{what}: must lie in [{lo}, {hi}], got {int(value)}")
    return int(value)


class Studio:
    """Sessions plus the loaded models.

    model: tokenizer (registry name, Hub id or path). generator: generator name/path, or None
    to disable generation. examples: folder of example ``.png`` photos (default: the
    repository's ``examples/data`` when present). Models load on first use (``load()`` loads them now, raising the
    loader's error for a wrong name or file). Files for downloads are written only inside a
    private temporary folder, removed by :meth:`close`.
    """

    def __init__(self, model: str = "default", generator: Optional[str] = "default", *, device=None,
                 limits: Limits = Limits(), examples: Optional[Path] = None):
        self.examples_dir = Path(examples) if examples is not None else EXAMPLES
        self.model_name = model
        self.generator_name = generator
        self.device = device
        self.limits = limits
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._tmp = Path(tempfile.mkdtemp(prefix="gpstoken-studio-"))

    # ------------------------------------------------------------------ models
    @property
    def tokenizer(self) -> gpstoken.Tokenizer:
        return gpstoken.load_tokenizer(self.model_name, device=self.device)

    @property
    def generator(self) -> gpstoken.Generator:
        if self.generator_name is None:
            raise StudioError("generation is off in this studio (started without a generator)")
        return gpstoken.load_generator(self.generator_name, device=self.device)

    def load(self) -> None:
        """Load the tokenizer (and generator): wrong names or files fail here, before serving."""
        tok = self.tokenizer
        if self.generator_name is not None and self.generator.tokenizer.config.gps_c != tok.config.gps_c:
            raise ValueError(
                f"generator {self.generator_name!r} decodes with {self.generator.tokenizer.name!r}, "
                f"whose tokens do not fit tokenizer {self.model_name!r}; pass a matching --model or --generator"
            )

    def info(self) -> dict:
        """Models, limits and examples, for the page."""
        tok = self.tokenizer
        out = {
            "model": tok.name,
            "default_tokens": tok.config.gps_num,
            "min_tokens": self.limits.min_tokens,
            "max_tokens": self.limits.max_tokens,
            "max_upload_bytes": self.limits.max_upload_bytes,
            "max_side": self.limits.max_side,
            "examples": self.examples(),
            "generator": None,
        }
        if self.generator_name is not None:
            gen = self.generator
            names = gen.class_names or [f"class {i}" for i in range(gen.num_classes)]
            out["generator"] = {"name": gen.name, "n_tokens": gen.n_tokens, "classes": names,
                                "max_steps": self.limits.max_steps}
        return out

    def examples(self) -> list[str]:
        """File names of the example photos (empty when the folder is absent)."""
        d = self.examples_dir
        return sorted(p.name for p in d.glob("*.png")) if d.is_dir() else []

    def example_bytes(self, name: Any) -> bytes:
        """The file of example ``name`` (one of :meth:`examples`)."""
        if name not in self.examples():
            raise StudioError(f"example: expected one of {self.examples()}, got {name!r}", 404)
        return (self.examples_dir / name).read_bytes()

    # ------------------------------------------------------------------ sessions
    def _new_session(self, image: Image.Image, name: str, kind: str, class_id: Optional[int] = None) -> Session:
        s = Session(secrets.token_urlsafe(12), image, name, kind, class_id)
        with self._lock:
            self._sessions[s.id] = s
            while len(self._sessions) > self.limits.max_sessions:
                self._sessions.popitem(last=False)
        return s

    def session(self, sid: Any) -> Session:
        with self._lock:
            s = self._sessions.get(sid) if isinstance(sid, str) else None
            if s is None:
                raise StudioError("session: unknown or expired image; load the image again", 404)
            self._sessions.move_to_end(sid)
            return s

    def open_image(self, data: bytes, name: str = "upload") -> dict:
        """Start a session from uploaded file bytes: an image (PNG, JPEG, WebP, ...) or a
        ``.gpst`` token file made by this studio's tokenizer (see :meth:`_open_tokens`)."""
        lim = self.limits
        if len(data) > lim.max_upload_bytes:
            raise StudioError(f"file too large: {len(data) / 2**20:.1f} MiB, the limit is "
                              f"{lim.max_upload_bytes / 2**20:.0f} MiB", 413)
        if not data:
            raise StudioError("file is empty: choose an image file (PNG, JPEG, WebP)", 415)
        if _is_safetensors(data):
            return self._open_tokens(data, name)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
                if w * h > lim.max_pixels:
                    raise StudioError(f"image too large: {w}x{h} pixels, the limit is {lim.max_pixels / 1e6:.0f} "
                                      "megapixels", 413)
                probe.load()
                image = probe.convert("RGB")
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
            if isinstance(e, StudioError):
                raise
            raise StudioError(f"{name}: not an image file PIL can read ({type(e).__name__}); "
                              "choose a PNG, JPEG or WebP picture", 415) from None
        return self._open(image, name)

    def _open_tokens(self, data: bytes, name: str) -> dict:
        """A ``.gpst`` upload: its decoded picture becomes the working image and its tokens the
        current result, so editing continues from a downloaded file."""
        folder = Path(tempfile.mkdtemp(dir=self._tmp))
        try:
            path = folder / "upload.gpst"
            path.write_bytes(data)
            tokens = gpstoken.GPSTokens.load(path)
        except ValueError as e:
            raise StudioError(f"{name}: {str(e).replace(str(path), 'the file')}", 415) from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        tok = self.tokenizer
        if tokens.model != tok.name:
            raise StudioError(f"{name}: tokens of model {tokens.model!r}, but this studio runs {tok.name!r}; "
                              f"start it with gpstoken studio --model {tokens.model}")
        if tokens.batch_size != 1:
            raise StudioError(f"{name}: holds {tokens.batch_size} images; the studio opens token files of one image")
        h, w = tokens.image_size
        if max(h, w) > self.limits.max_side:
            raise StudioError(f"{name}: tokens of a {w}x{h} image, larger than this studio's working size "
                              f"{self.limits.max_side}; start it with --max-side {max(h, w)}")
        image = tok.decode(tokens)
        s = self._new_session(image, name, "photo")
        s.versions = 1
        s.after = Result(tokens, image, tokens.n_tokens, [], 1)
        return {"session": s.id, "width": w, "height": h, "name": name, "note": None, "state": self.state(s)}

    def open_example(self, name: Any) -> dict:
        """Start a session from one of :meth:`examples`."""
        with Image.open(io.BytesIO(self.example_bytes(name))) as im:
            return self._open(im.convert("RGB"), name)

    def _open(self, image: Image.Image, name: str) -> dict:
        w, h = image.size
        if min(w, h) < MIN_SIDE:
            raise StudioError(f"image too small: {w}x{h} pixels, the tokenizer needs at least {MIN_SIDE}x{MIN_SIDE}")
        scale = self.limits.max_side / max(w, h)
        note = None
        if scale < 1:
            size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
            image = image.resize(size, Image.LANCZOS)
            note = f"downscaled from {w}x{h} to {size[0]}x{size[1]} (--max-side {self.limits.max_side})"
        s = self._new_session(image, name, "photo")
        return {"session": s.id, "width": image.width, "height": image.height, "name": name, "note": note}

    # ------------------------------------------------------------------ layouts
    def _edited(self, s: Session, edits: dict) -> gpstoken.Layout:
        """The session's current layout with the user's edits, calibrated onto partition cells.

        edits: ``{"base": version, "remove": [i, ...], "move": {i: [x, y]}, "add": [[x0, y0, x1, y1], ...],
        "calibrate": true}``; indices refer to the tokens of result ``base``. Moves apply first, then
        removals and additions; ``calibrate`` (default true) snaps the result onto partition cells.
        """
        if not isinstance(edits, dict):
            raise StudioError(f"edits: expected an object with remove/move/add, got {type(edits).__name__}")
        cur = s.after
        if cur is None or edits.get("base") != cur.version:
            raise StudioError("edits: made on a layout that is no longer the current one; reload the page state")
        layout = cur.tokens.layout
        n = layout.total_tokens
        remove = [_int(i, "remove", 0, n - 1) for i in edits.get("remove") or []]
        move_in = edits.get("move") or {}
        if not isinstance(move_in, dict):
            raise StudioError("move: expected {index: [x, y]}")
        move = {_int(int(k) if str(k).isdigit() else k, "move index", 0, n - 1): _ints(v, 2, f"move[{k}]")
                for k, v in move_in.items()}
        add = [_ints(b, 4, "add") for b in edits.get("add") or []]
        if not (remove or move or add):
            raise StudioError("edits: nothing to apply (add, move or remove a Gaussian first)")
        snap = edits.get("calibrate", True)
        if not isinstance(snap, bool):
            raise StudioError(f"calibrate: expected true or false, got {snap!r}")
        try:
            if move:
                layout = gpstoken.edit_layout(layout, move=move, calibrate=False)
            if remove or add:
                layout = gpstoken.edit_layout(layout, remove=remove or None, add=add or None, calibrate=False)
            return gpstoken.calibrate(layout) if snap else layout
        except ValueError as e:
            raise StudioError(str(e)) from None

    def _priority(self, s: Session, boxes: Any) -> list[list[int]]:
        if boxes is None:
            return []
        if not isinstance(boxes, list):
            raise StudioError("priority: expected a list of [x0, y0, x1, y1] pixel boxes")
        w, h = s.image.size
        out = []
        for i, b in enumerate(boxes):
            x0, y0, x1, y1 = _ints(b, 4, f"priority[{i}]")
            x0, x1 = sorted((max(0, min(x0, w - 1)), max(0, min(x1, w - 1))))
            y0, y1 = sorted((max(0, min(y0, h - 1)), max(0, min(y1, h - 1))))
            if x1 - x0 < 2 or y1 - y0 < 2:
                raise StudioError(f"priority[{i}]: box {b} is smaller than 2x2 pixels inside the image")
            out.append([x0, y0, x1, y1])
        return out

    # ------------------------------------------------------------------ actions
    def encode(self, sid: Any, *, n_tokens: Any = None, priority: Any = None, edits: Optional[dict] = None,
               report: Report = lambda stage: None) -> dict:
        """Encode the session's photo and decode it; the new result becomes "after", the last
        one "before".

        Without ``edits``: a fresh entropy partition with ``n_tokens`` per 256 patch and
        ``priority`` pixel boxes. With ``edits`` (see :meth:`_edited`): the current layout,
        edited. Returns :meth:`state`.
        """
        s = self.session(sid)
        if s.kind != "photo":
            raise StudioError("encode: this is a generated image; use regenerate to change its layout")
        with s.lock:
            img = s.image
            if edits:
                layout = self._edited(s, edits)
                n, boxes = s.after.n_tokens, s.after.priority
            else:
                lim = self.limits
                n = _int(n_tokens if n_tokens is not None else self.tokenizer.config.gps_num, "n_tokens",
                         lim.min_tokens, lim.max_tokens)
                boxes = self._priority(s, priority)
                report(f"partition: {n} tokens per patch" + (f", {len(boxes)} priority box(es)" if boxes else ""))
                layout = gpstoken.edit_layout(img, n_tokens=n, priority=boxes or None, model=self.tokenizer)
            tok = self.tokenizer
            report(f"encoding {layout.total_tokens} tokens")
            tokens = tok.encode(img, layout=layout)
            report("decoding")
            rec = tok.decode(tokens)
            s.versions += 1
            s.before, s.after = s.after, Result(tokens, rec, n, boxes, s.versions)
            return self.state(s)

    def generate(self, sid: Any = None, *, class_id: Any = 0, seed: Any = 0, steps: Any = 30,
                 edits: Optional[dict] = None, report: Report = lambda stage: None) -> dict:
        """Two-stage generation. Without ``sid``: a new session, layout sampled by the generator.
        With ``sid`` and ``edits``: regenerate the texture for the edited layout of that
        generated image (same class and seed unless given). Returns :meth:`state`."""
        gen = self.generator
        steps = _int(steps, "steps", 1, self.limits.max_steps)
        seed = _int(seed, "seed", 0, 2**31 - 1)
        if sid is None:
            cid = _int(class_id, "class_id", 0, gen.num_classes - 1)
            report(f"sampling a layout and texture for class {cid} ({steps} steps)")
            out = gen.generate(cid, seed=seed, steps=steps, progress=False)
            name = (gen.class_names or [f"class {cid}"] * gen.num_classes)[cid]
            s = self._new_session(out.images[0], f"generated {name}", "generated", cid)
            layout = None
        else:
            s = self.session(sid)
            if s.kind != "generated":
                raise StudioError("regenerate: this is a photo; use encode to change its layout")
            cid = _int(class_id, "class_id", 0, gen.num_classes - 1) if class_id is not None else s.class_id
            layout = self._edited(s, edits or {})
            if layout.n_tokens != gen.n_tokens:
                raise StudioError(
                    f"regenerate: the generator makes exactly {gen.n_tokens} tokens, the edited layout has "
                    f"{layout.n_tokens}; remove as many Gaussians as you add")
        with s.lock:
            if layout is not None:
                report(f"sampling texture for the edited layout ({steps} steps)")
                out = gen.generate(cid, seed=seed, steps=steps, layout=layout, progress=False)
                s.image, s.class_id = out.images[0], cid
            s.versions += 1
            s.before, s.after = s.after, Result(out.tokens, out.images[0], gen.n_tokens, [], s.versions)
            return self.state(s)

    # ------------------------------------------------------------------ results
    def _psnr(self, s: Session, r: Result, boxes: list[list[int]]) -> tuple[Optional[float], Optional[float]]:
        """PSNR (dB) of a reconstruction against the session image, whole and inside ``boxes``
        (None when there is no original image to compare with, or no box)."""
        if r.image is s.image:  # decoded from an uploaded .gpst: no original to compare with
            return None, None
        x, y = to_tensor(s.image)[0], to_tensor(r.image)[0]
        whole = psnr(y, x).item()
        if not boxes:
            return whole, None
        mask = torch.zeros(x.shape[-2:], dtype=torch.bool)
        for x0, y0, x1, y1 in boxes:
            mask[y0 : y1 + 1, x0 : x1 + 1] = True
        inside = psnr(y[:, :, mask].unsqueeze(2), x[:, :, mask].unsqueeze(2)).item()
        return whole, inside

    def _describe(self, s: Session, r: Result, boxes: list[list[int]]) -> dict:
        layout = r.tokens.layout
        cells, gauss = image_pixels(layout.geometry[0], layout.regions[0], layout.grid)
        _, refined = image_pixels(r.tokens.geometry[0], layout.regions[0], layout.grid)
        out = {
            "version": r.version,
            "n_tokens": r.n_tokens,
            "tokens_per_patch": layout.n_tokens,
            "total_tokens": layout.total_tokens,
            "priority": r.priority,
            "cells": [[round(v, 2) for v in c] for c in cells.tolist()],
            "gaussians": [[round(v, 3) for v in g] for g in gauss.tolist()],
            "refined": [[round(v, 3) for v in g] for g in refined.tolist()],
            "psnr": None,
            "psnr_boxes": None,
        }
        if s.kind == "photo":
            whole, inside = self._psnr(s, r, boxes)
            out["psnr"] = round(whole, 3) if whole is not None and math.isfinite(whole) else None
            out["psnr_boxes"] = round(inside, 3) if inside is not None and math.isfinite(inside) else None
        return out

    def state(self, s: Session) -> dict:
        """The session as the page shows it: image, "after" (current) and "before" results.
        PSNR inside boxes is measured for both results over the current result's priority boxes."""
        boxes = s.after.priority if s.after is not None else []
        return {
            "session": s.id, "name": s.name, "kind": s.kind, "class_id": s.class_id,
            "width": s.image.width, "height": s.image.height,
            "after": self._describe(s, s.after, boxes) if s.after else None,
            "before": self._describe(s, s.before, boxes) if s.before else None,
        }

    FILES = ("image.png", "before.png", "after.png", "before.gpst", "after.gpst", "layout.png")

    def file(self, sid: Any, name: str) -> tuple[bytes, str]:
        """Bytes and content type of a session file (one of :attr:`FILES`)."""
        s = self.session(sid)
        if name not in self.FILES:
            raise StudioError(f"file: expected one of {list(self.FILES)}, got {name!r}", 404)
        stem, ext = name.split(".")
        if stem == "image":
            return _png(s.image), "image/png"
        r = s.after if stem in ("after", "layout") else s.before
        if r is None:
            raise StudioError(f"{name}: there is no {'earlier ' if stem == 'before' else ''}result yet", 404)
        if stem == "layout":
            return _png(r.tokens.layout.draw(s.image)), "image/png"
        if ext == "png":
            return _png(r.image), "image/png"
        folder = Path(tempfile.mkdtemp(dir=self._tmp))
        try:
            return r.tokens.save(folder / name).read_bytes(), "application/octet-stream"
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Drop the sessions and remove the temporary folder."""
        with self._lock:
            self._sessions.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)


def _is_safetensors(data: bytes) -> bool:
    """Whether bytes start like a safetensors file (8-byte little-endian header size, then JSON)."""
    return len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["Limits", "Studio", "StudioError"]
