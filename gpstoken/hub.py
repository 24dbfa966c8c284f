"""Checkpoint registry, Hub download/cache, safetensors loading and format conversion.

``name_or_path`` (``load_tokenizer``/``load_generator``) is resolved by :func:`resolve`:

* ``"default"``: the embedded tiny checkpoint of that kind, shipped in ``gpstoken/weights/``;
* a registry name (:func:`list_pretrained`), e.g. ``"gpstoken-m128"``, ``"gpstoken-sit-xl"``;
* a Hub repo id, optionally with revision and file: ``"owner/repo@revision:filename"``;
* a local ``.safetensors`` file, or a folder holding one (plus an optional ``config.json``).

Hub files go through ``huggingface_hub.hf_hub_download``, so the normal cache is used and
``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` are honoured (read when :func:`resolve`
runs). When a file cannot be had, :class:`CheckpointNotFoundError` says which repo, file and
revision are needed and how to place them locally.

Only safetensors files are loaded. Official PyTorch pickles (``.pt``/``.pth``/``.ckpt``) are
converted once with :func:`convert_checkpoint`, which refuses to unpickle unless told the
file is trusted.

Official release (Hub repo ``xtudbxk/GPSToken``): the tokenizer files
``gpstoken_s64.safetensors``, ``gpstoken_m128.safetensors`` and ``gpstoken_l256.safetensors``
are listed in that repo. The generator file name ``generator.safetensors`` (and the layout
bank ``initg.pickle``) are the names the official generation script uses; that they are
published in the same repo is an assumption. Any entry can be overridden with
:func:`register` (``overwrite=True``) or bypassed with ``"repo@revision:filename"`` or a
local path.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, HfHubHTTPError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .models.configs import SIT_ARCHS, TOKENIZER_ARCHS

KINDS = ("tokenizer", "generator")
CHECKPOINT_FORMAT = "gpstoken"
CHECKPOINT_FORMAT_VERSION = 1
OFFICIAL_REPO = "xtudbxk/GPSToken"
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
_WEIGHTS_PACKAGE = "gpstoken"
_WEIGHTS_FOLDER = "weights"


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint file could not be found locally nor fetched from the Hub."""


class CheckpointFormatError(ValueError):
    """A file is not a loadable checkpoint (corrupt, not safetensors, pickled, wrong kind)."""


class CheckpointMismatchError(ValueError):
    """A state dict does not match the model (missing, unexpected or mis-shaped keys)."""


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class PretrainedSpec:
    """A named pretrained checkpoint.

    Attributes:
        name: registry name.
        kind: ``"tokenizer"`` or ``"generator"``.
        repo_id: Hub repo id, or None for a file embedded in ``gpstoken/weights/``.
        filename: file inside the repo (or inside ``gpstoken/weights/``).
        revision: Hub branch, tag or commit.
        arch: architecture name in ``models.configs.TOKENIZER_ARCHS``/``SIT_ARCHS``, or None
            when the config comes from the checkpoint's own metadata.
        extra: anything else the pipeline needs (generator: ``latent_mean``/``latent_std``
            lists of 21 values, ``tokenizer`` paired registry name, sampling defaults).
        description: one line for listings.
    """

    name: str
    kind: str
    repo_id: str | None
    filename: str
    revision: str = "main"
    arch: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PretrainedSpec.kind: expected one of {KINDS}, got {self.kind!r}")
        archs = TOKENIZER_ARCHS if self.kind == "tokenizer" else SIT_ARCHS
        if self.arch is not None and self.arch not in archs:
            raise ValueError(f"PretrainedSpec.arch: unknown {self.kind} architecture {self.arch!r}; known: {sorted(archs)}")

    @property
    def embedded(self) -> bool:
        """True for a file shipped inside the package (``gpstoken/weights/``)."""
        return self.repo_id is None

    def arch_config(self) -> dict[str, Any] | None:
        """The architecture config dict of ``arch`` (None when the checkpoint carries it)."""
        if self.arch is None:
            return None
        archs = TOKENIZER_ARCHS if self.kind == "tokenizer" else SIT_ARCHS
        return archs[self.arch].to_dict()


_REGISTRY: dict[str, PretrainedSpec] = {}
#: what ``"default"`` means for each kind
DEFAULTS = {"tokenizer": "gpstoken-tiny", "generator": "gpstoken-tiny-generator"}


def register(spec: PretrainedSpec, *, overwrite: bool = False) -> PretrainedSpec:
    """Add ``spec`` to the registry (``overwrite=True`` replaces an entry of the same name)."""
    if not isinstance(spec, PretrainedSpec):
        raise TypeError(f"spec: expected a PretrainedSpec, got {type(spec).__name__}")
    if spec.name == "default":
        raise ValueError("spec.name: 'default' is reserved (it maps to DEFAULTS[kind])")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"spec.name: {spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def list_pretrained(kind: str | None = None) -> list[str]:
    """Registry names, optionally only those of ``kind`` ("tokenizer" or "generator")."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS} or None, got {kind!r}")
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_spec(name: str, kind: str | None = None) -> PretrainedSpec:
    """The registry entry ``name`` (``"default"`` needs ``kind``); ValueError when unknown."""
    if name == "default":
        if kind not in KINDS:
            raise ValueError(f"kind: 'default' needs kind in {KINDS}, got {kind!r}")
        name = DEFAULTS[kind]
    if name not in _REGISTRY:
        raise ValueError(f"unknown pretrained checkpoint {name!r}; registered: {list_pretrained()}")
    spec = _REGISTRY[name]
    if kind is not None and spec.kind != kind:
        raise ValueError(f"{name!r} is a {spec.kind} checkpoint, not a {kind}; {kind}s: {list_pretrained(kind)}")
    return spec


# official generator normalisation (configs/gpstoken_generator.yaml of the release): 5 geometry
# channels then 16 feature channels
GENERATOR_LATENT_MEAN = (
    -0.0211, -0.0196, 0.0107, -0.0052, -0.0044, 1.8017, 2.4036, 2.0145, 1.2402, -4.2579, -1.2646,
    -3.0395, 2.2928, 3.2168, -0.1431, 0.1600, 1.3924, 3.2345, 1.6994, 0.8237, 0.3222,
)
GENERATOR_LATENT_STD = (
    0.0121, 0.0108, 0.2533, 0.0119, 0.0114, 2.7334, 2.6400, 2.7963, 2.9325, 2.8337, 2.8269,
    3.1082, 3.1412, 2.8038, 2.6501, 2.6163, 2.4718, 2.6958, 2.8157, 2.4744, 2.8200,
)

for _n, _tokens in (("s64", 64), ("m128", 128), ("l256", 256)):
    register(PretrainedSpec(
        name=f"gpstoken-{_n}", kind="tokenizer", repo_id=OFFICIAL_REPO, filename=f"gpstoken_{_n}.safetensors",
        arch=f"gpstoken-{_n}",
        # the official inference script decodes L256 images above 256 patch by patch
        extra={"n_tokens": _tokens, "decode_per_patch": _n == "l256"},
        description=f"official GPSToken-{_n.upper()} tokenizer ({_tokens} tokens per 256x256 patch)",
    ))
register(PretrainedSpec(
    name="gpstoken-sit-xl", kind="generator", repo_id=OFFICIAL_REPO, filename="generator.safetensors",
    arch="SiT-XL/2-gs",
    extra={
        "tokenizer": "gpstoken-m128",
        "n_tokens": 128,
        "latent_mean": list(GENERATOR_LATENT_MEAN),
        "latent_std": list(GENERATOR_LATENT_STD),
        "layout_bank": "initg.pickle",
        "state_dict_prefix": "ema_model.",
        "cfg_scale": 1.5, "guidance_low": 200, "guidance_high": 1000, "steps": 250, "sampler": "sde",
    },
    description="official SiT-XL class-conditional generator over GPSToken-M128 tokens (ImageNet 256)",
))
register(PretrainedSpec(
    name="gpstoken-tiny", kind="tokenizer", repo_id=None, filename="gpstoken_tiny.safetensors",
    description="small tokenizer embedded in the package (works offline); config in its metadata",
))
register(PretrainedSpec(
    name="gpstoken-tiny-generator", kind="generator", repo_id=None, filename="gpstoken_tiny_generator.safetensors",
    description="small generator embedded in the package (works offline); config in its metadata",
))


# ---------------------------------------------------------------------- safetensors files
def _atomic_save(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]) -> Path:
    """``safetensors.torch.save_file`` through a temp file in the same folder + ``os.replace``."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist (writing {path.name})")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(dict(tensors), tmp, metadata=dict(metadata))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_pickle(path: Path) -> bool:
    """True for a torch zip checkpoint or a raw pickle (protocol >= 2 starts with 0x80).

    A safetensors file starts with an 8-byte little-endian header length followed by ``{``;
    its first byte can be 0x80 too, so that header is recognised first.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _pickle_message(path: Path) -> str:
    return (
        f"{path} looks like a PyTorch pickle checkpoint; gpstoken only loads safetensors files. "
        "Convert it once with gpstoken.hub.convert_checkpoint(src, dst, trust=True) (only for files "
        "from a source you trust: unpickling can run code), then load dst"
    )


def _open_checked(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if not path.is_file():
        raise CheckpointFormatError(f"{path} is not a file")
    if path.suffix.lower() in _PICKLE_SUFFIXES or _is_pickle(path):
        raise CheckpointFormatError(_pickle_message(path))
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


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
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


def checkpoint_config(metadata: Mapping[str, str], kind: str | None = None) -> dict[str, Any] | None:
    """The config dict stored by :func:`save_checkpoint`, or None for other files.

    When ``kind`` is given and the file records a different kind, CheckpointFormatError.
    """
    if metadata.get("format") != CHECKPOINT_FORMAT:
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
    extra_metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a gpstoken checkpoint: safetensors with ``{"format": "gpstoken", "kind", "config"}``.

    ``config`` (JSON-serialisable) is read back by :func:`resolve`/:func:`checkpoint_config`.
    ``extra_metadata`` values that are not strings are stored as JSON. Atomic write.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a dict, got {type(config).__name__}")
    metadata: dict[str, str] = {}
    for k, v in (extra_metadata or {}).items():
        metadata[str(k)] = v if isinstance(v, str) else json.dumps(v)
    metadata.update(
        format=CHECKPOINT_FORMAT, format_version=str(CHECKPOINT_FORMAT_VERSION), kind=kind, config=json.dumps(dict(config))
    )
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return _atomic_save(tensors, path, metadata)


def check_state_dict(
    expected: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *, name: str = "checkpoint", show: int = 5
) -> None:
    """Raise CheckpointMismatchError unless ``state_dict`` has exactly the keys/shapes expected.

    expected: key -> shape (tuple / ``torch.Size``) or tensor (e.g. ``model.state_dict()``).
    The message lists the first ``show`` missing, unexpected and mis-shaped keys with counts.
    """
    want = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in expected.items()}
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    mismatched = [
        f"{k}: expected {want[k]}, got {tuple(state_dict[k].shape)}"
        for k in want if k in state_dict and tuple(state_dict[k].shape) != want[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            more = f", ... ({len(items) - show} more)" if len(items) > show else ""
            parts.append(f"{len(items)} {label}: " + ", ".join(items[:show]) + more)
    raise CheckpointMismatchError(f"{name} does not match the model: " + "; ".join(parts))


# ---------------------------------------------------------------------- conversion
_NESTED_KEYS = ("state_dict", "model", "ema", "model_ema", "ema_model", "module", "net")


def _find_state_dict(obj: Any, key: str | None, src: Path) -> dict[str, torch.Tensor]:
    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, Mapping) or part not in obj:
                raise ValueError(f"key: {src} has no entry {key!r}")
            obj = obj[part]
    while True:
        if not isinstance(obj, Mapping):
            raise CheckpointFormatError(f"{src}: expected a dict of tensors, found {type(obj).__name__}")
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {str(k): v for k, v in obj.items()}
        nested = [k for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)]
        if len(nested) != 1:
            found = nested or [k for k, v in obj.items() if isinstance(v, Mapping)]
            raise CheckpointFormatError(
                f"{src}: cannot tell which entry holds the state dict (dict entries: {found}); "
                "pass key='NAME' (nested: 'a/b')"
            )
        obj = obj[nested[0]]


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    trust: bool = False,
    key: str | None = None,
    strip_prefix: str | Iterable[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Convert a PyTorch pickle checkpoint (``.pt``/``.pth``/``.ckpt``) to safetensors.

    Unpickling can execute code, so it is refused unless ``trust=True``. It is then loaded
    with ``torch.load(weights_only=True)``, falling back to a full unpickle (with a warning)
    only when that fails. The state dict may be nested under ``state_dict``/``model``/``ema``
    (found automatically when unambiguous) or picked with ``key`` (``"a/b"`` for nesting).
    ``strip_prefix``: prefix(es) removed from the keys that start with them (e.g.
    ``"module."``); nothing is stripped unless asked. Writes ``dst`` atomically; returns it.
    """
    src = Path(src)
    if not src.is_file():
        raise CheckpointNotFoundError(f"convert_checkpoint: source file not found: {src}")
    if not trust:
        raise CheckpointFormatError(
            f"refusing to unpickle {src}: pickle files can run arbitrary code. If it comes from a "
            "source you trust, call convert_checkpoint(src, dst, trust=True)"
        )
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure of the restricted unpickler; the user vouched for the file
        warnings.warn(f"{src}: weights-only loading failed ({e}); unpickling fully because trust=True", stacklevel=2)
        obj = torch.load(src, map_location="cpu", weights_only=False)
    state_dict = _find_state_dict(obj, key, src)
    prefixes = [strip_prefix] if isinstance(strip_prefix, str) else list(strip_prefix or [])
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        if k in out:
            raise CheckpointFormatError(f"{src}: stripping {prefixes} makes key {k!r} appear twice")
        out[k] = v.detach().clone().contiguous()  # clone: safetensors refuses shared storage
    meta = {"converted_from": src.name, **dict(metadata or {})}
    return _atomic_save(out, dst, meta)


# ---------------------------------------------------------------------- resolving names
@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a checkpoint is on disk, the registry entry it came from and its config.

    config: from the file's gpstoken metadata, else a ``config.json`` next to it (folders and
    Hub repos), else the registry entry's architecture; None when nothing says.
    """

    path: Path
    spec: PretrainedSpec | None
    config: dict[str, Any] | None


_REPO_RE = re.compile(r"^(?P<repo>[\w.\-]+/[\w.\-]+)(?:@(?P<rev>[^:@\s]+))?(?::(?P<file>\S+))?$")


def parse_hub_id(text: str) -> tuple[str, str | None, str | None]:
    """Split ``"owner/repo[@revision][:filename]"`` into ``(repo_id, revision, filename)``."""
    m = _REPO_RE.match(text)
    if not m:
        raise ValueError(f"not a Hub id of the form 'owner/repo[@revision][:filename]': {text!r}")
    return m.group("repo"), m.group("rev"), m.group("file")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hub cache folder: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the library default."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (read now, or when huggingface_hub was imported)."""
    return _env_true("HF_HUB_OFFLINE") or bool(hf_constants.HF_HUB_OFFLINE)


def _download(repo_id: str, filename: str, revision: str | None, label: str) -> Path:
    cache = hub_cache_dir()
    offline = hub_offline()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache, local_files_only=offline))
    except HFValidationError as e:
        raise ValueError(f"{label}: invalid Hub repo id / revision / filename ({e})") from e
    except (EntryNotFoundError, HfHubHTTPError, OSError) as e:
        rev = revision or "main"
        why = (
            f"offline (HF_HUB_OFFLINE is set) and no cached copy in {cache}"
            if offline else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        )
        rev_flag = "" if rev == "main" else f" --revision {rev}"
        raise CheckpointNotFoundError(
            f"{label}: cannot get file {filename!r} of Hub repo {repo_id!r} (revision {rev}): {why}. "
            f"To use it without network access, download it where the Hub is reachable with "
            f"`hf download {repo_id} {filename}{rev_flag}` (older clients: `huggingface-cli download ...`) "
            f"and copy the Hugging Face cache to {cache} (or point HF_HUB_CACHE / HF_HOME at it), "
            f"or pass the downloaded file's path instead of {label!r}"
        ) from e


def _embedded_path(spec: PretrainedSpec) -> Path:
    path = Path(str(importlib.resources.files(_WEIGHTS_PACKAGE) / _WEIGHTS_FOLDER / spec.filename))
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{spec.name}: the embedded checkpoint {_WEIGHTS_FOLDER}/{spec.filename} is missing from this "
            f"gpstoken installation ({path}); reinstall gpstoken, or pass another checkpoint "
            f"(e.g. one of {list_pretrained(spec.kind)} or a local .safetensors path)"
        )
    return path


def _folder_checkpoint(folder: Path, kind: str) -> Path:
    files = sorted(folder.glob("*.safetensors"))
    if len(files) == 1:
        return files[0]
    if not files:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
        hint = f"; it holds pickles {pickles}: convert them with gpstoken.hub.convert_checkpoint" if pickles else ""
        raise CheckpointNotFoundError(f"folder {folder} holds no .safetensors file{hint}")
    for preferred in (f"{kind}.safetensors", "model.safetensors"):
        if folder / preferred in files:
            return folder / preferred
    raise CheckpointFormatError(
        f"folder {folder} holds several checkpoints {[f.name for f in files]}; pass the file's path"
    )


def _read_config_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointFormatError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object")
    return config


def _config_for(path: Path, kind: str, spec: PretrainedSpec | None, config_json: dict[str, Any] | None) -> dict[str, Any] | None:
    config = checkpoint_config(read_metadata(path), kind)
    if config is not None:
        return config
    if config_json is not None:
        return config_json
    return spec.arch_config() if spec is not None else None


def _looks_local(text: str) -> bool:
    return (
        text.startswith((".", "/", "~", "\\"))
        or (":" not in text and text.lower().endswith((".safetensors", *_PICKLE_SUFFIXES)))
        or os.path.exists(os.path.expanduser(text))
    )


def resolve(name_or_path: str | os.PathLike, kind: str = "tokenizer") -> ResolvedCheckpoint:
    """Find a checkpoint of ``kind`` ("tokenizer" or "generator") on disk, downloading if needed.

    Accepts ``"default"``, a registry name, ``"owner/repo[@revision][:filename]"``, a local
    ``.safetensors`` file or a folder. Raises CheckpointNotFoundError when the file cannot be
    had (naming repo, file, revision and how to place it), CheckpointFormatError for files of
    the wrong format or kind, ValueError for names that mean nothing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a str or path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    # local file or folder
    if isinstance(name_or_path, os.PathLike) or _looks_local(text):
        path = Path(text).expanduser()
        if path.is_dir():
            file = _folder_checkpoint(path, kind)
            return ResolvedCheckpoint(file, None, _config_for(file, kind, None, _read_config_json(path / "config.json")))
        if not path.exists():
            raise CheckpointNotFoundError(f"no such checkpoint file or folder: {path}")
        return ResolvedCheckpoint(path, None, _config_for(path, kind, None, None))
    # registry name
    if text == "default" or text in _REGISTRY:
        spec = get_spec(text, kind)
        if spec.embedded:
            path = _embedded_path(spec)
        else:
            path = _download(spec.repo_id, spec.filename, spec.revision, spec.name)
        return ResolvedCheckpoint(path, spec, _config_for(path, kind, spec, None))
    # Hub id
    try:
        repo_id, revision, filename = parse_hub_id(text)
    except ValueError:
        raise ValueError(
            f"name_or_path: {text!r} is not a registry name ({list_pretrained(kind)} or 'default'), "
            "a Hub id 'owner/repo[@revision][:filename]', nor an existing local file or folder"
        ) from None
    candidates = [s for s in _REGISTRY.values() if s.repo_id == repo_id and s.kind == kind]
    if filename is None:
        if len(candidates) > 1:
            raise ValueError(
                f"name_or_path: Hub repo {repo_id} holds several {kind}s; name the file, e.g. "
                + ", ".join(f"'{repo_id}:{s.filename}'" for s in candidates)
                + f" (or use the registry names {[s.name for s in candidates]})"
            )
        filename = candidates[0].filename if candidates else "model.safetensors"
    spec = next((s for s in candidates if s.filename == filename), None)
    path = _download(repo_id, filename, revision, text)
    config_json = None
    if spec is None:
        try:
            config_json = _read_config_json(_download(repo_id, "config.json", revision, text))
        except CheckpointNotFoundError:
            config_json = None  # the config may come from the checkpoint metadata instead
    return ResolvedCheckpoint(path, spec, _config_for(path, kind, spec, config_json))
