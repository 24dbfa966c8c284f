""".gpst files carry a portable model id and the checkpoint hash; decode only loads registry models by itself."""
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import gpstoken
from gpstoken import hub

WEIGHTS = Path(gpstoken.__file__).parent / "weights" / "gpstoken_tiny.safetensors"


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    return torch.rand(1, 3, 48, 40) * 2 - 1


def test_default_tokens_record_the_registry_name_and_hash(tmp_path, image):
    tokens = gpstoken.encode(image, 16)
    assert tokens.model == "gpstoken-tiny" and tokens.model_hash == hub.file_digest(WEIGHTS)
    path = tokens.save(tmp_path / "x.gpst")
    loaded = gpstoken.GPSTokens.load(path)
    assert loaded.model == "gpstoken-tiny" and loaded.model_hash == tokens.model_hash
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = gpstoken.decode(loaded)  # a registry model: loaded by itself, hash matches: no warning
    assert out.size == (40, 48)


def test_a_local_checkpoint_is_recorded_by_file_name_and_must_be_named_to_decode(tmp_path, image):
    local = tmp_path / "deep" / "folder" / "mine.safetensors"
    local.parent.mkdir(parents=True)
    shutil.copy(WEIGHTS, local)
    tokens = gpstoken.encode(image, 16, model=str(local))
    assert tokens.model == "mine.safetensors" and str(tmp_path) not in tokens.model
    loaded = gpstoken.GPSTokens.load(tokens.save(tmp_path / "x.gpst"))
    with pytest.raises(ValueError, match=r"made by 'mine.safetensors', which is not a registered model; pass model="):
        gpstoken.decode(loaded)
    assert gpstoken.decode(loaded, model=str(local)).size == (40, 48)


def test_a_hub_id_in_a_file_is_not_downloaded(tmp_path, image, monkeypatch):
    tokens = gpstoken.encode(image, 16)
    foreign = gpstoken.GPSTokens(tokens.geometry, tokens.features, tokens.image_size, tokens.layout,
                                 "someone/evil:model.safetensors", model_hash="0" * 64)
    loaded = gpstoken.GPSTokens.load(foreign.save(tmp_path / "x.gpst"))
    monkeypatch.setattr(hub, "resolve", lambda *a, **k: pytest.fail("decode tried to resolve the file's model"))
    with pytest.raises(ValueError, match="someone/evil:model.safetensors"):
        gpstoken.decode(loaded)


def test_hash_mismatch_warns(tmp_path, image):
    tokens = gpstoken.encode(image, 16)
    other = gpstoken.GPSTokens(tokens.geometry, tokens.features, tokens.image_size, tokens.layout,
                               tokens.model, model_hash="f" * 64)
    with pytest.warns(UserWarning, match=r"sha256 ffffffffffff\.\.\..*another checkpoint"):
        gpstoken.decode(other)


def test_files_without_a_hash_still_load(tmp_path, image):
    tokens = gpstoken.encode(image, 16)
    old = gpstoken.GPSTokens(tokens.geometry, tokens.features, tokens.image_size, tokens.layout, tokens.model)
    loaded = gpstoken.GPSTokens.load(old.save(tmp_path / "old.gpst"))
    assert loaded.model_hash == ""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gpstoken.decode(loaded)
