"""Training: data determinism, metrics, tokenizer / generator training, resume, export,
and a two-process ``accelerate launch`` run. Tiny models, 256 px crops of one or two photos."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import gpstoken

pytest.importorskip("accelerate")
skimage = pytest.importorskip("skimage")

from gpstoken.checkpoint import checkpoint_config, load_safetensors  # noqa: E402
from gpstoken.metrics import psnr  # noqa: E402
from gpstoken.models.configs import SiTConfig, TokenizerConfig  # noqa: E402
from gpstoken.models.sit import SiT  # noqa: E402
from gpstoken.models.tokenizer import GPSTokenizer  # noqa: E402
from gpstoken.sampling import SamplingDefaults  # noqa: E402
from gpstoken.train import (  # noqa: E402
    OFFLINE_CLASSES,
    OFFLINE_HELDOUT,
    DataConfig,
    GeneratorTrainConfig,
    GeneratorTrainer,
    TokenizerTrainConfig,
    TokenizerTrainer,
    export_tokenizer,
)
from gpstoken.train.crop_cache import CachedCrops, build_crop_cache  # noqa: E402
from gpstoken.train.data import (  # noqa: E402
    CropDataset,
    StepBatchSampler,
    folder_images,
    grid_shape,
    offline_images,
    training_images,
    uniform_cells,
)
from gpstoken.train.thumbnail import bicubic_thumbnail, thumbnail_side  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = {
    "gpsenc_n": 1, "gpsenc_c": 32, "gps_c": 16, "gps_num": 16,
    "decoder": {"ch": 32, "ch_mult": [1, 1, 1], "num_res_blocks": 1, "z_channels": 16},
}
TINY_SIT = {"hidden_size": 64, "depth": 2, "num_heads": 4, "class_dropout_prob": 0.1}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("GPSTOKEN_NO_PROGRESS", "1")


@pytest.fixture(scope="module")
def one_image(tmp_path_factory) -> Path:
    """A folder with a single 256x256 photo: every training crop is the same (deterministic)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("one")
    Image.fromarray(skimage.data.astronaut()[::2, ::2]).save(d / "astronaut.png")
    return d


@pytest.fixture(scope="module")
def labeled_images(tmp_path_factory) -> Path:
    """Two classes (sub-folders) of photos of different sizes."""
    from PIL import Image

    d = tmp_path_factory.mktemp("labeled")
    for name, arr in (("cat", skimage.data.chelsea()), ("coffee", skimage.data.coffee())):
        (d / name).mkdir()
        Image.fromarray(arr).save(d / name / f"{name}.png")
    return d


def _tok_cfg(folder: Path, data: dict | None = None, **kw) -> TokenizerTrainConfig:
    d = {"model": TINY_TOKENIZER, "batch_size": 1, "lr": 3e-4, "disc_start": 0, "disc_channels": 16,
         "log_every": 1, "eval_every": 0, "sample_every": 0, "save_every": 0,
         "data": {"source": str(folder), "n_tokens": 16, "init": "uniform", "num_workers": 0, "random_crop": False,
                  "hflip": False,
                  **(data or {})}}
    d.update(kw)
    return TokenizerTrainConfig.from_dict(d)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- data


def test_uniform_grid_layout_covers_the_patch():
    assert grid_shape(64) == (8, 8) and grid_shape(128) == (8, 16) and grid_shape(32) == (4, 8)
    cover = np.zeros((256, 256), int)
    for x0, y0, x1, y1 in uniform_cells(128):
        cover[y0:y1 + 1, x0:x1 + 1] += 1
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="uniform grid"):
        grid_shape(7)
    with pytest.raises(ValueError, match="uniform grid"):
        DataConfig(n_tokens=7, init="uniform")
    assert DataConfig(n_tokens=[60, 64], init="uniform").token_choices() == [60, 63, 64]


def test_crop_dataset_is_deterministic_and_has_layouts(labeled_images):
    entries, classes = folder_images(labeled_images, labeled=True)
    assert classes == ["cat", "coffee"] and [e.label for e in entries] == [0, 1]
    cfg = DataConfig(source=str(labeled_images), labeled=True, n_tokens=24, scale_range=(1.0, 1.5))
    ds = CropDataset(entries, cfg, seed=3)
    a, b, c = ds[(5, 24)], ds[(5, 24)], ds[(6, 24)]
    assert a["image"].shape == (3, 256, 256) and a["g_init"].shape == (24, 5) and a["regions"].shape == (24, 4)
    assert -1 <= a["image"].min() and a["image"].max() <= 1
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["g_init"], b["g_init"])
    assert not torch.equal(a["image"], c["image"])
    # an epoch visits every image once
    assert sorted(ds.image_index(j) for j in range(2)) == [0, 1]
    uni = CropDataset(entries, DataConfig(source=str(labeled_images), n_tokens=16, init="uniform"))[(0, 16)]
    assert torch.allclose(uni["g_init"][:, 0], torch.full((16,), 63 / 256 * 2 / 3))


def test_step_batch_sampler_shards_and_resumes():
    whole = StepBatchSampler(2, [16, 32], world=1, seed=1)
    r0 = StepBatchSampler(1, [16, 32], rank=0, world=2, seed=1)
    r1 = StepBatchSampler(1, [16, 32], rank=1, world=2, seed=1)
    it, i0, i1 = iter(whole), iter(r0), iter(r1)
    batches = [next(it) for _ in range(5)]
    assert [next(i0) + next(i1) for _ in range(5)] == batches
    assert len({b[0][1] for b in batches}) == 2  # token counts vary per batch
    assert list(iter(StepBatchSampler(2, [16, 32], start=3, stop=5, seed=1))) == batches[3:5]


def test_offline_split_and_classes():
    train = [e.name for e in offline_images("train")]
    held = [e.name for e in offline_images("heldout")]
    assert held[:2] == ["skimage:coffee", "skimage:rocket"]
    assert held == [n for n in OFFLINE_HELDOUT if n in held]  # those whose package is installed, in order
    assert not set(train) & set(held)
    labeled = offline_images("train", labeled=True)
    assert [e.label for e in labeled] == list(range(len(OFFLINE_CLASSES)))
    img = labeled[OFFLINE_CLASSES.index("motorcycle")].load()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


def test_mvtb_photos_split_when_installed():
    pytest.importorskip("mvtbdata")
    train = [e.name for e in offline_images("train")]
    held = [e for e in offline_images("heldout") if e.name.startswith("mvtb:")]
    assert len(held) == sum(n.startswith("mvtb:") for n in OFFLINE_HELDOUT) == 6
    mvtb = [n for n in train if n.startswith("mvtb:")]
    assert len(mvtb) >= 60 and len(set(mvtb)) == len(mvtb)
    assert not any(n.startswith("mvtb:campus/holdout/") or "aerial-" in n for n in mvtb)  # held-out scenes
    img = held[0].load()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 256


def test_bicubic_thumbnail_baseline():
    assert [thumbnail_side(n) for n in (64, 128, 256)] == [21, 30, 42]  # 3 k^2 ~ 21 n floats
    assert thumbnail_side(128, 37) == 40
    flat = torch.full((1, 3, 256, 256), 0.25)
    assert torch.allclose(bicubic_thumbnail(flat, 64), flat, atol=1e-5)
    # detail finer than the 21 px thumbnail is lost; 42 px keeps more of it
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    img = (0.8 * torch.sin(xx / 7) * torch.cos(yy / 11)).expand(1, 3, 256, 256)
    p64, p256 = psnr(bicubic_thumbnail(img, 64), img).item(), psnr(bicubic_thumbnail(img, 256), img).item()
    assert p64 < p256 and p256 > 20
    with pytest.raises(ValueError, match="n_tokens"):
        thumbnail_side(0)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_training_decreases_loss_resumes_exactly_and_exports(one_image, tmp_path):
    held_out = {"eval_source": str(one_image), "eval_crops_per_image": 1}
    full = TokenizerTrainer(_tok_cfg(one_image, held_out, max_steps=2), tmp_path / "full")
    summary = full.train()
    log = [m for m in _metrics(tmp_path / "full") if "rec" in m]
    assert [m["step"] for m in log] == [1, 2]
    assert log[1]["rec"] < log[0]["rec"]  # same crop each step: the reconstruction improves
    assert "d_loss" in log[0] and log[0]["adaptive_w"] > 0
    evals = [m for m in _metrics(tmp_path / "full") if "eval_psnr" in m]
    assert len(evals) == 1 and 5 < evals[-1]["eval_psnr"] < 60 and 0 < evals[-1]["eval_ssim"] < 1
    assert list((tmp_path / "full" / "samples").glob("*.png"))

    # 1 step, stop, resume for the 2nd: same weights, optimizer moments, EMA and discriminator
    TokenizerTrainer(_tok_cfg(one_image, max_steps=1), tmp_path / "split").train()
    resumed = TokenizerTrainer(_tok_cfg(one_image, max_steps=2), tmp_path / "split")
    resumed.train(resume=True)
    for a, b in ((full.raw_model, resumed.raw_model), (full.ema.model, resumed.ema.model),
                 (full.run.accelerator.unwrap_model(full.disc), resumed.run.accelerator.unwrap_model(resumed.disc))):
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(va, vb, atol=1e-6, rtol=0), k

    # the export is the EMA in the official key format, config in the metadata
    state, meta = load_safetensors(summary["export"])
    config = TokenizerConfig.from_dict(checkpoint_config(meta, "tokenizer"))
    model = GPSTokenizer(config)
    model.load_state_dict(state, strict=True)
    for k, v in full.ema.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_interrupted_checkpoint_save_keeps_the_previous_checkpoint(one_image, tmp_path, monkeypatch):
    """A save killed half way leaves no step_N folder (nothing --resume could pick) and the
    previous checkpoint as it was; the run resumes from it."""
    out = tmp_path / "run"
    TokenizerTrainer(_tok_cfg(one_image, max_steps=1), out).train()
    ck = out / "checkpoints"
    files = {p.name: p.read_bytes() for p in (ck / "step_1").iterdir()}
    trainer = TokenizerTrainer(_tok_cfg(one_image, max_steps=2), out)

    def killed(path):
        (Path(path) / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.run.accelerator, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(resume=True)
    assert sorted(p.name for p in ck.iterdir()) == ["step_1"]  # no step_2, no hidden partial folder
    assert {p.name: p.read_bytes() for p in (ck / "step_1").iterdir()} == files
    monkeypatch.undo()
    resumed = TokenizerTrainer(_tok_cfg(one_image, max_steps=2), out)
    resumed.train(resume=True)
    assert [p.name for p in resumed.run.checkpoint_dirs()] == ["step_1", "step_2"]


def test_train_command_errors_are_one_line(one_image, tmp_path, capsys):
    from gpstoken import cli

    assert cli.main(["train", "tokenizer", "--config", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpstoken train: error: --config: ") and "nope.json" in err[0], err
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "painter", "--config", "x.json"])
    assert e.value.code == 2 and "invalid choice: 'painter'" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        cli.main(["train", "tokenizer", "--config", str(tmp_path / "nope.json"), "--debug"])


def test_tokenizer_init_from_and_fp16_export(one_image, tmp_path):
    config = TokenizerConfig.from_dict(TINY_TOKENIZER)
    src = GPSTokenizer(config)
    path = export_tokenizer(src, config, tmp_path / "src.safetensors", dtype="float16")
    state = load_file(str(path))
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    trainer = TokenizerTrainer(_tok_cfg(one_image, max_steps=1, init_from=str(path)), tmp_path / "ft")
    for k, v in src.state_dict().items():
        assert torch.equal(trainer.raw_model.state_dict()[k], v.half().float()), k
    with pytest.raises(ValueError, match="unknown fields"):
        _tok_cfg(one_image, learning_rate=1.0)


def test_frozen_stem_time_checkpoints_and_export_on_save(one_image, tmp_path):
    cfg = _tok_cfg(one_image, max_steps=2, freeze=["preprocess_img"], save_every_minutes=0.0, export_on_save=True,
                   disc_weight=0.0)
    trainer = TokenizerTrainer(cfg, tmp_path / "frozen")
    before = {k: v.clone() for k, v in trainer.raw_model.state_dict().items()}
    trainer.train()
    after = trainer.raw_model.state_dict()
    stem = [k for k in before if k.startswith("preprocess_img.")]
    assert stem and all(torch.equal(before[k], after[k]) for k in stem)
    assert not torch.equal(before["decoder.conv_out.weight"], after["decoder.conv_out.weight"])
    # a checkpoint after step 1 (time-based, due at once) and the final one; the export exists
    assert [p.name for p in trainer.run.checkpoint_dirs()] == ["step_1", "step_2"]
    assert (tmp_path / "frozen" / "export" / "tokenizer.safetensors").is_file()
    with pytest.raises(ValueError, match="freeze: 'encoder' names no parameter"):
        TokenizerTrainer(_tok_cfg(one_image, freeze=["encoder"]), tmp_path / "bad")


def test_crop_cache_matches_the_crops_and_feeds_training(one_image, tmp_path):
    cfg = _tok_cfg(one_image, {"init": "adaptive", "n_tokens": [16, 32], "random_crop": True, "hflip": True},
                   max_steps=1)
    path = build_crop_cache(cfg.data, tmp_path / "crops.safetensors", 3, [32, 16], seed=cfg.seed)
    cached, live = CachedCrops(path), CropDataset(training_images(cfg.data)[0], cfg.data, cfg.seed)
    assert cached.token_counts == [16, 32] and len(cached) == 3
    for key in ((0, 16), (2, 32), (4, 16)):  # sample 4 reads crop 4 mod 3 = 1
        a, b = cached[key], live[(key[0] % 3, key[1])]
        for k in ("image", "g_init", "regions"):
            assert torch.equal(a[k], b[k]), (key, k)
    with pytest.raises(ValueError, match="n_tokens=64 is not cached"):
        cached[(0, 64)]
    with pytest.raises(ValueError, match="token_counts"):
        build_crop_cache(cfg.data, tmp_path / "bad.safetensors", 3, [64])
    with pytest.raises(ValueError, match="not a gpstoken crop cache"):
        CachedCrops(export_tokenizer(GPSTokenizer(TokenizerConfig.from_dict(TINY_TOKENIZER)),
                                     TokenizerConfig.from_dict(TINY_TOKENIZER), tmp_path / "tok.safetensors"))
    cfg.data.cache = str(path)
    summary = TokenizerTrainer(cfg, tmp_path / "run").train()
    assert summary["step"] == 1 and summary["train"]["rec"] > 0


# ----------------------------------------------------------------------------- generators


@pytest.fixture(scope="module")
def tiny_tokenizer_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = TokenizerConfig.from_dict(TINY_TOKENIZER)
    return export_tokenizer(GPSTokenizer(config), config, tmp_path_factory.mktemp("tok") / "tok.safetensors")


def _gen_cfg(images: Path, tokenizer: Path, cache: Path, **kw) -> GeneratorTrainConfig:
    d = {"model": TINY_SIT, "tokenizer": str(tokenizer), "batch_size": 8, "lr": 1e-3, "extract_samples": 6,
         "extract_batch_size": 3, "cache_dir": str(cache), "log_every": 1, "save_every": 0,
         "data": {"source": str(images), "labeled": True, "n_tokens": 16, "init": "uniform", "num_workers": 0}}
    d.update(kw)
    return GeneratorTrainConfig.from_dict(d)


def test_layout_and_texture_generators_train_resume_and_export(labeled_images, tiny_tokenizer_file, tmp_path):
    cache = tmp_path / "cache"
    # layout generator: SiT over g_init, no layout condition
    layout = GeneratorTrainer(_gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=4), tmp_path / "lay",
                              "layout")
    assert layout.sit_config.in_channels == 5 and layout.sit_config.cond_channels == 0
    lay_path = layout.train()["export"]

    # texture generator: loss goes down, resume is exact, export bundles the layout model
    steps = 30
    tex = GeneratorTrainer(_gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=steps,
                                    layout_from=str(lay_path)), tmp_path / "tex", "texture")
    assert tex.sit_config.in_channels == 21 and tex.sit_config.cond_channels == 5
    assert tex.sit_config.num_classes == 2 and tex.sit_config.input_size == (16, 1)
    # targets: geometry residual w.r.t. g_init, normalised per channel
    assert torch.allclose(tex.x.reshape(-1, 21).mean(0), torch.zeros(21), atol=1e-4)
    summary = tex.train()
    losses = [m["loss"] for m in _metrics(tmp_path / "tex") if "loss" in m]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    folders = list(cache.glob("tokens-*"))  # extraction cached as a token folder (shared by both runs)
    assert len(folders) == 1 and len(gpstoken.TokenDataset(folders[0])) == 6

    half = _gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=steps // 2)
    GeneratorTrainer(half, tmp_path / "tex2", "texture").train()
    again = GeneratorTrainer(_gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=steps),
                             tmp_path / "tex2", "texture")
    again.train(resume=True)
    for (k, va), vb in zip(tex.ema.model.state_dict().items(), again.ema.model.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6, rtol=0), k

    state, meta = load_safetensors(summary["export"])
    info = checkpoint_config(meta, "generator")
    assert info["tokenizer"] == str(tiny_tokenizer_file.resolve()) and len(info["latent_mean"]) == 21
    assert info["class_names"] == ["cat", "coffee"] and len(info["layout_mean"]) == 5
    texture = SiT(SiTConfig.from_dict(info["texture"]))
    texture.load_state_dict({k[len("ema_model."):]: v for k, v in state.items() if k.startswith("ema_model.")})
    lay = SiT(SiTConfig.from_dict(info["layout"]))
    lay.load_state_dict({k[len("layout_model."):]: v for k, v in state.items() if k.startswith("layout_model.")})
    x = torch.randn(2, 21, 16, 1)
    out = texture(x, torch.rand(2), torch.tensor([0, 1]), torch.rand(2, 16, 5) * 0.5 + 0.1)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the public loader pairs it with the tokenizer and samples layout -> texture -> image
    from gpstoken.partition import partition

    gen = gpstoken.load_generator(summary["export"], device="cpu")
    assert gen.layout_model is not None and gen.class_names == ["cat", "coffee"]
    layout = partition(torch.zeros(1, 3, 256, 256), 16)
    result = gen.generate("coffee", n=1, seed=0, layout=layout, steps=2, sampler="ode", progress=False)
    assert result.images[0].size == (256, 256)


def test_texture_retraining_starts_from_a_bundled_generator(labeled_images, tiny_tokenizer_file, tmp_path):
    """The retraining recipe of the model card: the texture model alone, ``init_from`` and
    ``layout_from`` one bundled generator, an export at every periodic checkpoint."""
    cache = tmp_path / "cache"
    lay = GeneratorTrainer(_gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=1), tmp_path / "lay",
                           "layout").train()["export"]
    shipped = GeneratorTrainer(_gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=2, layout_from=str(lay),
                                        export_dtype="float32"), tmp_path / "tex", "texture").train()["export"]
    shipped_state, _ = load_safetensors(shipped)

    retrain = GeneratorTrainer(_gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=3, init_from=str(shipped),
                                        layout_from=str(shipped), save_every_minutes=0.0, export_on_save=True,
                                        sampling={"cfg_scale": 4.0, "steps": 25}),
                               tmp_path / "re", "texture")
    for k, v in retrain.ema.model.state_dict().items():  # starts from the bundled texture weights
        assert torch.equal(v, shipped_state["ema_model." + k]), k
    exports = []
    retrain.run.checkpoint_or_stop = _spy(retrain.run.checkpoint_or_stop, exports, tmp_path / "re" / "export")
    summary = retrain.train()
    assert exports and exports[0], "no export written at the periodic checkpoint"
    state, meta = load_safetensors(summary["export"])
    for k, v in shipped_state.items():  # the layout model is carried over unchanged
        if k.startswith("layout_model."):
            assert torch.equal(state[k].float(), v.float()), k
    assert "layout" in checkpoint_config(meta, "generator")
    # the config's sampling defaults are what the exported generator uses without arguments
    assert gpstoken.load_generator(summary["export"]).sampling == SamplingDefaults(steps=25, cfg_scale=4.0)
    assert gpstoken.load_generator(shipped).sampling == SamplingDefaults()
    with pytest.raises(ValueError, match="layout_from: .*tok.safetensors: .*expected a generator"):
        GeneratorTrainer(_gen_cfg(labeled_images, tiny_tokenizer_file, cache, max_steps=1,
                                  layout_from=str(tiny_tokenizer_file)), tmp_path / "bad", "texture")


def test_retraining_config_reads_and_points_at_the_shipped_generator():
    from gpstoken.train.generator_trainer import _layout_part

    root = Path(__file__).resolve().parents[1]
    cfg = GeneratorTrainConfig.from_json(root / "examples/configs/tiny_texture_retrain.json")
    assert cfg.export_on_save and cfg.save_every_minutes and cfg.data.labeled
    assert isinstance(cfg.sampling, SamplingDefaults)  # what the export's generate() uses by default
    for path in (cfg.tokenizer, cfg.init_from, cfg.layout_from):
        assert (root / path).is_file(), path
    assert _layout_part(str(root / cfg.layout_from), {"n_tokens": cfg.data.token_range[0]})


GEN_DATA = {"labeled": True, "n_tokens": 16}


@pytest.mark.parametrize("sampling, msg", [({"cfg_scale": 0.5}, r"sampling: cfg_scale: must be a finite number >= 1"),
                                           ({"cfg": 2}, r"sampling: unknown fields \['cfg'\]"),
                                           ([2.5], r"sampling: expected an object")])
def test_generator_config_refuses_bad_sampling_defaults(sampling, msg):
    with pytest.raises(ValueError, match=msg):
        GeneratorTrainConfig.from_dict({"model": TINY_SIT, "sampling": sampling, "data": GEN_DATA})


def test_sampling_defaults_are_refused_for_the_layout_model(tmp_path):
    cfg = GeneratorTrainConfig.from_dict({"model": TINY_SIT, "sampling": {"cfg_scale": 2.0}, "data": GEN_DATA})
    with pytest.raises(ValueError, match="sampling: the sampling defaults belong to the texture export"):
        GeneratorTrainer(cfg, tmp_path / "lay", "layout")


def _spy(checkpoint_or_stop, seen: list, export_dir: Path):
    """Wrap ``Run.checkpoint_or_stop`` to record whether an export exists right after each call."""
    def wrapped(after_save=None):
        stop = checkpoint_or_stop(after_save)
        seen.append((export_dir / "generator.safetensors").is_file())
        return stop
    return wrapped


# ----------------------------------------------------------------------------- launch


@pytest.mark.slow
def test_texture_generator_trains_from_a_tokenize_folder(labeled_images, tiny_tokenizer_file, tmp_path):
    from gpstoken.pretokenize import tokenize

    tokenize(labeled_images, tmp_path / "tokens", 16, model=str(tiny_tokenizer_file), labeled=True, num_workers=0,
             progress=False)
    cfg = GeneratorTrainConfig.from_dict({"model": TINY_SIT, "tokens": str(tmp_path / "tokens"), "batch_size": 2,
                                          "max_steps": 2, "log_every": 1, "save_every": 0})
    tex = GeneratorTrainer(cfg, tmp_path / "run", "texture")
    assert tex.class_names == ["cat", "coffee"] and tex.labels.tolist() == [0, 1]
    assert tex.sit_config.input_size == (16, 1) and tex.sit_config.in_channels == 21
    info = checkpoint_config(load_safetensors(tex.train()["export"])[1], "generator")
    # the token folder's portable model id (a local file by its name: load_generator finds it beside the generator)
    assert info["tokenizer"] == tiny_tokenizer_file.name and info["class_names"] == ["cat", "coffee"]
    with pytest.raises(ValueError, match="--labeled"):
        tokenize(labeled_images, tmp_path / "unlabeled", 16, model=str(tiny_tokenizer_file), num_workers=0,
                 progress=False)
        GeneratorTrainer(GeneratorTrainConfig.from_dict({"model": TINY_SIT, "tokens": str(tmp_path / "unlabeled")}),
                         tmp_path / "run2", "texture")


def test_accelerate_launch_two_processes(one_image, tmp_path):
    """The CLI under ``accelerate launch --num_processes 2 --cpu`` (DDP over gloo), with
    gradient accumulation (no_sync) and the GAN active: one optimizer step, then export."""
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate command is not on PATH")
    cfg = _tok_cfg(one_image, max_steps=1, grad_accum=2).to_dict()
    cfg["data"].update(num_workers=1, init="adaptive")  # the entropy partition runs in a DataLoader worker
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GPSTOKEN_NO_PROGRESS": "1"}
    cmd = ["accelerate", "launch", "--num_processes", "2", "--cpu", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "gpstoken.train.cli", "tokenizer", "--config", str(tmp_path / "cfg.json"),
           "--out", str(tmp_path / "run")]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "done at step 1" in proc.stdout
    state, meta = load_safetensors(tmp_path / "run" / "export" / "tokenizer.safetensors")
    GPSTokenizer(TokenizerConfig.from_dict(checkpoint_config(meta, "tokenizer"))).load_state_dict(state, strict=True)
    assert [m["step"] for m in _metrics(tmp_path / "run") if "rec" in m] == [1]


def test_perceptual_loss_when_available():
    pytest.importorskip("stlpips_pytorch")
    from gpstoken.train.losses import PerceptualLoss

    loss = PerceptualLoss("alex")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1).requires_grad_(True)
    d = loss(y, x)
    d.backward()
    assert d.item() > 0 and loss(x, x).item() == 0 and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loss.parameters()) and not loss.train().training


def test_missing_train_dependency_is_a_clear_error(monkeypatch):
    from gpstoken.train import require_train_deps

    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError, match=r"tqdm: pip install 'gpstoken\[train\]'"):
        require_train_deps()


def test_push_to_hub_after_training(one_image, tmp_path, monkeypatch, capsys):
    """``gpstoken train ... --push-to-hub REPO`` uploads the export (huggingface_hub's HfApi
    stubbed: no network) and refuses a layout run or a bad repo id before training."""
    from huggingface_hub import HfApi, constants

    from gpstoken.train.cli import main as train_main

    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *, repo_id, folder_path, commit_message: uploads.append(
        (repo_id, sorted(p.name for p in Path(folder_path).iterdir()))) or f"https://hf.co/{repo_id}/commit/1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    (tmp_path / "cfg.json").write_text(json.dumps(_tok_cfg(one_image, max_steps=1).to_dict()))
    args = ["--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run")]
    assert train_main(["layout", *args, "--push-to-hub", "me/x"]) == 1
    assert "a layout export is not a model on its own" in capsys.readouterr().err
    assert train_main(["tokenizer", *args, "--push-to-hub", "nope"]) == 1
    assert "--push-to-hub: expected a Hub repo id 'owner/name'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before any training
    assert train_main(["tokenizer", *args, "--push-to-hub", "me/tok"]) == 0
    assert uploads == [("me/tok", ["README.md", "config.json", "model.safetensors"])]
    assert "pushed to https://hf.co/me/tok/commit/1" in capsys.readouterr().out
