"""Name resolution: ``"default"``, a registry name, a Hub id or a local file / folder ->
a :class:`ResolvedCheckpoint` (the file on disk, its registry entry and its config)."""
from __future__ import annotations

import importlib.resources
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import (
    KINDS,
    PICKLE_SUFFIXES,
    CheckpointFormatError,
    CheckpointNotFoundError,
    checkpoint_config,
    read_metadata,
)
from ..tokens import FORMAT as TOKEN_FORMAT
from .arch import _arch_config, infer_tokenizer_arch
from .download import _download, parse_hub_id
from .registry import _REGISTRY, PretrainedSpec, close_names, get_spec, list_pretrained

_WEIGHTS_PACKAGE = "gpstoken"
_WEIGHTS_FOLDER = "weights"


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a checkpoint is on disk, where it came from, and its config.

    config: from the file's gpstoken metadata, else a ``config.json`` next to it (folders and
    Hub repos), else the registry entry's (or the explicit / recognised) architecture; None
    when nothing says. source: what it was resolved from, for messages: the registry name,
    ``owner/repo[@rev]:file`` for Hub files, the absolute path of local files (the id gpstoken
    records is :func:`gpstoken.hub.portable.model_id`). repo_id/revision: the Hub repo it was
    fetched from.
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
    if text.lower().endswith(f".{TOKEN_FORMAT}"):
        raise ValueError(f"name_or_path: {text} is a token file, not a model checkpoint; read it with "
                         "gpstoken.GPSTokens.load() or decode it with gpstoken.decode(), and give a model here: "
                         "'default', a registry name, a Hub id or a .safetensors file")
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
        if spec.repo_id is None:  # embedded in the package
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
            f"name_or_path: {text!r} is not a registry name{close_names(text, kind)} ({list_pretrained(kind)} or "
            "'default'), a Hub id 'owner/repo[@revision][:filename]', nor an existing local file or folder"
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
    entry = next((s for s in candidates if s.filename == filename), None)
    path = _download(repo_id, filename, revision, text, hint=_release_hint(entry) if entry else "")
    config_json = None
    if entry is None:
        try:
            config_json = _read_config_json(_download(repo_id, "config.json", revision, text))
        except CheckpointNotFoundError:
            config_json = None  # the config may come from the checkpoint metadata instead
    config, found = _config_for(path, kind, entry, config_json, arch)
    source = f"{repo_id}{'@' + revision if revision else ''}:{filename}"
    return ResolvedCheckpoint(path, entry, config, source, repo_id, revision, found)


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
