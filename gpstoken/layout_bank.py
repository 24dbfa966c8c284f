"""Per-class bank of initial layouts ``g_init`` (docs/algorithms.md section 6).

The official release samples the layout of a generated image from a bank of layouts taken
from training images of the class (``initg.pickle``). Here a bank is a mapping
``class id -> float32 tensor [M, N, 5]`` (M layouts of N tokens, each
``[sigma_x, sigma_y, rho, mu_x, mu_y]`` in the normalised frame of a 256x256 patch), stored as
one safetensors file with keys ``class_<id>`` and metadata ``format`` / ``format_version`` /
``n_tokens``.

:func:`convert_initg_pickle` converts the official pickle once; it refuses to unpickle
unless ``trust=True`` and even then only lets numpy arrays be rebuilt.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .geometry import GEOMETRY

__all__ = ["LayoutBank", "LayoutBankError", "convert_initg_pickle", "FORMAT", "FORMAT_VERSION"]

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
        """``n`` layouts of ``class_id`` drawn uniformly with replacement, ``[n, N, 5]`` float32 (CPU).

        The draw uses ``generator`` (on any device) so a seeded generator reproduces it.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        layouts = self[class_id]
        device = generator.device if generator is not None else "cpu"
        idx = torch.randint(layouts.shape[0], (n,), generator=generator, device=device).cpu()
        return layouts[idx]

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
        """Write one safetensors file (keys ``class_<id>``, format metadata); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(self.state_dict(), str(tmp), metadata=self.metadata())
        os.replace(tmp, path)
        return path

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
                f"{path} is a pickle, not a safetensors layout bank; convert it once with "
                f"gpstoken.layout_bank.convert_initg_pickle(path, out, trust=True) if you trust its source"
            )
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several exception types for corrupt headers
            raise LayoutBankError(f"{path} is not a readable safetensors file: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise LayoutBankError(f"{path} is not a layout bank (metadata format={meta.get('format')!r}, expected {FORMAT!r})")
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


def _load_restricted(data: bytes) -> Any:
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


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


def convert_initg_pickle(path: str | os.PathLike, out: str | os.PathLike, *, trust: bool = False) -> LayoutBank:
    """Convert the official ``initg.pickle`` (``dict class id -> list of [N, >=5] arrays``) to a
    safetensors layout bank at ``out`` (first 5 columns kept, float32).

    Unpickling can execute arbitrary code embedded in the file, so this refuses to run unless
    ``trust=True`` (you vouch for the file's origin). Even then a restricted unpickler is used
    that can only rebuild numpy arrays, dicts and lists; a pickle referencing anything else
    is rejected.

    Returns:
        The converted :class:`LayoutBank` (also written to ``out``).
    """
    path = Path(path)
    if not trust:
        raise LayoutBankError(
            f"refusing to unpickle {path}: loading a pickle can run arbitrary code hidden in the file. "
            "If it comes from a source you trust (e.g. the official GPSToken release), call "
            "convert_initg_pickle(path, out, trust=True); the conversion then uses a restricted "
            "unpickler that only rebuilds numpy arrays, and writes a safe safetensors file."
        )
    if not path.is_file():
        raise FileNotFoundError(f"layout pickle not found: {path}")
    try:
        obj = _load_restricted(path.read_bytes())
    except pickle.UnpicklingError as exc:
        raise LayoutBankError(f"{path}: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise LayoutBankError(f"{path} is not a valid layout pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise LayoutBankError(f"{path}: expected a dict class id -> list of layouts, got {type(obj).__name__}")
    bank = LayoutBank({_class_id(cid): torch.from_numpy(_class_layouts(cid, v)) for cid, v in obj.items()})
    bank.save(out)
    return bank
