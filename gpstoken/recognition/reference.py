"""The real reference of the protocol: real crops cut like the generator's training crops,
the centroids fitted on some of them and the top-1 on others (:class:`RealReference`, kept in
a safetensors file on request)."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..checkpoint import load_safetensors
from ..io import write_safetensors
from ..train.data import DataConfig, ImageEntry, make_crop, training_images
from ..validate import integer
from .classifier import NearestCentroid, top1

#: how real crops are cut: like the default generator's training crops (examples/configs/tiny_texture.json)
REAL_CROPS = DataConfig(source="offline", labeled=True, n_tokens=128, scale_range=(1.0, 2.5),
                        random_crop=True, hflip=True)
#: random streams of the real crops: the fit crops and the held-out crops never share one
_FIT, _HELDOUT = 0, 1


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
