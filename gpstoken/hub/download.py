"""Hub ids (``owner/repo[@revision][:filename]``), the Hugging Face cache folder, offline mode,
and downloads through ``huggingface_hub.hf_hub_download`` with errors that say how to place a
file locally. ``HF_HUB_OFFLINE``, ``HF_HOME`` and ``HF_HUB_CACHE`` are read at each call."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

from ..checkpoint import CheckpointNotFoundError

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


def check_repo_id(repo_id: Any, name: str = "repo_id") -> None:
    """ValueError naming ``name`` unless ``repo_id`` looks like a Hub repo id ``owner/name``."""
    if not isinstance(repo_id, str) or not re.fullmatch(r"[\w.\-]+/[\w.\-]+", repo_id):
        raise ValueError(f"{name}: expected a Hub repo id 'owner/name', got {repo_id!r}")
