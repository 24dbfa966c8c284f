"""The recognisability protocol: a generator's samples per class, under one or several
sampling settings, classified against the real reference."""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..images import to_tensor
from ..pipeline import Generator, load_generator
from ..sampling import SamplingDefaults
from ..validate import integer
from .classifier import top1
from .features import ImageNetFeatures
from .reference import RealReference, real_reference
from .reports import RecognitionReport


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
