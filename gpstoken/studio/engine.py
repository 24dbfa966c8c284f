"""The studio's work, without HTTP: the :class:`Studio` holds the models and the sessions, and
runs the actions: open an upload or an example, encode/decode with the user's priority boxes and
Gaussian edits, two-stage generation from an edited layout, the files a user downloads. Request
checks are in :mod:`.requests`, the session store in :mod:`.sessions`, upload and download
bytes in :mod:`.files`, the JSON of a result (PSNR included) in :mod:`.results`.

Everything goes through the public API (``gpstoken.edit_layout``, ``gpstoken.calibrate``, the
loaded ``Tokenizer`` / ``Generator`` objects, :class:`~gpstoken.GPSTokens`). Coordinates in
requests and results are **working-image pixels** (x = column, y = row); the working image
is the upload, downscaled so that its longer side is at most ``Limits.max_side``.

Results are plain JSON-able dicts (see :meth:`Studio.encode` and :meth:`Studio.generate`).
"""
from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, cast

from PIL import Image

import gpstoken
from gpstoken.images import MIN_SIDE

from .files import is_safetensors, png_bytes, read_image, read_tokens, tokens_bytes
from .requests import Limits, StudioError, edited_layout, integer, priority_boxes
from .results import session_state
from .sessions import Result, Session, Sessions

#: example photos of a source checkout (absent from an installed wheel: pass ``examples=``)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
Report = Callable[[str], None]


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
        self._sessions = Sessions(limits.max_sessions)
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
    def session(self, sid: Any) -> Session:
        """The session ``sid``; a 404 :class:`StudioError` when it is unknown or expired."""
        return self._sessions.get(sid)

    def open_image(self, data: bytes, name: str = "upload") -> dict:
        """Start a session from uploaded file bytes: an image (PNG, JPEG, WebP, ...) or a
        ``.gpst`` token file made by this studio's tokenizer (see :meth:`_open_tokens`)."""
        lim = self.limits
        if len(data) > lim.max_upload_bytes:
            raise StudioError(f"file too large: {len(data) / 2**20:.1f} MiB, the limit is "
                              f"{lim.max_upload_bytes / 2**20:.0f} MiB", 413)
        if not data:
            raise StudioError("file is empty: choose an image file (PNG, JPEG, WebP)", 415)
        if is_safetensors(data):
            return self._open_tokens(data, name)
        return self._open(read_image(data, name, lim.max_pixels), name)

    def _open_tokens(self, data: bytes, name: str) -> dict:
        """A ``.gpst`` upload: its decoded picture becomes the working image and its tokens the
        current result, so editing continues from a downloaded file."""
        tokens = read_tokens(data, name, self._tmp)
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
        s = self._sessions.new(image, name, "photo")
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
            image = image.resize(size, Image.Resampling.LANCZOS)
            note = f"downscaled from {w}x{h} to {size[0]}x{size[1]} (--max-side {self.limits.max_side})"
        s = self._sessions.new(image, name, "photo")
        return {"session": s.id, "width": image.width, "height": image.height, "name": name, "note": note}

    # ------------------------------------------------------------------ actions
    def encode(self, sid: Any, *, n_tokens: Any = None, priority: Any = None, edits: Optional[dict] = None,
               report: Report = lambda stage: None) -> dict:
        """Encode the session's photo and decode it; the new result becomes "after", the last
        one "before".

        Without ``edits``: a fresh entropy partition with ``n_tokens`` per 256 patch and
        ``priority`` pixel boxes. With ``edits`` (see :func:`.requests.edited_layout`): the current layout,
        edited. Returns :meth:`state`.
        """
        s = self.session(sid)
        if s.kind != "photo":
            raise StudioError("encode: this is a generated image; use regenerate to change its layout")
        with s.lock:
            img = s.image
            if edits:
                layout = edited_layout(s.after, edits)
                base = cast(Result, s.after)  # edited_layout rejects a session without a result
                n, boxes = base.n_tokens, base.priority
            else:
                lim = self.limits
                n = integer(n_tokens if n_tokens is not None else self.tokenizer.config.gps_num, "n_tokens",
                            lim.min_tokens, lim.max_tokens)
                boxes = priority_boxes(priority, s.image.size)
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
        steps = integer(steps, "steps", 1, self.limits.max_steps)
        seed = integer(seed, "seed", 0, 2**31 - 1)
        if sid is None:
            cid = integer(class_id, "class_id", 0, gen.num_classes - 1)
            report(f"sampling a layout and texture for class {cid} ({steps} steps)")
            out = gen.generate(cid, seed=seed, steps=steps, progress=False)
            name = (gen.class_names or [f"class {cid}"] * gen.num_classes)[cid]
            s = self._sessions.new(out.images[0], f"generated {name}", "generated", cid)
            layout = None
        else:
            s = self.session(sid)
            if s.kind != "generated":
                raise StudioError("regenerate: this is a photo; use encode to change its layout")
            cid = (integer(class_id, "class_id", 0, gen.num_classes - 1) if class_id is not None
                   else cast(int, s.class_id))  # a generated session always has its class
            layout = edited_layout(s.after, edits or {})
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
    def state(self, s: Session) -> dict:
        """The session as the page shows it (:func:`.results.session_state`)."""
        return session_state(s)

    FILES = ("image.png", "before.png", "after.png", "before.gpst", "after.gpst", "layout.png")

    def file(self, sid: Any, name: str) -> tuple[bytes, str]:
        """Bytes and content type of a session file (one of :attr:`FILES`)."""
        s = self.session(sid)
        if name not in self.FILES:
            raise StudioError(f"file: expected one of {list(self.FILES)}, got {name!r}", 404)
        stem, ext = name.split(".")
        if stem == "image":
            return png_bytes(s.image), "image/png"
        r = s.after if stem in ("after", "layout") else s.before
        if r is None:
            raise StudioError(f"{name}: there is no {'earlier ' if stem == 'before' else ''}result yet", 404)
        if stem == "layout":
            return png_bytes(r.tokens.layout.draw(s.image)), "image/png"
        if ext == "png":
            return png_bytes(r.image), "image/png"
        return tokens_bytes(r.tokens, name, self._tmp), "application/octet-stream"

    def close(self) -> None:
        """Drop the sessions and remove the temporary folder."""
        self._sessions.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)


__all__ = ["Limits", "Studio", "StudioError"]
