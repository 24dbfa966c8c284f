"""Checkpoint registry, Hub resolution through a fake local cache, safetensors and conversion."""
import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from gpstoken import checkpoint, hub

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline (as at import time and in the env)."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def _snapshot(cache: Path, repo_id: str, files: dict, revision: str = "main", sha: str = SHA) -> Path:
    """Lay files out like huggingface_hub's cache: models--o--r/{snapshots/<sha>/f, refs/<rev>}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(sha)
    for name, writer in files.items():
        writer(snap / name)
    return snap


def _ckpt(config=None, kind="tokenizer"):
    def write(path):
        hub.save_checkpoint({"w": torch.arange(4.0)}, path, config or {"arch": "x"}, kind)
    return write


# ---------------------------------------------------------------------------- registry
def test_registry_entries():
    assert {"gpstoken-s64", "gpstoken-m128", "gpstoken-l256", "gpstoken-tiny"} <= set(hub.list_pretrained("tokenizer"))
    sit = hub.get_spec("gpstoken-sit-xl", "generator")
    assert sit.tokenizer == "gpstoken-m128" and sit.layout_bank == "initg.pickle"
    assert len(sit.latent_mean) == 21 and len(sit.latent_std) == 21
    assert (sit.sampling.steps, sit.sampling.sampler, sit.sampling.cfg_scale) == (250, "sde", 1.5)
    assert sit.sampling.guidance_interval == (0.2, 1.0)  # official guidance_low=200, guidance_high=1000
    config = sit.generator_config()
    assert config.n_tokens == 128 and len(config.class_names) == 1000 and config.class_names[207] == "golden retriever"
    assert hub.get_spec("gpstoken-l256").arch_config()["gps_c"] == 32
    assert hub.get_spec("default", "tokenizer").name == hub.DEFAULTS["tokenizer"]
    with pytest.raises(ValueError, match="is a generator checkpoint, not a tokenizer"):
        hub.get_spec("gpstoken-sit-xl", "tokenizer")
    with pytest.raises(ValueError, match="unknown pretrained checkpoint"):
        hub.get_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        hub.register(hub.get_spec("gpstoken-m128"))
    with pytest.raises(ValueError, match="unknown tokenizer architecture"):
        hub.PretrainedSpec("x", "tokenizer", "o/r", "f.safetensors", arch="nope")


def test_parse_hub_id():
    assert hub.parse_hub_id("o/r") == ("o/r", None, None)
    assert hub.parse_hub_id("o/r@v1.0:sub/f.safetensors") == ("o/r", "v1.0", "sub/f.safetensors")
    assert hub.parse_hub_id("o/r:f.safetensors") == ("o/r", None, "f.safetensors")
    with pytest.raises(ValueError, match="owner/repo"):
        hub.parse_hub_id("not a repo")


# ---------------------------------------------------------------------------- Hub cache
def test_resolve_registry_name_from_offline_cache(hf_cache):
    _snapshot(hf_cache, "xtudbxk/GPSToken", {"gpstoken_m128.safetensors": _ckpt({"gps_num": 128})})
    r = hub.resolve("gpstoken-m128", "tokenizer")
    assert r.path.name == "gpstoken_m128.safetensors" and SHA in str(r.path)
    assert r.spec.name == "gpstoken-m128"
    assert r.config == {"gps_num": 128}  # the file's own metadata wins over the arch


def test_resolve_official_file_without_metadata_uses_the_arch(hf_cache):
    _snapshot(hf_cache, "xtudbxk/GPSToken",
              {"gpstoken_l256.safetensors": lambda p: save_file({"w": torch.zeros(1)}, str(p))})
    r = hub.resolve("xtudbxk/GPSToken:gpstoken_l256.safetensors")
    assert r.spec.name == "gpstoken-l256" and r.config["gps_num"] == 256


def test_resolve_repo_revision_filename(hf_cache):
    config = lambda p: p.write_text(json.dumps({"from": "config.json"}))  # noqa: E731
    _snapshot(hf_cache, "someone/tok", {"weights.safetensors": lambda p: save_file({"w": torch.zeros(1)}, str(p)),
                                        "config.json": config}, revision="v2")
    r = hub.resolve("someone/tok@v2:weights.safetensors")
    assert r.path.name == "weights.safetensors" and r.spec is None
    assert r.config == {"from": "config.json"}
    with pytest.raises(hub.CheckpointNotFoundError, match="revision main"):
        hub.resolve("someone/tok:weights.safetensors")


def test_offline_without_cache_names_repo_file_and_fix(hf_cache):
    with pytest.raises(hub.CheckpointNotFoundError) as info:
        hub.resolve("gpstoken-s64")
    msg = str(info.value)
    for part in ("xtudbxk/GPSToken", "gpstoken_s64.safetensors", "revision main", "HF_HUB_OFFLINE",
                 "hf download xtudbxk/GPSToken gpstoken_s64.safetensors", str(hf_cache)):
        assert part in msg
    assert isinstance(info.value, OSError)
    with pytest.raises(hub.CheckpointNotFoundError, match="revision abc.*--revision abc"):
        hub.resolve("o/r@abc:model.safetensors")


def test_repo_with_several_checkpoints_needs_a_file(hf_cache):
    with pytest.raises(ValueError, match="holds several tokenizers.*gpstoken_m128"):
        hub.resolve("xtudbxk/GPSToken")


def test_hf_hub_cache_env_wins(tmp_path, monkeypatch, hf_cache):
    other = tmp_path / "other"
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    _snapshot(other, "xtudbxk/GPSToken", {"gpstoken_m128.safetensors": _ckpt()})
    assert hub.hub_cache_dir() == other
    assert hub.resolve("gpstoken-m128").path.is_relative_to(other)


# ---------------------------------------------------------------------------- local paths
def test_resolve_local_file_and_folder(tmp_path):
    f = tmp_path / "a.safetensors"
    _ckpt({"k": 1})(f)
    r = hub.resolve(f)
    assert r.path == f and r.spec is None and r.config == {"k": 1}
    assert hub.resolve(str(f)).path == f
    folder = tmp_path / "snap"
    folder.mkdir()
    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"k": 2}))
    r = hub.resolve(folder)
    assert r.path == folder / "model.safetensors" and r.config == {"k": 2}
    save_file({"w": torch.zeros(1)}, str(folder / "other.safetensors"))
    assert hub.resolve(folder).path.name == "model.safetensors"  # preferred name among several
    (folder / "model.safetensors").unlink()
    save_file({"w": torch.zeros(1)}, str(folder / "third.safetensors"))
    with pytest.raises(hub.CheckpointFormatError, match="several checkpoints"):
        hub.resolve(folder)
    with pytest.raises(hub.CheckpointNotFoundError, match="no such checkpoint"):
        hub.resolve(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="not a registry name"):
        hub.resolve("no such thing")
    (tmp_path / "x.gpst").write_bytes(b"")
    for token_file in ("x.gpst", tmp_path / "x.gpst"):  # a token file, not a model
        with pytest.raises(ValueError, match=r"x\.gpst is a token file, not a model checkpoint; read it with"):
            hub.resolve(token_file)


def test_kind_recorded_in_the_file_is_checked(tmp_path):
    f = tmp_path / "g.safetensors"
    _ckpt(kind="generator")(f)
    with pytest.raises(hub.CheckpointFormatError, match="generator checkpoint, expected a tokenizer"):
        hub.resolve(f, "tokenizer")
    assert hub.resolve(f, "generator").path == f


def test_embedded_default_missing_is_a_clear_error(monkeypatch):
    spec = hub.PretrainedSpec("gpstoken-tiny", "tokenizer", None, "no_such_file.safetensors")
    monkeypatch.setitem(hub.registry._REGISTRY, "gpstoken-tiny", spec)
    with pytest.raises(hub.CheckpointNotFoundError, match="embedded checkpoint weights/no_such_file.safetensors"):
        hub.resolve("default", "tokenizer")


# ---------------------------------------------------------------------------- safetensors files
def test_save_and_load_checkpoint(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "b": torch.arange(5)}
    path = hub.save_checkpoint(sd, tmp_path / "c.safetensors", {"x": [1, 2]}, "generator", {"step": 7, "note": "hi"})
    loaded, meta = hub.load_safetensors(path)
    assert set(loaded) == set(sd) and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert meta["format"] == "gpstoken" and meta["kind"] == "generator" and meta["step"] == "7" and meta["note"] == "hi"
    assert hub.checkpoint_config(meta, "generator") == {"x": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]
    with pytest.raises(ValueError, match="kind"):
        hub.save_checkpoint(sd, tmp_path / "d.safetensors", {}, "vae")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(hub.CheckpointNotFoundError, match="not found"):
        hub.load_safetensors(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(hub.CheckpointFormatError, match="bad.safetensors is corrupt or not a safetensors file"):
        hub.load_safetensors(bad)
    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(1000)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(hub.CheckpointFormatError, match="truncated.safetensors is corrupt"):
        hub.load_safetensors(truncated)
    for name in ("model.pt", "model.safetensors"):  # pickles are recognised by content too
        p = tmp_path / "pk" / name
        p.parent.mkdir(exist_ok=True)
        torch.save({"w": torch.zeros(2)}, p)
        with pytest.raises(hub.CheckpointFormatError, match="only loads safetensors.*convert_checkpoint"):
            hub.load_safetensors(p)


def test_fit_state_dict_lists_problems_and_drops_extra_keys():
    expected = {f"k{i}": (2, 2) for i in range(8)}
    state = {k: torch.zeros(2, 2) for k in expected}
    assert checkpoint.fit_state_dict(expected, state).keys() == expected.keys()
    with pytest.warns(UserWarning, match="ignoring 1 keys the model does not have: extra"):
        fitted = checkpoint.fit_state_dict(expected, {**state, "extra": torch.zeros(1)}, name="tok.safetensors")
    assert "extra" not in fitted
    with pytest.raises(checkpoint.CheckpointMismatchError, match="1 unexpected: extra"):
        checkpoint.fit_state_dict(expected, {**state, "extra": torch.zeros(1)}, allow_extra=False)
    got = {f"k{i}": torch.zeros(2, 2) for i in range(1, 7)}
    got["k6"] = torch.zeros(3)
    with pytest.raises(hub.CheckpointMismatchError) as info:
        checkpoint.fit_state_dict(expected, got, name="tok.safetensors", show=1)
    msg = str(info.value)
    assert "tok.safetensors" in msg and "2 missing: k0, ... (1 more)" in msg
    assert "1 shape mismatch: k6: expected (2, 2), got (3,)" in msg
    bad = dict(state, k3=torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(checkpoint.CheckpointFormatError, match="weight 'k3' holds inf/nan"):
        checkpoint.fit_state_dict(expected, bad, name="tok.safetensors")


# ---------------------------------------------------------------------------- conversion
def test_convert_refuses_untrusted_then_round_trips(tmp_path):
    sd = {"module.a": torch.randn(2, 3), "module.b": torch.randn(4)}
    src = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": sd, "optimizer": {"lr": 0.1}}, src)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(hub.CheckpointFormatError, match="refusing to unpickle"):
        hub.convert_checkpoint(src, dst)
    assert not dst.exists()
    hub.convert_checkpoint(src, dst, trust=True, strip_prefix="module.")
    loaded, meta = hub.load_safetensors(dst)
    assert set(loaded) == {"a", "b"} and torch.equal(loaded["a"], sd["module.a"])
    assert meta["converted_from"] == "ckpt.pth"
    hub.convert_checkpoint(src, dst, trust=True)  # nothing stripped unless asked
    assert set(hub.load_safetensors(dst)[0]) == {"module.a", "module.b"}


def test_convert_nested_and_ambiguous(tmp_path):
    src = tmp_path / "c.ckpt"
    torch.save({"model": {"w": torch.ones(2)}, "ema": {"w": torch.zeros(2)}}, src)
    with pytest.raises(hub.CheckpointFormatError, match="pass key="):
        hub.convert_checkpoint(src, tmp_path / "o.safetensors", trust=True)
    hub.convert_checkpoint(src, tmp_path / "o.safetensors", trust=True, key="ema")
    assert torch.equal(hub.load_safetensors(tmp_path / "o.safetensors")[0]["w"], torch.zeros(2))
    shared = torch.arange(6.0)
    torch.save({"a": shared, "b": shared[:3]}, src)  # shared storage is cloned
    hub.convert_checkpoint(src, tmp_path / "s.safetensors", trust=True)
    assert hub.load_safetensors(tmp_path / "s.safetensors")[0]["b"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(hub.CheckpointNotFoundError):
        hub.convert_checkpoint(tmp_path / "none.pt", tmp_path / "x.safetensors", trust=True)


def test_safetensors_header_starting_with_0x80_is_not_mistaken_for_a_pickle(tmp_path):
    """A safetensors header length whose low byte is 0x80 must still load (regression)."""
    from safetensors.torch import save_file

    for n in range(1, 400):
        path = tmp_path / "w.safetensors"
        save_file({"k" * n: torch.zeros(1)}, str(path))
        if path.read_bytes()[:1] == b"\x80":
            state, _ = hub.load_safetensors(path)
            assert list(state) == ["k" * n]
            return
    raise AssertionError("no header length with a 0x80 first byte was produced")


def test_only_l256_decodes_patch_by_patch():
    assert hub.get_spec("gpstoken-l256").decode_per_patch is True
    assert hub.get_spec("gpstoken-m128").decode_per_patch is False
