"""The files of the studio: uploaded bytes to an image or to tokens (under the studio's
limits), and the PNG and ``.gpst`` bytes a user downloads."""
from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

import gpstoken
from gpstoken.images import to_rgb8

from .requests import StudioError

__all__ = ["is_safetensors", "png_bytes", "read_image", "read_tokens", "tokens_bytes"]


def is_safetensors(data: bytes) -> bool:
    """Whether bytes start like a safetensors file (8-byte little-endian header size, then JSON)."""
    return len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data)


def read_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Image file bytes (PNG, JPEG, WebP, ...) -> an RGB image; refused above ``max_pixels``
    (width*height) before it is decoded, and when PIL cannot read it (``name`` names the file)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
            if w * h > max_pixels:
                raise StudioError(f"image too large: {w}x{h} pixels, the limit is {max_pixels / 1e6:.0f} "
                                  "megapixels", 413)
            probe.load()
            return to_rgb8(ImageOps.exif_transpose(probe), name)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, StudioError):
            raise
        raise StudioError(f"{name}: not an image file PIL can read ({type(e).__name__}); "
                          "choose a PNG, JPEG or WebP picture", 415) from None


def read_tokens(data: bytes, name: str, tmp: Path) -> gpstoken.GPSTokens:
    """``.gpst`` file bytes -> tokens, through a file in a new folder inside ``tmp`` (removed
    after); a 415 :class:`StudioError` naming ``name`` when they do not load."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    try:
        path = folder / "upload.gpst"
        path.write_bytes(data)
        return gpstoken.GPSTokens.load(path)
    except ValueError as e:
        raise StudioError(f"{name}: {str(e).replace(str(path), 'the file')}", 415) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def tokens_bytes(tokens: gpstoken.GPSTokens, name: str, tmp: Path) -> bytes:
    """The ``.gpst`` file of ``tokens``, saved as ``name`` in a new folder inside ``tmp`` (removed after)."""
    folder = Path(tempfile.mkdtemp(dir=tmp))
    try:
        return tokens.save(folder / name).read_bytes()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def png_bytes(image: Image.Image) -> bytes:
    """The PNG file of ``image``."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
