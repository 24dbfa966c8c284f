"""Pretrained checkpoints: the registry, name / Hub-id resolution and download, conversion of
official files, portable ids, and ``save_pretrained`` / ``push_to_hub`` folders.

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

Modules: :mod:`~gpstoken.hub.registry` (typed entries), :mod:`~gpstoken.hub.download` (Hub ids,
cache, downloads), :mod:`~gpstoken.hub.resolve` (names -> files and configs),
:mod:`~gpstoken.hub.arch` (architecture of config-less files), :mod:`~gpstoken.hub.convert`
(pickle -> safetensors), :mod:`~gpstoken.hub.portable` (portable ids, file hashes),
:mod:`~gpstoken.hub.publish` (save_pretrained folders, push_to_hub).
"""
from __future__ import annotations

from ..checkpoint import (  # noqa: F401  (the error types and file helpers are part of this package's interface)
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
from .arch import arch_from_shapes, infer_tokenizer_arch
from .convert import convert_checkpoint
from .download import check_repo_id, hub_cache_dir, hub_offline, parse_hub_id
from .portable import file_digest, model_id, portable_id
from .publish import model_card, push_folder, save_folder
from .registry import (
    DEFAULTS,
    GENERATOR_LATENT_MEAN,
    GENERATOR_LATENT_STD,
    OFFICIAL_GENERATOR,
    OFFICIAL_PAGE,
    OFFICIAL_REPO,
    PretrainedSpec,
    get_spec,
    list_pretrained,
    register,
    spec_of_arch,
)
from .resolve import ResolvedCheckpoint, resolve

__all__ = [
    "DEFAULTS", "GENERATOR_LATENT_MEAN", "GENERATOR_LATENT_STD", "KINDS", "OFFICIAL_GENERATOR", "OFFICIAL_PAGE",
    "OFFICIAL_REPO", "PICKLE_SUFFIXES", "CheckpointFormatError", "CheckpointMismatchError", "CheckpointNotFoundError",
    "GeneratorConfig", "PretrainedSpec", "ResolvedCheckpoint", "arch_from_shapes", "check_repo_id",
    "checkpoint_config", "convert_checkpoint", "file_digest", "get_spec", "hub_cache_dir", "hub_offline",
    "infer_tokenizer_arch", "list_pretrained", "load_safetensors", "model_card", "model_id", "parse_hub_id",
    "portable_id", "push_folder", "read_metadata", "register", "resolve", "save_checkpoint", "save_folder",
    "spec_of_arch",
]
