"""Architecture configs and a registry of named architectures (timm style).

Field names follow the official ``gpsconfig`` / ``decoderconfig`` / SiT arguments so that
configs round-trip through official YAML/JSON unchanged.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..validate import config_fields


@dataclass(frozen=True)
class DecoderConfig:
    """VAE-style decoder (official ``decoderconfig``)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    out_ch: int = 3
    in_channels: int = 3
    resolution: int = 256
    double_z: bool = False
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    # Not in the official config (its decoder is mid_attn=True, out_shuffle=1): the light
    # variant of the embedded default drops the mid attention and ends in a sub-pixel
    # convolution (conv_out emits out_ch * out_shuffle**2 channels, then pixel shuffle).
    mid_attn: bool = True
    out_shuffle: int = 1


@dataclass(frozen=True)
class TokenizerConfig:
    """GPSToken tokenizer (official ``gpsconfig`` plus the decoder config)."""

    rois: int = 8
    gpsenc_n: int = 30
    gpsenc_c: int = 512
    gps_c: int = 16
    gps_num: int = 128
    gps_dmax: float = 3.0
    gps_adaptive_w: float = 2.5
    gps_rs: tuple[int, int] = (64, 64)
    # Not in the official config (official: stride 1, 128 channels): the encoder stem of the
    # light variant runs on a pixel-unshuffled (space-to-depth) image at 1/stem_stride size.
    stem_stride: int = 1
    stem_channels: int = 128
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenizerConfig":
        """Accepts our own ``to_dict`` output or the official ``{gpsconfig, decoderconfig}``."""
        if "gpsconfig" in d:
            d = {**d["gpsconfig"], "decoder": d.get("decoderconfig", {})}
        dec = d.get("decoder", {})
        dec = dec if isinstance(dec, DecoderConfig) else _build(DecoderConfig, dec)
        return _build(cls, {**d, "decoder": dec})


@dataclass(frozen=True)
class SiTConfig:
    """SiT generator over a ``[B, in_channels, N, 1]`` token "image" (official SiT arguments)."""

    input_size: tuple[int, int] = (128, 1)
    patch_size: int = 1
    in_channels: int = 21
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    cond_channels: int = 5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SiTConfig":
        return _build(cls, d)


def _build(cls, d: dict[str, Any]):
    config_fields(cls, d, cls.__name__)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kw)


_OFFICIAL_DECODER = DecoderConfig()

TOKENIZER_ARCHS: dict[str, TokenizerConfig] = {
    "gpstoken-s64": TokenizerConfig(gps_num=64),
    "gpstoken-m128": TokenizerConfig(gps_num=128),
    "gpstoken-l256": TokenizerConfig(gps_num=256, gps_c=32, decoder=DecoderConfig(z_channels=32)),
    # the small structure of the official parity fixture
    "gpstoken-fixture-small": TokenizerConfig(
        gpsenc_n=2, gpsenc_c=64, gps_num=32, decoder=DecoderConfig(ch=32, num_res_blocks=1)
    ),
}

SIT_ARCHS: dict[str, SiTConfig] = {
    "SiT-XL/2-gs": SiTConfig(),
    "SiT-S/2-gs": SiTConfig(hidden_size=384, depth=12, num_heads=6),
}
