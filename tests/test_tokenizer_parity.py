"""GPSTokenizer against the official fixtures: state-dict layout and encode/render/decode outputs."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gpstoken.models.configs import TOKENIZER_ARCHS, TokenizerConfig
from gpstoken.models.tokenizer import GPSTokenizer, merge_patch_tokens

MANIFEST_ENTRIES = {
    "gpstoken_s64": "gpstoken-s64",
    "gpstoken_m128": "gpstoken-m128",
    "gpstoken_l256": "gpstoken-l256",
    "tokenizer_small": "gpstoken-fixture-small",
}


@pytest.fixture(scope="module")
def manifest(official):
    return json.loads((official / "manifest.json").read_text())


@pytest.mark.parametrize("entry", sorted(MANIFEST_ENTRIES))
def test_state_dict_matches_manifest(manifest, entry):
    cfg = TOKENIZER_ARCHS[MANIFEST_ENTRIES[entry]]
    assert cfg == TokenizerConfig.from_dict(manifest[entry]["config"])
    with torch.device("meta"):
        model = GPSTokenizer(cfg)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(e["key"], e["shape"]) for e in manifest[entry]["state_dict"]]
    assert ours == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest[entry]["num_parameters"]


@pytest.fixture(scope="module")
def small(official):
    folder = official / "tokenizer"
    cfg = TokenizerConfig.from_dict(json.loads((folder / "config.json").read_text()))
    model = GPSTokenizer(cfg).eval()
    model.load_state_dict(load_file(str(folder / "tokenizer_small.safetensors")), strict=True)
    return model, load_file(str(folder / "cases.safetensors"))


def close(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def b256(small):
    """Encoder intermediates for the 4-image batch, computed once."""
    model, c = small
    regions = c["b256/regions"].clone()
    with torch.inference_mode():
        pooled = model.roi_features(c["b256/images"], regions)
        terms = model.roi_terms(pooled)
        emb = model.embed(c["b256/init_gpscodes"], terms)
        tokens = model.encode(c["b256/images"], c["b256/init_gpscodes"], regions)
    return dict(pooled=pooled, terms=terms, emb=emb, tokens=tokens, regions=regions)


def test_b256_encoder(small, b256):
    model, c = small
    close(b256["pooled"][0], c["b256/roialign_out_image0"], 1e-5)
    # each block's RoI term from the official roi_conds [N, C, r*r], in the official order
    # (roimlp over the bins of the conv outputs), in float64
    conds = c["b256/roi_conds_image0"].double()
    official = torch.stack([torch.nn.functional.linear(conds, blk.roimlp.weight.double(), blk.roimlp.bias.double())
                            for blk in model.attnblocks])[..., 0]
    close(b256["terms"][:, 0].double(), official, 1e-5)
    close(b256["emb"], c["b256/gpsembed"], 1e-5)
    with torch.inference_mode():
        close(model.to_gps[0](b256["emb"]), c["b256/gps_delta"], 1e-5)
    close(b256["tokens"], c["b256/gpscodes"], 1e-5)
    # unlike the official encode, ours leaves regions untouched
    assert torch.equal(b256["regions"], c["b256/regions"])


def test_b256_render_and_decode(small):
    model, c = small
    with torch.inference_mode():
        close(model.render(c["b256/gpscodes"]), c["b256/rendered"], 1e-5)
        close(model.decode(c["b256/gpscodes"][:2]), c["b256/recon"][:2], 1e-4)


def _np2_patches(image: torch.Tensor) -> torch.Tensor:
    """[1,3,512,512] -> [4,3,256,256], patches row-major."""
    return image.unfold(2, 256, 256).unfold(3, 256, 256).permute(0, 2, 3, 1, 4, 5).reshape(4, 3, 256, 256)


def test_np2_encode_merge_render(small):
    model, c = small
    with torch.inference_mode():
        tokens = model.encode(_np2_patches(c["np2/image"]), c["np2/init_gpscodes"], c["np2/regions"])
        close(tokens, c["np2/gpscodes"], 1e-5)
        close(merge_patch_tokens(c["np2/gpscodes"], (2, 2)), c["np2/adjusted_gpstoken"], 1e-5)
        close(model.render(c["np2/gpscodes"], (2, 2)), c["np2/rendered"], 1e-5)


@pytest.mark.parametrize("tile", [None, 1, "files"])
def test_np2_decode(small, tile):
    """The official 2x2-patch decode, untiled and tile by tile (gpstoken.models.tiled), also with
    every intermediate map in a temporary file."""
    from gpstoken.models.tiled import decode_tiled

    model, c = small
    with torch.inference_mode():
        if tile == "files":
            out = decode_tiled(model.decoder, model.render(c["np2/gpscodes"], (2, 2)), (2, 2), 1, cache_bytes=0)
        else:
            out = model.decode(c["np2/gpscodes"], (2, 2), tile=tile)
        close(out, c["np2/recon"], 1e-4)


def test_merge_is_per_image_for_batches():
    """Two images stacked: each image's merge equals its own batch-1 merge."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.rand(2 * 6, 5, 9, generator=g)
    merged = merge_patch_tokens(tokens, (2, 3))
    assert merged.shape == (2, 30, 9)
    for i in range(2):
        torch.testing.assert_close(merged[i : i + 1], merge_patch_tokens(tokens[6 * i : 6 * i + 6], (2, 3)))
    # patch (row 1, col 2) of image 1, token 0: explicit formula
    t = tokens[6 + 5, 0]
    expect = torch.cat([t[:1] / 3, t[1:2] / 2, t[2:3], (4 + t[3:4] + 1) / 3 - 1, (2 + t[4:5] + 1) / 2 - 1, t[5:]])
    torch.testing.assert_close(merged[1, 5 * 5], expect)


def test_decode_per_patch_stitches_single_patch_decodes(small):
    model, c = small
    tokens = c["np2/gpscodes"]
    with torch.inference_mode():
        out = model.decode(tokens, (2, 2), per_patch=True)
        first = model.decode(tokens[1:2])
    assert out.shape == (1, 3, 512, 512)
    torch.testing.assert_close(out[:, :, :256, 256:], first, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.encode(torch.zeros(1, 3, 128, 128), torch.zeros(1, 4, 5), torch.zeros(1, 4, 4)), "images"),
        (lambda m: m.encode(torch.zeros(1, 3, 256, 256), torch.zeros(1, 4, 3), torch.zeros(1, 4, 4)), "g_init"),
        (lambda m: m.encode(torch.zeros(1, 3, 256, 256), torch.zeros(1, 4, 5), torch.zeros(1, 5, 4)), "regions"),
        (lambda m: m.decode(torch.zeros(3, 4, 21), (2, 2)), "tokens"),
        (lambda m: m.render(torch.zeros(1, 4, 20)), "tokens"),
        (lambda m: m.decode(torch.zeros(4, 4, 21), (0, 2)), "grid"),
    ],
)
def test_input_validation(call, match):
    with torch.device("meta"):
        model = GPSTokenizer(TOKENIZER_ARCHS["gpstoken-fixture-small"])
    with pytest.raises(ValueError, match=match):
        call(model)


def test_reference_implementation_agrees(small):
    """The straightforward reference (benchmark baseline) matches the fixture and our model."""
    from reference_tokenizer import ReferenceTokenizer

    model, c = small
    ref = ReferenceTokenizer(model.config).eval()
    ref.load_state_dict(model.state_dict(), strict=True)
    with torch.inference_mode():
        tokens = ref.encode(c["b256/images"][:1], c["b256/init_gpscodes"][:1], c["b256/regions"][:1])
        close(tokens, c["b256/gpscodes"][:1], 1e-5)
        close(ref.decode(c["b256/gpscodes"][:1]), c["b256/recon"][:1], 1e-4)
        close(ref.decode(c["np2/gpscodes"], (2, 2)), model.decode(c["np2/gpscodes"], (2, 2)), 1e-4)
