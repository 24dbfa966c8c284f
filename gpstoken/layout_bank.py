"""Per-class bank of initial layouts ``g_init`` (docs/algorithms.md section 6).

The official release samples the layout of a generated image from a bank of layouts taken
from training images of the class (``initg.pickle``). Here a bank is a mapping
``class id -> float32 tensor [M, N, 5]`` (M layouts of N tokens, each
``[sigma_x, sigma_y, rho, mu_x, mu_y]`` in the normalised frame of a 256x256 patch), stored as
one safetensors file with keys ``class_<id>`` and metadata ``format`` / ``format_version`` /
``n_tokens``.

:func:`load_layout_bank` reads either kind of file. The official ``initg.pickle``
(``dict class id -> list of [N, >=5] arrays``) is read with a restricted unpickler that can
only rebuild numeric numpy arrays, lists, dicts and ints (anything else is refused, so no
code in the file can run), and the result is cached as a safetensors bank in the Hugging
Face cache (``<HF_HUB_CACHE>/gpstoken/layout-banks/<sha256 of the pickle>.safetensors``), so
later loads skip the pickle. :func:`convert_initg_pickle` writes that bank to a path of your
choice.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from .geometry import GEOMETRY
from .io import write_safetensors

__all__ = ["LayoutBank", "LayoutBankError", "convert_initg_pickle", "load_layout_bank", "read_initg_pickle",
           "FORMAT", "FORMAT_VERSION"]

FORMAT = "gpstoken-layout-bank"
FORMAT_VERSION = "1"
_KEY = re.compile(r"class_(\d+)")


class LayoutBankError(ValueError):
    """A layout bank file or pickle is malformed, of another format, or not allowed to be read."""


class LayoutBank:
    """Layouts per class: ``class id -> [M, N, 5]`` float32 (same N for every class).

    >>> bank = LayoutBank({207: torch.rand(10, 128, 5)})
    >>> bank.sample(207, 4, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([4, 128, 5])
    """

    def __init__(self, layouts: Mapping[int, Tensor]) -> None:
        if not layouts:
            raise LayoutBankError("a layout bank needs at least one class")
        self._layouts: dict[int, Tensor] = {}
        n_tokens = None
        for cid, g in layouts.items():
            cid = _class_id(cid)
            g = torch.as_tensor(g)
            if g.dim() != 3 or g.shape[-1] != GEOMETRY or g.shape[0] == 0:
                raise LayoutBankError(f"class {cid}: layouts must be [M>0, N, 5], got {tuple(g.shape)}")
            if n_tokens is not None and g.shape[1] != n_tokens:
                raise LayoutBankError(f"class {cid}: {g.shape[1]} tokens per layout, other classes have {n_tokens}")
            if not torch.isfinite(g).all():
                raise LayoutBankError(f"class {cid}: layouts contain inf/nan")
            n_tokens = g.shape[1]
            self._layouts[cid] = g.detach().to(torch.float32).contiguous()
        self.n_tokens: int = int(n_tokens)

    @property
    def classes(self) -> list[int]:
        """Sorted class ids present in the bank."""
        return sorted(self._layouts)

    def __len__(self) -> int:
        return len(self._layouts)

    def __contains__(self, class_id: object) -> bool:
        return class_id in self._layouts

    def __iter__(self) -> Iterator[int]:
        return iter(self.classes)

    def __getitem__(self, class_id: int) -> Tensor:
        """All layouts of a class, ``[M, N, 5]``."""
        try:
            return self._layouts[class_id]
        except KeyError:
            raise KeyError(
                f"class {class_id} is not in the layout bank ({len(self)} classes: {_preview(self.classes)})"
            ) from None

    def __repr__(self) -> str:
        total = sum(g.shape[0] for g in self._layouts.values())
        return f"LayoutBank({len(self)} classes, {total} layouts, n_tokens={self.n_tokens})"

    def sample(self, class_id: int, n: int = 1, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` layouts of ``class_id``, ``[n, N, 5]`` float32 (CPU), drawn without replacement
        (a random permutation of the class's M layouts, repeated when ``n > M``), as the official
        sampler uses each stored layout once.

        The draw uses ``generator`` (on any device) so a seeded generator reproduces it.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        layouts = self[class_id]
        device = generator.device if generator is not None else "cpu"
        m = layouts.shape[0]
        idx = torch.cat([torch.randperm(m, generator=generator, device=device) for _ in range(-(-n // m))])
        return layouts[idx[:n].cpu()]

    def state_dict(self, prefix: str = "") -> dict[str, Tensor]:
        """Tensors keyed ``<prefix>class_<id>``."""
        return {f"{prefix}class_{cid}": self._layouts[cid] for cid in self.classes}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], prefix: str = "") -> "LayoutBank":
        """Rebuild from ``<prefix>class_<id>`` entries (other keys are ignored)."""
        layouts = {}
        for key, value in state.items():
            if not key.startswith(prefix):
                continue
            match = _KEY.fullmatch(key[len(prefix):])
            if match is None:
                raise LayoutBankError(f"unexpected layout bank key {key!r}; expected {prefix}class_<id>")
            layouts[int(match.group(1))] = value
        if not layouts:
            raise LayoutBankError(f"no layout bank entries '{prefix}class_<id>' found")
        return cls(layouts)

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "n_tokens": str(self.n_tokens)}

    def save(self, path: str | os.PathLike) -> Path:
        """Write one safetensors file (keys ``class_<id>``, format metadata), atomically; returns the path."""
        return write_safetensors(self.state_dict(), path, self.metadata())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LayoutBank":
        """Read a bank written by :meth:`save`.

        Raises:
            FileNotFoundError: no such file.
            LayoutBankError: not a safetensors layout bank, or a newer format version.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"layout bank not found: {path}")
        if _looks_pickled(path):
            raise LayoutBankError(
                f"{path} is a pickle, not a safetensors layout bank; read it with "
                f"gpstoken.layout_bank.load_layout_bank(path) (restricted unpickler, cached as safetensors)"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several exception types for corrupt headers
            raise LayoutBankError(f"{path} is not a readable safetensors file: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise LayoutBankError(f"{path} is not a layout bank (metadata format={meta.get('format')!r}, expected "
                                  f"{FORMAT!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise LayoutBankError(
                f"{path} has layout bank format version {meta.get('format_version')!r}; this gpstoken reads "
                f"version {FORMAT_VERSION} (upgrade gpstoken)"
            )
        return cls.from_state_dict(tensors)


def _class_id(cid: Any) -> int:
    if isinstance(cid, bool):
        raise LayoutBankError(f"class ids must be integers, got {cid!r}")
    try:
        value = int(cid)
    except (TypeError, ValueError):
        raise LayoutBankError(f"class ids must be integers, got {cid!r}") from None
    if value < 0 or (isinstance(cid, (float, np.floating)) and value != cid):
        raise LayoutBankError(f"class ids must be non-negative integers, got {cid!r}")
    return value


def _preview(items: list[int], k: int = 8) -> str:
    return ", ".join(map(str, items[:k])) + (", ..." if len(items) > k else "")


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _numpy_core() -> Any:
    try:
        import numpy._core as core  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        import numpy.core as core
    return core


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The only globals a trusted ``initg.pickle`` may reference: numpy array/scalar rebuilding
    (under both the numpy 1 ``numpy.core`` and numpy 2 ``numpy._core`` names) and
    ``_codecs.encode``, which protocol-2 pickles use for raw bytes."""
    import _codecs

    core = _numpy_core()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy reconstruction globals; anything else fails."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"blocked global {module}.{name}: a layout pickle may only contain dicts, lists and numpy arrays"
            ) from None


def _check_numeric(obj: Any, where: str = "initg") -> None:
    """Refuse anything but dicts, lists/tuples, ints and numeric numpy arrays/scalars."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_numeric(k, f"{where} key")
            _check_numeric(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_numeric(v, f"{where}[{i}]")
    elif isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind not in "biuf":
            raise LayoutBankError(f"{where}: a numpy array of dtype {obj.dtype}; a layout pickle may only hold numbers")
    elif not isinstance(obj, int):
        raise LayoutBankError(
            f"{where}: a {type(obj).__name__} ({str(obj)[:40]!r}); a layout pickle may only hold dicts, lists, ints "
            "and numeric numpy arrays"
        )


def read_initg_pickle(path: str | os.PathLike) -> LayoutBank:
    """Read the official ``initg.pickle`` (``dict class id -> list of [N, >=5] arrays``; the
    first 5 columns are kept, as float32) with the restricted unpickler.

    Raises:
        FileNotFoundError: no such file.
        LayoutBankError: the pickle references anything but numpy array rebuilding, holds
            anything but numbers, or is not a dict of per-class layout lists.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"layout pickle not found: {path}")
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as exc:
        raise LayoutBankError(f"{path}: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise LayoutBankError(f"{path} is not a valid layout pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise LayoutBankError(f"{path}: expected a dict class id -> list of layouts, got {type(obj).__name__}")
    _check_numeric(obj, path.name)
    return LayoutBank({_class_id(cid): torch.from_numpy(_class_layouts(cid, v)) for cid, v in obj.items()})


def _class_layouts(cid: int, value: Any) -> np.ndarray:
    """One class's pickled layouts (list of ``[N, >=5]`` arrays or one ``[M, N, >=5]`` array)
    -> ``[M, N, 5]`` float32 (extra columns dropped)."""
    if isinstance(value, np.ndarray) and value.ndim == 3:
        arrays = list(value)
    elif isinstance(value, (list, tuple)):
        arrays = [np.asarray(a) for a in value]
    else:
        raise LayoutBankError(f"class {cid}: expected a list of [N, >=5] arrays, got {type(value).__name__}")
    if not arrays:
        raise LayoutBankError(f"class {cid}: no layouts")
    shapes = {a.shape for a in arrays}
    bad = [s for s in shapes if len(s) != 2 or s[1] < GEOMETRY]
    if bad:
        raise LayoutBankError(f"class {cid}: layouts must be [N, >=5] arrays, got shape {bad[0]}")
    tokens = {s[0] for s in shapes}
    if len(tokens) != 1:
        raise LayoutBankError(f"class {cid}: layouts with different token counts {sorted(tokens)}")
    return np.stack([a[:, :GEOMETRY] for a in arrays]).astype(np.float32)


def convert_initg_pickle(path: str | os.PathLike, out: str | os.PathLike) -> LayoutBank:
    """Read the official ``initg.pickle`` (:func:`read_initg_pickle`) and write it as a
    safetensors layout bank at ``out``; returns the bank."""
    bank = read_initg_pickle(path)
    bank.save(out)
    return bank


def load_layout_bank(path: str | os.PathLike) -> LayoutBank:
    """A layout bank from a safetensors bank file or the official ``initg.pickle``.

    A pickle is read once with :func:`read_initg_pickle` and cached as a safetensors bank in
    the Hugging Face cache, keyed by the pickle's sha256 (a changed pickle is read again).
    """
    from .hub import file_digest, hub_cache_dir

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"layout_bank: file not found: {path}")
    if not _looks_pickled(path):
        return LayoutBank.load(path)
    cache = hub_cache_dir() / "gpstoken" / "layout-banks" / f"{file_digest(path)}.safetensors"
    if cache.is_file():
        return LayoutBank.load(cache)
    bank = read_initg_pickle(path)
    try:
        bank.save(cache)
    except OSError as exc:  # a read-only cache only costs the next load another unpickling
        warnings.warn(f"layout_bank: could not cache {path.name} as {cache} ({exc})", stacklevel=2)
    return bank
