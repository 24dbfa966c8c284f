"""The registry of named pretrained checkpoints (timm-style): typed :class:`PretrainedSpec`
entries for the official release, the embedded tiny models, and what ``"default"`` means.

The official README (:data:`OFFICIAL_PAGE`) distributes the tokenizers
``gpstoken_s64.safetensors``, ``gpstoken_m128.safetensors``, ``gpstoken_l256.safetensors`` and,
for generation, ``generator.safetensors`` with the layout bank ``initg.pickle`` (the names its
``scripts/generate.sh`` uses). The registry looks for them in the Hub repo ``xtudbxk/GPSToken``.
Any entry can be overridden with :func:`register` (``overwrite=True``).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from ..checkpoint import KINDS, GeneratorConfig
from ..imagenet import imagenet_classes
from ..models.configs import SIT_ARCHS, TOKENIZER_ARCHS
from ..sampling import SamplingDefaults

OFFICIAL_REPO = "xtudbxk/GPSToken"
#: the official README: its Model Zoo links the released files (Baidu Pan / OneDrive)
OFFICIAL_PAGE = "https://github.com/xtudbxk/GPSToken#-quick-start"


# ---------------------------------------------------------------------- registry
@dataclass(frozen=True)
class PretrainedSpec:
    """A named pretrained checkpoint.

    Attributes:
        name: registry name.
        kind: ``"tokenizer"`` or ``"generator"``.
        repo_id: Hub repo id, or None for a file embedded in ``gpstoken/weights/``.
        filename: file inside the repo (or inside ``gpstoken/weights/``).
        revision: Hub branch, tag or commit.
        arch: architecture name in ``models.configs.TOKENIZER_ARCHS``/``SIT_ARCHS``, or None
            when the config comes from the checkpoint's own metadata.
        description: one line for listings.
        decode_per_patch: tokenizer: decode images above 256x256 patch by patch (the official
            L256 inference path) instead of one merged map.
        tokenizer: generator: the paired tokenizer (registry name, Hub id or path).
        latent_mean, latent_std: generator: the ``[5+C]`` normalisation of its targets.
        layout_bank: generator: file name of the official layout bank (``initg.pickle``) next
            to the weights.
        sampling: generator: the defaults ``generate`` uses.
        imagenet_classes: generator: its classes are the 1000 ImageNet-1k classes
            (:mod:`gpstoken.imagenet`).
        download_page: where the files are published when the Hub does not have them.
    """

    name: str
    kind: str
    repo_id: str | None
    filename: str
    revision: str = "main"
    arch: str | None = None
    description: str = ""
    decode_per_patch: bool = False
    tokenizer: str | None = None
    latent_mean: tuple[float, ...] | None = None
    latent_std: tuple[float, ...] | None = None
    layout_bank: str | None = None
    sampling: SamplingDefaults | None = None
    imagenet_classes: bool = False
    download_page: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"PretrainedSpec.kind: expected one of {KINDS}, got {self.kind!r}")
        archs = TOKENIZER_ARCHS if self.kind == "tokenizer" else SIT_ARCHS
        if self.arch is not None and self.arch not in archs:
            raise ValueError(f"PretrainedSpec.arch: unknown {self.kind} architecture {self.arch!r}; known: "
                             f"{sorted(archs)}")
        if self.kind == "generator" and self.arch is not None and (
                self.tokenizer is None or self.latent_mean is None or self.latent_std is None):
            raise ValueError(f"PretrainedSpec {self.name!r}: a generator with an arch needs tokenizer, latent_mean "
                             "and latent_std (its checkpoint carries no config)")

    @property
    def embedded(self) -> bool:
        """True for a file shipped inside the package (``gpstoken/weights/``)."""
        return self.repo_id is None

    def arch_config(self) -> dict[str, Any] | None:
        """The architecture config dict of ``arch`` (None when the checkpoint carries it)."""
        if self.arch is None:
            return None
        archs = TOKENIZER_ARCHS if self.kind == "tokenizer" else SIT_ARCHS
        return archs[self.arch].to_dict()

    def generator_config(self) -> GeneratorConfig:
        """The :class:`GeneratorConfig` of an official generator (one with ``arch``)."""
        if (self.kind != "generator" or self.arch is None or self.tokenizer is None or self.latent_mean is None
                or self.latent_std is None):  # __post_init__ makes a generator with an arch carry all three
            raise ValueError(f"{self.name!r} is not a generator with a registered architecture")
        return GeneratorConfig(
            texture=SIT_ARCHS[self.arch], latent_mean=self.latent_mean, latent_std=self.latent_std,
            tokenizer=self.tokenizer, class_names=imagenet_classes() if self.imagenet_classes else None,
            sampling=self.sampling or SamplingDefaults())


_REGISTRY: dict[str, PretrainedSpec] = {}
#: what ``"default"`` means for each kind
DEFAULTS = {"tokenizer": "gpstoken-tiny", "generator": "gpstoken-tiny-generator"}


def register(spec: PretrainedSpec, *, overwrite: bool = False) -> PretrainedSpec:
    """Add ``spec`` to the registry (``overwrite=True`` replaces an entry of the same name)."""
    if not isinstance(spec, PretrainedSpec):
        raise TypeError(f"spec: expected a PretrainedSpec, got {type(spec).__name__}")
    if spec.name == "default":
        raise ValueError("spec.name: 'default' is reserved (it maps to DEFAULTS[kind])")
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"spec.name: {spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def list_pretrained(kind: str | None = None) -> list[str]:
    """Registry names, optionally only those of ``kind`` ("tokenizer" or "generator")."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS} or None, got {kind!r}")
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def close_names(name: str, kind: str | None = None) -> str:
    """A " (did you mean ...?)" hint of the registry names close to a mistyped ``name``, or ""."""
    close = difflib.get_close_matches(str(name), [*list_pretrained(kind), "default"], n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def get_spec(name: str, kind: str | None = None) -> PretrainedSpec:
    """The registry entry ``name`` (``"default"`` needs ``kind``); ValueError when unknown."""
    if name == "default":
        if kind not in KINDS:
            names = " and ".join(f"{DEFAULTS[k]!r} ({k})" for k in KINDS)
            raise ValueError(f"kind: 'default' names one model per kind, {names}; pass kind= one of {KINDS}, "
                             "or the model's own name")
        name = DEFAULTS[kind]
    if name not in _REGISTRY:
        raise ValueError(f"unknown pretrained checkpoint {name!r}{close_names(name)}; registered: "
                         f"{list_pretrained()}")
    spec = _REGISTRY[name]
    if kind is not None and spec.kind != kind:
        raise ValueError(f"{name!r} is a {spec.kind} checkpoint, not a {kind}; {kind}s: {list_pretrained(kind)}")
    return spec


def spec_of_arch(arch: str | None, kind: str) -> PretrainedSpec | None:
    """The registered checkpoint of ``kind`` built on architecture ``arch`` (None when none is)."""
    return next((s for s in _REGISTRY.values() if s.kind == kind and arch is not None and s.arch == arch), None)


# official generator normalisation (configs/gpstoken_generator.yaml of the release): 5 geometry
# channels then 16 feature channels
GENERATOR_LATENT_MEAN = (
    -0.0211, -0.0196, 0.0107, -0.0052, -0.0044, 1.8017, 2.4036, 2.0145, 1.2402, -4.2579, -1.2646,
    -3.0395, 2.2928, 3.2168, -0.1431, 0.1600, 1.3924, 3.2345, 1.6994, 0.8237, 0.3222,
)
GENERATOR_LATENT_STD = (
    0.0121, 0.0108, 0.2533, 0.0119, 0.0114, 2.7334, 2.6400, 2.7963, 2.9325, 2.8337, 2.8269,
    3.1082, 3.1412, 2.8038, 2.6501, 2.6163, 2.4718, 2.6958, 2.8157, 2.4744, 2.8200,
)

for _n, _tokens in (("s64", 64), ("m128", 128), ("l256", 256)):
    register(PretrainedSpec(
        name=f"gpstoken-{_n}", kind="tokenizer", repo_id=OFFICIAL_REPO, filename=f"gpstoken_{_n}.safetensors",
        arch=f"gpstoken-{_n}",
        # the official inference script decodes L256 images above 256 patch by patch
        decode_per_patch=_n == "l256",
        description=f"official GPSToken-{_n.upper()} tokenizer ({_tokens} tokens per 256x256 patch)",
        download_page=OFFICIAL_PAGE,
    ))
#: the official generator (``inference_generator.py`` + ``scripts/generate.sh`` of the release)
OFFICIAL_GENERATOR = register(PretrainedSpec(
    name="gpstoken-sit-xl", kind="generator", repo_id=OFFICIAL_REPO, filename="generator.safetensors",
    arch="SiT-XL/2-gs", tokenizer="gpstoken-m128",
    latent_mean=GENERATOR_LATENT_MEAN, latent_std=GENERATOR_LATENT_STD, layout_bank="initg.pickle",
    sampling=SamplingDefaults(steps=250, sampler="sde", cfg_scale=1.5, guidance_interval=(0.2, 1.0)),
    imagenet_classes=True, download_page=OFFICIAL_PAGE,
    description="official SiT-XL class-conditional generator over GPSToken-M128 tokens (ImageNet 256)",
))
register(PretrainedSpec(
    name="gpstoken-tiny", kind="tokenizer", repo_id=None, filename="gpstoken_tiny.safetensors",
    description="small tokenizer embedded in the package (works offline); config in its metadata",
))
register(PretrainedSpec(
    name="gpstoken-tiny-generator", kind="generator", repo_id=None, filename="gpstoken_tiny_generator.safetensors",
    description="small generator embedded in the package (works offline); config in its metadata",
))
