"""``save_pretrained`` folders (weights + ``config.json`` + model card) and ``push_to_hub``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..checkpoint import save_checkpoint
from ..io import write_text
from .download import check_repo_id, hub_offline


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
