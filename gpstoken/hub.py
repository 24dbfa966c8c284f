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

Official release: the official README (:data:`OFFICIAL_PAGE`) distributes the tokenizers
``gpstoken_s64.safetensors``, ``gpstoken_m128.safetensors``, ``gpstoken_l256.safetensors`` and,
for generation, ``generator.safetensors`` with the layout bank ``initg.pickle`` (the names its
``scripts/generate.sh`` uses). The registry looks for them in the Hub repo ``xtudbxk/GPSToken``;
a user holding the files passes their path or folder instead (no config file needed: see
:func:`gpstoken.load_tokenizer` and :func:`gpstoken.load_generator`). Any entry can be
overridden with :func:`register` (``overwrite=True``).

:func:`portable_id` maps a loaded model back to an id that works on another machine.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

from .checkpoint import (  # noqa: F401  (the error types are part of this module's interface)
    KINDS,
    PICKLE_SUFFIXES,
    CheckpointFormatError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    GeneratorConfig,
    checkpoint_config,
    load_safetensors,
    read_metadata,
    save_checkpoint,
)
from .imagenet import imagenet_classes
from .io import write_safetensors, write_text
from .models.configs import SIT_ARCHS, TOKENIZER_ARCHS, TokenizerConfig
from .sampling import SamplingDefaults

OFFICIAL_REPO = "xtudbxk/GPSToken"
#: the official README: its Model Zoo links the released files (Baidu Pan / OneDrive)
OFFICIAL_PAGE = "https://github.com/xtudbxk/GPSToken#-quick-start"
_WEIGHTS_PACKAGE = "gpstoken"
_WEIGHTS_FOLDER = "weights"


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
        description: one line for listings.
        decode_per_patch: tokenizer: decode images above 256x256 patch by patch (the official
            L256 inference path) instead of one merged map.
        tokenizer: generator: the paired tokenizer (registry name, Hub id or path).
        latent_mean, latent_std: generator: the ``[5+C]`` normalisation of its targets.
        layout_bank: generator: file name of the official layout bank (``initg.pickle``) next
            to the weights.
        sampling: generator: the defaults ``generate`` uses.
        imagenet_classes: generator: its classes are the 1000 ImageNet-1k classes
            (:mod:`gpstoken.imagenet`).
        download_page: where the files are published when the Hub does not have them.
    """

    name: str
    kind: str
    repo_id: str | None
    filename: str
    revision: str = "main"
    arch: str | None = None
    description: str = ""
    decode_per_patch: bool = False
    tokenizer: str | None = None
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None
    layout_bank: str | None = None
    sampling: SamplingDefaults | None = None
    imagenet_classes: bool = False
    download_page: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PretrainedSpec.kind: expected one of {KINDS}, got {self.kind!r}")
        archs = TOKENIZER_ARCHS if self.kind == "tokenizer" else SIT_ARCHS
        if self.arch is not None and self.arch not in archs:
            raise ValueError(f"PretrainedSpec.arch: unknown {self.kind} architecture {self.arch!r}; known: {sorted(archs)}")
        if self.kind == "generator" and self.arch is not None and (
                self.tokenizer is None or self.latent_mean is None or self.latent_std is None):
            raise ValueError(f"PretrainedSpec {self.name!r}: a generator with an arch needs tokenizer, latent_mean "
                             "and latent_std (its checkpoint carries no config)")

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

    def generator_config(self) -> GeneratorConfig:
        """The :class:`GeneratorConfig` of an official generator (one with ``arch``)."""
        if self.kind != "generator" or self.arch is None:
            raise ValueError(f"{self.name!r} is not a generator with a registered architecture")
        return GeneratorConfig(
            texture=SIT_ARCHS[self.arch], latent_mean=self.latent_mean, latent_std=self.latent_std,
            tokenizer=self.tokenizer, class_names=imagenet_classes() if self.imagenet_classes else None,
            sampling=self.sampling or SamplingDefaults())


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


def spec_of_arch(arch: str | None, kind: str) -> PretrainedSpec | None:
    """The registered checkpoint of ``kind`` built on architecture ``arch`` (None when none is)."""
    return next((s for s in _REGISTRY.values() if s.kind == kind and arch is not None and s.arch == arch), None)


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
        decode_per_patch=_n == "l256",
        description=f"official GPSToken-{_n.upper()} tokenizer ({_tokens} tokens per 256x256 patch)",
        download_page=OFFICIAL_PAGE,
    ))
#: the official generator (``inference_generator.py`` + ``scripts/generate.sh`` of the release)
OFFICIAL_GENERATOR = register(PretrainedSpec(
    name="gpstoken-sit-xl", kind="generator", repo_id=OFFICIAL_REPO, filename="generator.safetensors",
    arch="SiT-XL/2-gs", tokenizer="gpstoken-m128",
    latent_mean=GENERATOR_LATENT_MEAN, latent_std=GENERATOR_LATENT_STD, layout_bank="initg.pickle",
    sampling=SamplingDefaults(steps=250, sampler="sde", cfg_scale=1.5, guidance_interval=(0.2, 1.0)),
    imagenet_classes=True, download_page=OFFICIAL_PAGE,
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
    return write_safetensors(out, dst, meta)


# ---------------------------------------------------------------------- resolving names
@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a checkpoint is on disk, where it came from, and its config.

    config: from the file's gpstoken metadata, else a ``config.json`` next to it (folders and
    Hub repos), else the registry entry's (or the explicit / recognised) architecture; None
    when nothing says. source: the portable id (registry name, ``owner/repo[@rev]:file``) or,
    for local files, the absolute path. repo_id/revision: the Hub repo it was fetched from.
    arch: the architecture name when the config came from one.
    """

    path: Path
    spec: PretrainedSpec | None
    config: dict[str, Any] | None
    source: str = ""
    repo_id: str | None = None
    revision: str | None = None
    arch: str | None = None

    def sibling(self, filename: str) -> Path | None:
        """A file next to the checkpoint (same folder, or same Hub repo and revision); None when
        there is none. Hub files are fetched (offline: from the cache)."""
        if self.repo_id is not None:
            try:
                return _download(self.repo_id, filename, self.revision, self.source)
            except CheckpointNotFoundError:
                return None
        path = self.path.parent / filename
        return path if path.is_file() else None

    def reference(self, ref: str) -> str:
        """``ref`` (a name, Hub id, or a ``.safetensors`` path relative to this checkpoint) made
        usable from anywhere: relative paths become ``owner/repo@rev:ref`` or a local path."""
        if not ref.endswith(".safetensors") or Path(ref).is_absolute():
            return ref
        if self.repo_id is not None:
            return f"{self.repo_id}@{self.revision or 'main'}:{ref}"
        return str(self.path.parent / ref)


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


def _download(repo_id: str, filename: str, revision: str | None, label: str, *, hint: str = "") -> Path:
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
            f"or pass the downloaded file's path instead of {label!r}.{hint}"
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
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
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


def _config_for(path: Path, kind: str, spec: PretrainedSpec | None, config_json: dict[str, Any] | None,
                arch: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(config, arch): an explicit ``arch`` first, then the file's metadata, a config.json, the
    registry entry's architecture, and for tokenizers the architecture its shapes and name say."""
    if arch is not None:
        return _arch_config(arch, kind), arch
    config = checkpoint_config(read_metadata(path), kind)
    if config is not None:
        return config, None
    if config_json is not None:
        return config_json, None
    if spec is not None and spec.arch is not None:
        if kind == "generator":
            return spec.generator_config().to_dict(), spec.arch
        return spec.arch_config(), spec.arch
    if kind == "tokenizer":
        arch = infer_tokenizer_arch(path)
        return _arch_config(arch, kind), arch
    return None, None


def _arch_config(arch: str, kind: str) -> dict[str, Any]:
    archs = TOKENIZER_ARCHS if kind == "tokenizer" else SIT_ARCHS
    if not isinstance(arch, str) or arch not in archs:
        raise ValueError(f"arch: unknown {kind} architecture {arch!r}; choose one of {sorted(archs)}")
    if kind == "generator":
        spec = spec_of_arch(arch, kind)
        if spec is None:
            raise ValueError(f"arch: no registered generator uses {arch!r}; its normalisation is unknown")
        return spec.generator_config().to_dict()
    return archs[arch].to_dict()


@functools.lru_cache(maxsize=None)
def _arch_shapes(config: TokenizerConfig) -> dict[str, tuple[int, ...]]:
    from .models.tokenizer import GPSTokenizer

    with torch.device("meta"):
        model = GPSTokenizer(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _file_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    read_metadata(path)  # clear errors for missing / pickled / corrupt files
    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def infer_tokenizer_arch(path: str | os.PathLike) -> str:
    """The tokenizer architecture of a safetensors file without a config
    (:func:`arch_from_shapes` of its tensor shapes and file name)."""
    path = Path(path)
    return arch_from_shapes(_file_shapes(path), path)


def arch_from_shapes(shapes: Mapping[str, tuple[int, ...]], path: str | os.PathLike) -> str:
    """The ``TOKENIZER_ARCHS`` name of a tokenizer state dict given as key -> shape.

    The architectures whose weights all appear with the same shapes are candidates (extra keys
    are allowed). Architectures with identical weights (S64 and M128 differ only in their token
    count) are told apart by the file name of ``path`` (``gpstoken_m128.safetensors`` contains
    ``m128``). CheckpointFormatError when none fits, ValueError listing the choices when the
    name does not tell.
    """
    path = Path(path)
    fits = [a for a in TOKENIZER_ARCHS if all(shapes.get(k) == v for k, v in _arch_shapes(TOKENIZER_ARCHS[a]).items())]
    stem = path.name.lower().replace("_", "-")
    if len(fits) > 1:
        named = [a for a in fits if a in stem or a.removeprefix("gpstoken-") in stem.split(".")[0].split("-")]
        fits = named if len(named) == 1 else fits
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise CheckpointFormatError(
            f"{path}: not a GPSToken tokenizer of a known architecture (its weights match none of "
            f"{sorted(TOKENIZER_ARCHS)}) and it carries no config; pass the file written by "
            "Tokenizer.save_pretrained, or a config.json next to it"
        )
    raise ValueError(
        f"{path.name}: the weights fit several architectures {fits} (they differ only in tokens per "
        f"patch) and the file name does not say which; pass arch=, e.g. load_tokenizer({str(path)!r}, "
        f"arch={fits[-1]!r}), or rename the file as published (gpstoken_m128.safetensors)"
    )


def _looks_local(text: str) -> bool:
    return (
        text.startswith((".", "/", "~", "\\"))
        or (":" not in text and text.lower().endswith((".safetensors", *PICKLE_SUFFIXES)))
        or os.path.exists(os.path.expanduser(text))
    )


def resolve(name_or_path: str | os.PathLike, kind: str = "tokenizer", *, arch: str | None = None) -> ResolvedCheckpoint:
    """Find a checkpoint of ``kind`` ("tokenizer" or "generator") on disk, downloading if needed.

    Accepts ``"default"``, a registry name, ``"owner/repo[@revision][:filename]"``, a local
    ``.safetensors`` file or a folder. ``arch``: the architecture (``TOKENIZER_ARCHS`` name)
    of a file that carries no config, when its shapes and name do not tell. Raises
    CheckpointNotFoundError when the file cannot be had (naming repo, file, revision and how to
    place it), CheckpointFormatError for files of the wrong format or kind, ValueError for
    names that mean nothing.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a str or path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    # local file or folder
    if isinstance(name_or_path, os.PathLike) or _looks_local(text):
        path = Path(text).expanduser()
        config_json = None
        if path.is_dir():
            config_json = _read_config_json(path / "config.json")
            path = _folder_checkpoint(path, kind)
        elif not path.exists():
            raise CheckpointNotFoundError(f"no such checkpoint file or folder: {path}")
        config, found = _config_for(path, kind, None, config_json, arch)
        return ResolvedCheckpoint(path, None, config, str(path.resolve()), arch=found)
    # registry name
    if text == "default" or text in _REGISTRY:
        spec = get_spec(text, kind)
        if spec.embedded:
            path = _embedded_path(spec)
        else:
            path = _download(spec.repo_id, spec.filename, spec.revision, spec.name, hint=_release_hint(spec))
        config, found = _config_for(path, kind, spec, None, arch)
        return ResolvedCheckpoint(path, spec, config, spec.name, spec.repo_id, spec.revision, found)
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
    path = _download(repo_id, filename, revision, text, hint=_release_hint(spec) if spec else "")
    config_json = None
    if spec is None:
        try:
            config_json = _read_config_json(_download(repo_id, "config.json", revision, text))
        except CheckpointNotFoundError:
            config_json = None  # the config may come from the checkpoint metadata instead
    config, found = _config_for(path, kind, spec, config_json, arch)
    source = f"{repo_id}{'@' + revision if revision else ''}:{filename}"
    return ResolvedCheckpoint(path, spec, config, source, repo_id, revision, found)


def _release_hint(spec: PretrainedSpec) -> str:
    """How to get an official file that the Hub does not have."""
    if spec.download_page is None:
        return ""
    if spec.kind == "generator":
        return (
            f" The official README ({spec.download_page}) publishes {spec.filename} and {spec.layout_bank} outside "
            f"the Hub: download them, with the tokenizer file of {spec.tokenizer}, into one folder and pass that "
            f"folder: gpstoken.load_generator('path/to/folder') (or generate(..., model='path/to/folder'))."
        )
    return (
        f" The official README ({spec.download_page}) publishes {spec.filename} outside the Hub: download it and "
        f"pass its path: gpstoken.load_tokenizer('path/to/{spec.filename}')."
    )


# ---------------------------------------------------------------------- portable ids
@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's bytes (cached while its size and mtime stay the same)."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def portable_id(model: Any) -> tuple[str, str]:
    """``(id, sha256)`` of a loaded :class:`~gpstoken.Tokenizer` / :class:`~gpstoken.Generator`.

    id: the registry name, or ``owner/repo[@revision]:file`` for Hub files (both work on any
    machine), or the absolute path of a local file; sha256: the weights file's content hash, to
    check that another machine resolves the id to the same weights.
    """
    resolved = getattr(model, "resolved", None)
    if not isinstance(resolved, ResolvedCheckpoint):
        raise TypeError(f"model: expected a Tokenizer or Generator loaded by gpstoken, got {type(model).__name__}")
    return resolved.source, file_digest(resolved.path)


# ---------------------------------------------------------------------- save_pretrained / push_to_hub
def model_card(kind: str, name: str, about: str) -> str:
    """A short README.md model card for a folder written by ``save_pretrained``."""
    loader = "load_tokenizer" if kind == "tokenizer" else "load_generator"
    return (
        f"---\nlibrary_name: gpstoken\ntags:\n- gpstoken\n- image-tokenizer\n---\n\n"
        f"# GPSToken {kind} (from `{name}`)\n\n{about}.\n\n"
        f"Written by gpstoken's `save_pretrained`: `model.safetensors` holds the weights (official key names) "
        f"and the config in its metadata; `config.json` repeats the config.\n\n"
        f"```python\nimport gpstoken\nmodel = gpstoken.{loader}(\"owner/repo\")  # or the local folder\n```\n\n"
        f"GPSToken: Gaussian Parameterized Spatially-adaptive Tokenization (Zhang et al., 2025, "
        f"arXiv:2509.01109); official code: https://github.com/xtudbxk/GPSToken\n"
    )


def save_folder(folder: str | os.PathLike, state: Mapping[str, torch.Tensor], config: Mapping[str, Any], kind: str,
                extra_metadata: Mapping[str, Any], card: str) -> Path:
    """Write ``model.safetensors`` + ``config.json`` + ``README.md`` into ``folder`` (created);
    each file is written atomically. Returns the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"folder: {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, folder / "model.safetensors", config, kind, extra_metadata)
    write_text(folder / "config.json", json.dumps(dict(config), indent=2) + "\n")
    write_text(folder / "README.md", card)
    return folder


def check_repo_id(repo_id: Any, name: str = "repo_id") -> None:
    """ValueError naming ``name`` unless ``repo_id`` looks like a Hub repo id ``owner/name``."""
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
        raise ValueError(f"{name}: expected a Hub repo id 'owner/name', got {repo_id!r}")


def push_folder(save: Any, repo_id: str, *, private: bool | None, token: str | None, commit_message: str) -> str:
    """Save with ``save(folder)`` into a temporary folder and upload it to ``repo_id`` (created
    when missing) with ``huggingface_hub.HfApi``; returns the commit URL."""
    import tempfile

    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    if hub_offline():
        raise RuntimeError(f"push_to_hub({repo_id!r}): HF_HUB_OFFLINE is set; unset it to upload "
                           "(or save_pretrained(folder) and upload the folder later)")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="gpstoken-push-") as tmp:
        save(tmp)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
