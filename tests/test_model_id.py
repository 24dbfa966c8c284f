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


def test_model_id_rules():
    """One rule (hub.model_id): registry name, Hub id with its revision, or the bare file name."""
    spec = hub.get_spec("gpstoken-m128")
    snap = Path("/cache/models--xtudbxk--GPSToken/snapshots/abc/gpstoken_m128.safetensors")
    by_name = hub.ResolvedCheckpoint(snap, spec, None, "gpstoken-m128", spec.repo_id, spec.revision)
    assert hub.model_id(by_name) == "gpstoken-m128"
    by_hub_id = hub.ResolvedCheckpoint(snap, spec, None, "xtudbxk/GPSToken:gpstoken_m128.safetensors", spec.repo_id)
    assert hub.model_id(by_hub_id) == "gpstoken-m128"  # the registry entry's file at its revision
    pinned = hub.ResolvedCheckpoint(snap, spec, None, "xtudbxk/GPSToken@v2:gpstoken_m128.safetensors",
                                    spec.repo_id, "v2")
    assert hub.model_id(pinned) == "xtudbxk/GPSToken@v2:gpstoken_m128.safetensors"  # the name would lose v2
    other = hub.ResolvedCheckpoint(snap, None, None, "me/tok:sub/w.safetensors", "me/tok")
    assert hub.model_id(other) == "me/tok:sub/w.safetensors"
    local = hub.ResolvedCheckpoint(Path("/home/me/runs/7/export.safetensors"), None, None,
                                   "/home/me/runs/7/export.safetensors")
    assert hub.model_id(local) == "export.safetensors"
    with pytest.raises(TypeError, match="model: expected a Tokenizer or Generator"):
        hub.portable_id("gpstoken-tiny")


def test_gpst_manifest_and_eval_record_the_same_portable_id(tmp_path):
    """A local checkpoint is recorded by its file name and hash, never its folder, in a .gpst file,
    a `gpstoken tokenize` manifest and a `gpstoken eval` report."""
    import json

    from PIL import Image

    from gpstoken.evaluate import evaluate
    from gpstoken.pretokenize import tokenize

    local = tmp_path / "deep" / "mine.safetensors"
    local.parent.mkdir()
    shutil.copy(WEIGHTS, local)
    tok = gpstoken.load_tokenizer(local, device="cpu")
    expected = ("mine.safetensors", hub.file_digest(WEIGHTS))
    assert hub.portable_id(tok) == expected
    photos = tmp_path / "photos"
    photos.mkdir()
    torch.manual_seed(0)
    Image.fromarray((torch.rand(40, 48, 3) * 255).byte().numpy()).save(photos / "a.png")
    tokens = gpstoken.GPSTokens.load(tok.encode(Image.open(photos / "a.png"), 16).save(tmp_path / "a.gpst"))
    assert (tokens.model, tokens.model_hash) == expected
    tokenize(photos, tmp_path / "tok", 16, model=str(local), size=32, batch_size=1, num_workers=0,
             progress=False, device="cpu")
    manifest = json.loads((tmp_path / "tok" / "manifest.json").read_text())
    assert (manifest["model"], manifest["model_sha256"]) == expected
    report = evaluate(photos, [str(local)], [16], out=tmp_path / "eval", size=32, batch_size=1, num_workers=0,
                      device="cpu", fid_features=lambda x: x.float().flatten(1)[:, :4], progress=False)
    saved = json.loads((tmp_path / "eval" / "eval.json").read_text())
    for r in (report, saved):
        assert (r["models"], r["model_sha256"]) == ([expected[0]], [expected[1]])
        assert r["results"][0]["model"] == expected[0]
    assert str(local.parent) not in json.dumps(saved) + json.dumps(manifest)
