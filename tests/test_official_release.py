"""The official weights end to end, on a fake official release.

The registry's architectures are pointed at small configs (the official small tokenizer fixture
stands in for M128, whose weights have the same keys), and the files are laid out the way users
get them: a Hugging Face cache snapshot of ``xtudbxk/GPSToken`` (read by the real
``hf_hub_download`` with ``HF_HUB_OFFLINE=1``) and a folder like the official ``weights/``
(``generator.safetensors`` + ``initg.pickle`` + ``gpstoken_m128.safetensors``), all with no
gpstoken metadata, no config file and extra keys the models do not have.
"""
from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import load_file, save_file

import gpstoken
from gpstoken import checkpoint, hub, pipeline
from gpstoken.layout import Layout
from gpstoken.models.configs import SIT_ARCHS, TOKENIZER_ARCHS, DecoderConfig, SiTConfig, TokenizerConfig
from gpstoken.models.sit import SiT
from gpstoken.models.tokenizer import GPSTokenizer

SHA = "1111111111111111111111111111111111111111"
EXTRA_KEY = "loss.discriminator.main.0.weight"  # an official file may hold keys the model has not
SMALL = TokenizerConfig(gpsenc_n=2, gpsenc_c=64, gps_num=32, decoder=DecoderConfig(ch=32, num_res_blocks=1))
SMALL_SIT = SiTConfig(input_size=(16, 1), hidden_size=64, depth=2, num_heads=4, num_classes=1000)
BANK_CLASSES = (0, 207)


@pytest.fixture
def small_registry(monkeypatch):
    """The official architectures, small; the load caches emptied before and after."""
    monkeypatch.setitem(TOKENIZER_ARCHS, "gpstoken-s64", dataclasses.replace(SMALL, gps_num=64))
    monkeypatch.setitem(TOKENIZER_ARCHS, "gpstoken-m128", dataclasses.replace(SMALL, gps_num=128))
    monkeypatch.setitem(TOKENIZER_ARCHS, "gpstoken-l256", dataclasses.replace(
        SMALL, gps_num=256, gps_c=32, decoder=dataclasses.replace(SMALL.decoder, z_channels=32)))
    monkeypatch.delitem(TOKENIZER_ARCHS, "gpstoken-fixture-small")
    monkeypatch.setitem(SIT_ARCHS, "SiT-XL/2-gs", SMALL_SIT)
    for cached in (pipeline.loading._load_tokenizer_cached, pipeline.loading._load_generator_cached):
        cached.cache_clear()
    yield
    for cached in (pipeline.loading._load_tokenizer_cached, pipeline.loading._load_generator_cached):
        cached.cache_clear()


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def _official_tokenizer(official: Path) -> dict:
    state = load_file(str(official / "tokenizer" / "tokenizer_small.safetensors"))
    return {**state, EXTRA_KEY: torch.zeros(4)}


def _l256_tokenizer() -> dict:
    torch.manual_seed(0)
    return {**GPSTokenizer(TOKENIZER_ARCHS["gpstoken-l256"]).state_dict(), EXTRA_KEY: torch.zeros(4)}


def _official_generator() -> dict:
    torch.manual_seed(0)
    sit = SiT(SMALL_SIT)
    with torch.no_grad():  # the official init zeroes the output layer: make the texture depend on the weights
        sit.final_layer.linear.weight.normal_(0, 0.02)
    ema = {f"ema_model.{k}": v.clone() for k, v in sit.state_dict().items()}
    return {**ema, "model.pos_embed": torch.zeros(1, 16, 64)}  # raw training weights beside the EMA ones


def _initg() -> dict:
    """class id -> list of [N, 5] layouts (official initg.pickle structure)."""
    rng = np.random.default_rng(0)

    def layout():
        g = np.zeros((16, 5), np.float32)
        g[:, :2] = rng.uniform(0.05, 0.3, (16, 2))
        g[:, 3:] = rng.uniform(-0.9, 0.9, (16, 2))
        return g

    return {c: [layout() for _ in range(3)] for c in BANK_CLASSES}


def _write_release(folder: Path, official: Path, files: tuple[str, ...]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    writers = {
        "gpstoken_m128.safetensors": lambda p: save_file(_official_tokenizer(official), str(p)),
        "gpstoken_s64.safetensors": lambda p: save_file(_official_tokenizer(official), str(p)),
        "gpstoken_l256.safetensors": lambda p: save_file(_l256_tokenizer(), str(p)),
        "generator.safetensors": lambda p: save_file(_official_generator(), str(p)),
        "initg.pickle": lambda p: p.write_bytes(pickle.dumps(_initg())),
    }
    for name in files:
        writers[name](folder / name)
    return folder


def _snapshot(cache: Path, repo_id: str, source: Path) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / SHA
    shutil.copytree(source, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return snap


@pytest.fixture
def release(tmp_path, official, small_registry, offline_cache):
    """(official weights folder, HF cache snapshot of xtudbxk/GPSToken with the same files)."""
    folder = _write_release(tmp_path / "weights", official, (
        "gpstoken_m128.safetensors", "gpstoken_s64.safetensors", "gpstoken_l256.safetensors",
        "generator.safetensors", "initg.pickle"))
    return folder, _snapshot(offline_cache, hub.OFFICIAL_REPO, folder)


@pytest.fixture(scope="module")
def cases(official):
    c = load_file(str(official / "tokenizer" / "cases.safetensors"))
    return {k: c[f"b256/{k}"][:2] for k in ("images", "init_gpscodes", "regions", "gpscodes", "recon")}


# ---------------------------------------------------------------------------- tokenizers
def test_official_tokenizer_file_gives_the_official_numbers_by_name_hub_id_and_path(release, cases):
    folder, snap = release
    layout = Layout(cases["init_gpscodes"], cases["regions"], (256, 256), (1, 1))
    for source in ("gpstoken-m128", "xtudbxk/GPSToken:gpstoken_m128.safetensors",
                   str(folder / "gpstoken_m128.safetensors")):
        with pytest.warns(UserWarning, match=f"ignoring 1 keys the model does not have: {EXTRA_KEY}"):
            tok = gpstoken.load_tokenizer(source, device="cpu")
        assert tok.config.gps_num == 128 and not tok.decode_per_patch
        tokens = tok.encode(cases["images"], layout=layout)
        torch.testing.assert_close(tokens.as_array(), cases["gpscodes"], atol=1e-5, rtol=0)
        torch.testing.assert_close(tok.decode(tokens), cases["recon"].clamp(-1, 1), atol=1e-4, rtol=0)
    assert hub.portable_id(tok)[0] == "gpstoken_m128.safetensors"  # a local file: its name, never its path
    name_id, digest = hub.portable_id(gpstoken.load_tokenizer("gpstoken-m128", device="cpu"))
    assert name_id == "gpstoken-m128" and digest == hub.file_digest(folder / "gpstoken_m128.safetensors")
    assert Path(gpstoken.load_tokenizer("gpstoken-m128", device="cpu").resolved.path).is_relative_to(snap.parent)


def test_architecture_from_shapes_file_name_or_argument(release, tmp_path):
    folder, _ = release
    with pytest.warns(UserWarning, match="ignoring"):
        l256 = gpstoken.load_tokenizer(shutil.copy(folder / "gpstoken_l256.safetensors", tmp_path / "x.safetensors"),
                                       device="cpu")
    assert l256.config.gps_c == 32 and l256.decode_per_patch  # recognised from its shapes alone
    with pytest.warns(UserWarning, match="ignoring"):
        s64 = gpstoken.load_tokenizer(folder / "gpstoken_s64.safetensors", device="cpu")
    assert s64.config.gps_num == 64
    unnamed = shutil.copy(folder / "gpstoken_m128.safetensors", tmp_path / "finetuned.safetensors")
    with pytest.raises(ValueError, match=r"several architectures \['gpstoken-s64', 'gpstoken-m128'\].*arch="):
        gpstoken.load_tokenizer(unnamed, device="cpu")
    with pytest.warns(UserWarning, match="ignoring"):
        assert gpstoken.load_tokenizer(unnamed, arch="gpstoken-m128", device="cpu").config.gps_num == 128
    with pytest.raises(ValueError, match="arch: unknown tokenizer architecture 'm128'; choose one of"):
        gpstoken.load_tokenizer(unnamed, arch="m128", device="cpu")


def test_full_size_architectures_from_the_official_manifest(official):
    """The real S64/M128/L256 (built on the meta device) against the official key/shape lists."""
    manifest = json.loads((official / "manifest.json").read_text())

    def shapes(entry):
        return {e["key"]: tuple(e["shape"]) for e in manifest[entry]["state_dict"]} | {EXTRA_KEY: (4,)}

    assert hub.arch_from_shapes(shapes("gpstoken_l256"), "anything.safetensors") == "gpstoken-l256"
    assert hub.arch_from_shapes(shapes("gpstoken_m128"), "gpstoken_m128.safetensors") == "gpstoken-m128"
    assert hub.arch_from_shapes(shapes("gpstoken_s64"), "weights/gpstoken_s64.safetensors") == "gpstoken-s64"
    with pytest.raises(ValueError, match=r"\['gpstoken-s64', 'gpstoken-m128'\]"):
        hub.arch_from_shapes(shapes("gpstoken_m128"), "model.safetensors")
    with pytest.raises(checkpoint.CheckpointFormatError, match="not a GPSToken tokenizer"):
        hub.arch_from_shapes(shapes("sit_xl_2_gs"), "generator.safetensors")


def test_bad_tokenizer_files_get_one_clear_message_each(release, tmp_path):
    folder, _ = release
    state = load_file(str(folder / "gpstoken_m128.safetensors"))
    broken = dict(state)
    broken.pop("to_gps.1.weight")
    save_file(broken, str(tmp_path / "gpstoken_m128.safetensors"))
    with pytest.raises(checkpoint.CheckpointFormatError, match="not a GPSToken tokenizer of a known architecture"):
        gpstoken.load_tokenizer(tmp_path / "gpstoken_m128.safetensors", device="cpu")
    with pytest.raises(checkpoint.CheckpointMismatchError, match="1 missing: to_gps.1.weight"):
        gpstoken.load_tokenizer(tmp_path / "gpstoken_m128.safetensors", arch="gpstoken-m128", device="cpu")
    nan = dict(state, **{"to_gps.1.weight": torch.full_like(state["to_gps.1.weight"], float("nan"))})
    save_file(nan, str(tmp_path / "gpstoken_m128.safetensors"))
    with pytest.raises(checkpoint.CheckpointFormatError, match="weight 'to_gps.1.weight' holds inf/nan"), \
            pytest.warns(UserWarning, match="ignoring"):
        gpstoken.load_tokenizer(tmp_path / "gpstoken_m128.safetensors", device="cpu")
    with pytest.raises(checkpoint.CheckpointFormatError, match="not a GPSToken tokenizer"):
        gpstoken.load_tokenizer(folder / "generator.safetensors", device="cpu")
    with pytest.raises(checkpoint.CheckpointFormatError, match="only loads safetensors"):
        gpstoken.load_tokenizer(folder / "initg.pickle", device="cpu")


# ---------------------------------------------------------------------------- generator
def _is_bank_layout(geometry: torch.Tensor, layouts: list[np.ndarray]) -> bool:
    return any(torch.equal(geometry, torch.from_numpy(g)) for g in layouts)


def test_official_generator_folder_generates_from_the_bank(release):
    folder, _ = release
    with pytest.warns(UserWarning, match="ignoring"):
        gen = gpstoken.load_generator(folder, device="cpu")
    assert gen.sampling == hub.OFFICIAL_GENERATOR.sampling and gen.class_names[207] == "golden retriever"
    assert gen.tokenizer.resolved.path == folder / "gpstoken_m128.safetensors"  # the one beside it
    assert gen.layout_bank.classes == list(BANK_CLASSES)
    result = gen.generate("golden retriever", n=2, seed=0, steps=3, sampler="euler", progress=False)
    bank = _initg()[207]
    drawn = result.tokens.layout.geometry
    assert all(_is_bank_layout(g, bank) for g in drawn)  # stage 1 = the bank's layouts for class 207
    assert not torch.equal(drawn[0], drawn[1])  # drawn without replacement, like the official pop()
    assert len(result.images) == 2 and result.images[0].size == (256, 256)
    again = gen.generate(207, n=2, seed=0, steps=3, sampler="euler", progress=False)
    torch.testing.assert_close(again.tokens.geometry, result.tokens.geometry, atol=0, rtol=0)
    with pytest.raises(ValueError, match="class 3 has no layouts in the layout bank"):
        gen.generate(3, steps=2, progress=False)


def test_generator_file_with_an_explicit_bank_and_by_registry_name(release, tmp_path):
    folder, snap = release
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "generator.safetensors", alone)
    with pytest.warns(UserWarning, match="ignoring"):
        gen = gpstoken.load_generator(alone / "generator.safetensors", layout_bank=folder / "initg.pickle",
                                      tokenizer=folder / "gpstoken_m128.safetensors", device="cpu")
    assert gen.layout_bank.classes == list(BANK_CLASSES)
    with pytest.warns(UserWarning, match="ignoring"):
        by_name = gpstoken.load_generator("gpstoken-sit-xl", device="cpu")
    assert by_name.tokenizer.name == "gpstoken-m128" and by_name.layout_bank is not None
    out = gpstoken.generate(207, seed=1, steps=2, sampler="euler", model=by_name, progress=False)
    assert out[0].size == (256, 256)


def test_generate_uses_the_registered_sampling_defaults(release, monkeypatch):
    folder, _ = release
    with pytest.warns(UserWarning, match="ignoring"):
        gen = gpstoken.load_generator(folder, device="cpu")
    seen = {}

    def fake_sample(velocity, noise, *, method, steps, **kw):
        seen.update(method=method, steps=steps)
        return torch.zeros_like(noise)

    def fake_cfg(velocity, scale, *, interval):
        seen.update(scale=scale, interval=interval)
        return velocity

    monkeypatch.setattr(pipeline.generator, "sample", fake_sample)
    monkeypatch.setattr(pipeline.generator, "cfg_velocity", fake_cfg)
    gen.generate(0, seed=0, progress=False)
    assert seen == {"method": "sde", "steps": 250, "scale": 1.5, "interval": (0.2, 1.0)}
    gpstoken.generate(0, seed=0, guidance_interval=(0.1, 0.9), cfg_scale=4.0, steps=7, model=gen, progress=False)
    assert seen == {"method": "sde", "steps": 7, "scale": 4.0, "interval": (0.1, 0.9)}
    with pytest.raises(ValueError, match="guidance_interval: need 0 <= low <= high <= 1"):
        gen.generate(0, guidance_interval=(200, 1000), progress=False)


def test_generator_bad_inputs(release, tmp_path, offline_cache):
    folder, _ = release
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "generator.safetensors", alone)
    shutil.rmtree(offline_cache / "models--xtudbxk--GPSToken")
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="its tokenizer 'gpstoken-m128' cannot be found.*"
                                                                  "tokenizer="):
        gpstoken.load_generator(alone, device="cpu")
    with pytest.raises(checkpoint.CheckpointNotFoundError) as info:
        gpstoken.load_generator("gpstoken-sit-xl", device="cpu")
    assert hub.OFFICIAL_PAGE in str(info.value) and "load_generator('path/to/folder')" in str(info.value)
    with pytest.raises(ValueError, match="class_id: 1000 is out of range; generator .* has 1000 classes"), \
            pytest.warns(UserWarning):
        gpstoken.generate(1000, model=gpstoken.load_generator(folder, device="cpu"), progress=False)


def test_imagenet_class_ids_on_the_default_generator_say_where_they_live():
    with pytest.raises(ValueError) as info:
        gpstoken.generate(class_id=207, progress=False)
    msg = str(info.value)
    assert "16 classes (0 astronaut, 1 brick" in msg and 'model="gpstoken-sit-xl"' in msg
    with pytest.raises(ValueError, match="'golden retriever' is not a class name of this generator"):
        gpstoken.generate(class_id="golden retriever", progress=False)


# ---------------------------------------------------------------------------- save / push
def test_save_pretrained_round_trips_by_folder_and_hub_id(release, tmp_path, offline_cache):
    folder, _ = release
    with pytest.warns(UserWarning, match="ignoring"):
        gen = gpstoken.load_generator(folder, device="cpu")
    saved = gen.save_pretrained(tmp_path / "ft")
    assert sorted(p.name for p in saved.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "tokenizer.safetensors"]
    assert json.loads((saved / "config.json").read_text())["sampling"]["steps"] == 250
    again = gpstoken.load_generator(saved, device="cpu")
    a = gen.generate(207, seed=5, steps=2, sampler="euler", progress=False)
    b = again.generate(207, seed=5, steps=2, sampler="euler", progress=False)
    torch.testing.assert_close(b.tokens.as_array(), a.tokens.as_array(), atol=0, rtol=0)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    _snapshot(offline_cache, "me/finetuned", saved)
    from_hub = gpstoken.load_generator("me/finetuned", device="cpu")
    assert from_hub.tokenizer.resolved.source == "me/finetuned@main:tokenizer.safetensors"
    tok_folder = gen.tokenizer.save_pretrained(tmp_path / "tok")
    _snapshot(offline_cache, "me/tok", tok_folder)
    tok = gpstoken.load_tokenizer("me/tok", device="cpu")
    for k, v in gen.tokenizer.model.state_dict().items():
        assert torch.equal(tok.model.state_dict()[k], v), k
    assert "load_tokenizer" in (tok_folder / "README.md").read_text()


def test_push_to_hub_creates_the_repo_and_uploads_the_saved_folder(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))

    def upload(self, *, repo_id, folder_path, commit_message):
        calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return "https://huggingface.co/me/tiny/commit/abc"

    monkeypatch.setattr(HfApi, "upload_folder", upload)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tok = gpstoken.load_tokenizer("default", device="cpu")
    assert tok.push_to_hub("me/tiny", private=True).endswith("/commit/abc")
    assert calls == [("create", "me/tiny", {"private": True, "exist_ok": True}),
                     ("upload", "me/tiny", ["README.md", "config.json", "model.safetensors"])]
    with pytest.raises(ValueError, match="repo_id: expected a Hub repo id 'owner/name'"):
        tok.push_to_hub("not a repo")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set"):
        tok.push_to_hub("me/tiny")


def test_official_generator_yaml_as_config_json():
    """An optional config.json beside generator.safetensors may be the official
    configs/gpstoken_generator.yaml as JSON: its SiT settings and latent stats are used."""
    official_yaml = {
        "pretrained_gpstoken_means": [0.5] * 21, "pretrained_gpstoken_stds": [2.0] * 21,
        "transport": {"path_type": "Linear", "prediction": "velocity", "loss_weight": None},
        "model": {"name": "SiT-XL/2-gs", "latent_size": 128, "num_classes": 1000, "in_channels": 21},
        "gpstoken": {"gpsconfig": {"gps_c": 16, "gps_num": 128}},
    }
    base = hub.OFFICIAL_GENERATOR.generator_config()
    config = checkpoint.GeneratorConfig.from_official(official_yaml, base)
    assert config.latent_mean == (0.5,) * 21 and config.latent_std == (2.0,) * 21
    assert config.texture == SIT_ARCHS["SiT-XL/2-gs"] and config.sampling == base.sampling
    assert config.class_names[207] == "golden retriever" and config.tokenizer == "gpstoken-m128"
    with pytest.raises(checkpoint.CheckpointFormatError, match="pretrained_gpstoken_stds must be a list of 21"):
        checkpoint.GeneratorConfig.from_official({**official_yaml, "pretrained_gpstoken_stds": [1.0]}, base)
