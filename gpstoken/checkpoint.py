"""Checkpoint formats: what tokenizer and generator safetensors files hold, and the one checker
every loader and exporter goes through.

**Tokenizer file**: the :class:`~gpstoken.models.tokenizer.GPSTokenizer` state dict under the
official key names. Files written by gpstoken also carry string metadata ``format="gpstoken"``,
``format_version``, ``kind="tokenizer"``, ``config`` (``TokenizerConfig`` JSON) and optionally
``decode_per_patch`` (``"true"`` for models decoded patch by patch, like L256) and
``fit_steps`` (the tokenizer's default test-time fitting steps, :func:`fit_steps`; absent = 0,
as for every official model). The official
release publishes the bare state dict (no metadata); its loader keeps only the keys the model
has, so such files may hold extra keys: :func:`fit_state_dict` drops them with one warning.

**Generator file**: the texture SiT under :data:`TEXTURE_PREFIX` (``ema_model.``, the official
format), optionally a layout SiT under :data:`LAYOUT_PREFIX` and a per-class layout bank under
:data:`BANK_PREFIX` (``layout_bank.class_<id>``). Its ``config`` is a :class:`GeneratorConfig`.
The official ``generator.safetensors`` holds only ``ema_model.*`` (plus the raw training
weights, which are not used) and no metadata.

**Texture targets**: the texture SiT models ``[geometry - g_init, features]`` (per token,
``5 + C`` channels) normalised by ``latent_mean`` / ``latent_std``: :func:`texture_targets` and
its inverse :func:`tokens_from_targets`.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .geometry import GEOMETRY
from .io import write_safetensors
from .models.configs import SIT_ARCHS, SiTConfig
from .sampling import SamplingDefaults
from .validate import config_fields

__all__ = [
    "BANK_PREFIX", "CheckpointFormatError", "CheckpointMismatchError", "CheckpointNotFoundError", "FORMAT",
    "FORMAT_VERSION", "GeneratorConfig", "KINDS", "LAYOUT_PREFIX", "TEXTURE_PREFIX", "checkpoint_config",
    "fit_state_dict", "fit_steps", "is_official_generator", "load_safetensors", "read_keys", "read_metadata",
    "save_checkpoint", "sub_state_dict", "texture_targets", "tokens_from_targets",
]

KINDS = ("tokenizer", "generator")
FORMAT = "gpstoken"
FORMAT_VERSION = 1
TEXTURE_PREFIX = "ema_model."
LAYOUT_PREFIX = "layout_model."
BANK_PREFIX = "layout_bank."
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint file could not be found locally nor fetched from the Hub."""


class CheckpointFormatError(ValueError):
    """A file is not a loadable checkpoint (corrupt, not safetensors, pickled, wrong kind)."""


class CheckpointMismatchError(ValueError):
    """A state dict does not match the model (missing or mis-shaped keys)."""


# ---------------------------------------------------------------------- files
def is_pickle(path: Path) -> bool:
    """True for a torch zip checkpoint or a raw pickle (protocol >= 2 starts with 0x80).

    A safetensors file starts with an 8-byte little-endian header length followed by ``{``;
    its first byte can be 0x80 too, so that header is recognised first.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _open_checked(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointFormatError(f"{path} is not a file")
    if path.suffix.lower() in PICKLE_SUFFIXES or is_pickle(path):
        raise CheckpointFormatError(
            f"{path} looks like a PyTorch pickle checkpoint; gpstoken only loads safetensors files. "
            "Convert it once with gpstoken.hub.convert_checkpoint(src, dst, trust=True) (only for files "
            "from a source you trust: unpickling can run code), then load dst"
        )
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a safetensors file (empty dict when it has none).

    Raises CheckpointNotFoundError (missing) or CheckpointFormatError (pickled, corrupt, not
    safetensors), naming the file.
    """
    path = _open_checked(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except SafetensorError as e:
        raise CheckpointFormatError(f"{path} is corrupt or not a safetensors file ({e})") from e


def read_keys(path: str | os.PathLike) -> list[str]:
    """The tensor names of a safetensors file, without loading the tensors."""
    path = _open_checked(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except SafetensorError as e:
        raise CheckpointFormatError(f"{path} is corrupt or not a safetensors file ({e})") from e


def load_safetensors(path: str | os.PathLike,
                     device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load ``(state_dict, metadata)`` from a safetensors file.

    Raises CheckpointNotFoundError for a missing file and CheckpointFormatError for a pickled
    (``.pt``/``.pth``/``.ckpt``) file (with how to convert it) or a corrupt / non-safetensors
    file.
    """
    metadata = read_metadata(path)
    try:
        state_dict = load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise CheckpointFormatError(f"{path} is corrupt or not a safetensors file ({e})") from e
    return state_dict, metadata


def checkpoint_config(metadata: Mapping[str, str], kind: Optional[str] = None) -> Optional[dict[str, Any]]:
    """The config dict stored by :func:`save_checkpoint`, or None for other files.

    When ``kind`` is given and the file records a different kind, CheckpointFormatError.
    """
    if metadata.get("format") != FORMAT:
        return None
    if kind is not None and metadata.get("kind") not in (None, kind):
        raise CheckpointFormatError(f"checkpoint is a {metadata.get('kind')} checkpoint, expected a {kind}")
    if "config" not in metadata:
        return None
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as e:
        raise CheckpointFormatError(f"checkpoint metadata 'config' is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"checkpoint metadata 'config' must be a JSON object, got {type(config).__name__}")
    return config


def save_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    config: Mapping[str, Any],
    kind: str,
    extra_metadata: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a gpstoken checkpoint: safetensors with ``{"format": "gpstoken", "kind", "config"}``.

    ``config`` (JSON-serialisable) is read back by :func:`checkpoint_config`. ``extra_metadata``
    values that are not strings are stored as JSON. Atomic write.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    metadata: dict[str, str] = {}
    for k, v in (extra_metadata or {}).items():
        metadata[str(k)] = v if isinstance(v, str) else json.dumps(v)
    metadata.update(format=FORMAT, format_version=str(FORMAT_VERSION), kind=kind, config=json.dumps(dict(config)))
    return write_safetensors(state_dict, path, metadata)


def fit_steps(metadata: Mapping[str, str], where: str) -> int:
    """A tokenizer file's default test-time fitting steps (metadata ``fit_steps``, a decimal
    int >= 0; 0 when absent). ``where``: the file, for the error."""
    value = metadata.get("fit_steps", "0")
    if not value.isdigit():
        raise CheckpointFormatError(f"{where}: metadata 'fit_steps' must be an int >= 0, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------- state dicts
def _listing(label: str, items: Sequence[str], show: int) -> str:
    more = f", ... ({len(items) - show} more)" if len(items) > show else ""
    return f"{len(items)} {label}: " + ", ".join(items[:show]) + more


def fit_state_dict(
    expected: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *, name: str = "checkpoint",
    allow_extra: bool = True, show: int = 5,
) -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` that the model expects, checked.

    expected: key -> shape (tuple / ``torch.Size``) or tensor (e.g. ``model.state_dict()``).
    Keys the model does not have are dropped with one warning naming them (the official loader
    keeps only ``k in model.state_dict()``), or are an error with ``allow_extra=False``.
    Raises CheckpointMismatchError listing the first ``show`` missing and mis-shaped keys (with
    counts), CheckpointFormatError naming the first key holding inf/nan.
    """
    want = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in expected.items()}
    missing = [k for k in want if k not in state_dict]
    extra = [k for k in state_dict if k not in want]
    mismatched = [
        f"{k}: expected {want[k]}, got {tuple(state_dict[k].shape)}"
        for k in want if k in state_dict and tuple(state_dict[k].shape) != want[k]
    ]
    if missing or mismatched or (extra and not allow_extra):
        parts = [_listing(label, items, show) for label, items in
                 (("missing", missing), ("unexpected", [] if allow_extra else extra), ("shape mismatch", mismatched))
                 if items]
        raise CheckpointMismatchError(f"{name} does not match the model: " + "; ".join(parts))
    if extra:
        warnings.warn(f"{name}: ignoring {_listing('keys the model does not have', extra, show)}", stacklevel=3)
    out = {k: state_dict[k] for k in want}
    for k, v in out.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointFormatError(f"{name}: weight {k!r} holds inf/nan values; the file is damaged or "
                                        "was saved from a diverged run")
    return out


def sub_state_dict(state: Mapping[str, torch.Tensor], prefix: str, *, name: str) -> dict[str, torch.Tensor]:
    """Entries under ``prefix`` with the prefix stripped; CheckpointFormatError when there are none."""
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        raise CheckpointFormatError(f"{name}: no weights with the key prefix {prefix!r}")
    return sub


def is_official_generator(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bool:
    """A generator file as the official release publishes it: no gpstoken metadata, texture SiT
    weights under ``ema_model.``."""
    return metadata.get("format") != FORMAT and any(k.startswith(TEXTURE_PREFIX) for k in state)


# ---------------------------------------------------------------------- texture targets
def texture_targets(tokens: torch.Tensor, g_init: torch.Tensor) -> torch.Tensor:
    """tokens float [..., N, 5+C], g_init float [..., N, 5] -> ``[geometry - g_init, features]``."""
    return torch.cat([tokens[..., :GEOMETRY] - g_init, tokens[..., GEOMETRY:]], dim=-1)


def tokens_from_targets(x: torch.Tensor, g_init: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`texture_targets`: ``[x_geometry + g_init, x_features]``."""
    return torch.cat([x[..., :GEOMETRY] + g_init, x[..., GEOMETRY:]], dim=-1)


# ---------------------------------------------------------------------- generator config
def _floats(value: Any, n: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n:
        got = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
        raise CheckpointFormatError(f"generator config: {what} must be a list of {n} numbers, got {got}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class GeneratorConfig:
    """The ``config`` of a generator checkpoint.

    texture: the texture SiT; latent_mean/latent_std: ``[5+C]`` normalisation of its targets
    (:func:`texture_targets`); tokenizer: registry name, Hub id, or a ``.safetensors`` path
    (relative paths are relative to the generator file); class_names: one per class, or None;
    layout/layout_mean/layout_std: the optional layout SiT over ``[5]`` geometry and its
    normalisation; sampling: the defaults ``generate`` uses.
    """

    texture: SiTConfig
    latent_mean: tuple[float, ...]
    latent_std: tuple[float, ...]
    tokenizer: str
    class_names: Optional[tuple[str, ...]] = None
    layout: Optional[SiTConfig] = None
    layout_mean: Optional[tuple[float, ...]] = None
    layout_std: Optional[tuple[float, ...]] = None
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)

    @property
    def n_tokens(self) -> int:
        return self.texture.input_size[0]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "texture": self.texture.to_dict(), "latent_mean": list(self.latent_mean),
            "latent_std": list(self.latent_std), "tokenizer": self.tokenizer, "n_tokens": self.n_tokens,
            "sampling": self.sampling.to_dict(),
        }
        if self.class_names is not None:
            d["class_names"] = list(self.class_names)
        if self.layout is not None:
            if self.layout_mean is None or self.layout_std is None:
                raise ValueError("GeneratorConfig: a layout SiT needs layout_mean and layout_std")
            d.update(layout=self.layout.to_dict(), layout_mean=list(self.layout_mean), layout_std=list(self.layout_std))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorConfig":
        """Parse a stored config; CheckpointFormatError naming the field when it is malformed."""
        config_fields(cls, d, "generator config", also=frozenset({"n_tokens"}), error=CheckpointFormatError)
        for key in ("texture", "latent_mean", "latent_std", "tokenizer"):
            if key not in d:
                raise CheckpointFormatError(f"generator config: missing {key!r} (a layout-only export is not a "
                                            "generator: bundle it with `gpstoken train texture --layout-from`)")
        try:
            texture = SiTConfig.from_dict(d["texture"])
            layout = SiTConfig.from_dict(d["layout"]) if d.get("layout") is not None else None
            sampling = SamplingDefaults.from_dict(d.get("sampling", {}))
        except (TypeError, ValueError) as e:
            raise CheckpointFormatError(f"generator config: {e}") from e
        c = texture.in_channels
        names = d.get("class_names")
        if names is not None and (not isinstance(names, (list, tuple)) or len(names) != texture.num_classes):
            raise CheckpointFormatError(f"generator config: class_names must list {texture.num_classes} names")
        return cls(
            texture=texture, latent_mean=_floats(d["latent_mean"], c, "latent_mean"),
            latent_std=_floats(d["latent_std"], c, "latent_std"), tokenizer=str(d["tokenizer"]),
            class_names=tuple(map(str, names)) if names is not None else None, layout=layout,
            layout_mean=_floats(d["layout_mean"], GEOMETRY, "layout_mean") if layout else None,
            layout_std=_floats(d["layout_std"], GEOMETRY, "layout_std") if layout else None,
            sampling=sampling,
        )

    @classmethod
    def from_official(cls, d: Mapping[str, Any], base: "GeneratorConfig") -> "GeneratorConfig":
        """The config of an official ``configs/gpstoken_generator.yaml`` (as JSON): its SiT
        ``model`` settings and ``pretrained_gpstoken_means/stds`` over ``base`` (the official
        generator's config, which supplies the architecture, tokenizer and sampling defaults)."""
        try:
            m = d["model"]
            c = int(m["in_channels"])
            gps_c = int(d.get("gpstoken", {}).get("gpsconfig", {}).get("gps_c", c - GEOMETRY))
            texture = replace(SIT_ARCHS.get(m.get("name"), base.texture), input_size=(int(m["latent_size"]), 1),
                              in_channels=c, num_classes=int(m["num_classes"]), cond_channels=c - gps_c)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointFormatError(f"official generator config: missing or bad model.* field ({e})") from e
        names = base.class_names if base.class_names and len(base.class_names) == texture.num_classes else None
        return replace(base, texture=texture, class_names=names,
                       latent_mean=_floats(d["pretrained_gpstoken_means"], c, "pretrained_gpstoken_means"),
                       latent_std=_floats(d.get("pretrained_gpstoken_stds"), c, "pretrained_gpstoken_stds"))
