"""The light variant of the embedded default: space-to-depth encoder stem, decoder at the render
size with a sub-pixel output and no mid attention (config-driven; official archs unchanged)."""
import pytest
import torch

from gpstoken.models.configs import TOKENIZER_ARCHS, DecoderConfig, TokenizerConfig
from gpstoken.models.decoder import Decoder
from gpstoken.models.tiled import decode_tiled
from gpstoken.models.tokenizer import GPSTokenizer

LIGHT_DECODER = DecoderConfig(ch=32, ch_mult=(1,), num_res_blocks=1, mid_attn=False, out_shuffle=4)


def _light(**kw) -> GPSTokenizer:
    torch.manual_seed(0)
    cfg = TokenizerConfig(gpsenc_n=1, gpsenc_c=32, gps_num=16, stem_stride=4, stem_channels=32,
                          decoder=LIGHT_DECODER, **kw)
    return GPSTokenizer(cfg).eval()


def test_official_configs_keep_the_official_shape():
    cfg = TOKENIZER_ARCHS["gpstoken-m128"]
    assert (cfg.stem_stride, cfg.stem_channels, cfg.decoder.mid_attn, cfg.decoder.out_shuffle) == (1, 128, True, 1)
    official = {"gpsconfig": {"gps_num": 128}, "decoderconfig": {"ch": 128}}  # no light fields: the defaults
    assert TokenizerConfig.from_dict(official).decoder.mid_attn is True
    light = TokenizerConfig(stem_stride=4, stem_channels=64, decoder=LIGHT_DECODER)
    assert TokenizerConfig.from_dict(light.to_dict()) == light


def test_light_decoder_shapes_and_keys():
    dec = Decoder(LIGHT_DECODER)
    assert not any("attn" in k for k in dec.state_dict())
    out = dec(torch.randn(2, 16, 8, 8))
    assert out.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("grid, tile", [((2, 3), 1), ((3, 2), 2)])
def test_light_decoder_tiled_equals_untiled(grid, tile):
    torch.manual_seed(0)
    dec = Decoder(LIGHT_DECODER).eval()
    for mod in dec.modules():  # norms away from the identity, so wrong statistics show
        if type(mod).__name__ == "PatchGroupNorm":
            torch.nn.init.normal_(mod.weight, 1.0, 0.3)
            torch.nn.init.normal_(mod.bias, 0.0, 0.3)
    z = torch.randn(1, 16, 6 * grid[0], 6 * grid[1]) * 2 + torch.linspace(-1, 1, 6 * grid[1])
    with torch.inference_mode():
        want = dec(z, grid)
        got = decode_tiled(dec, z, grid, tile)
    assert got.shape == want.shape == (1, 3, 24 * grid[0], 24 * grid[1])
    assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def test_strided_stem_pools_the_right_place():
    """Shifting the image and a region by 4 pixels (one stem pixel) gives the same pooled features:
    region boxes are mapped onto the 1/4-size stem map."""
    model = _light()
    torch.manual_seed(1)
    img = torch.rand(1, 3, 256, 256) * 2 - 1
    shifted = torch.roll(img, shifts=(4, 4), dims=(2, 3))
    box = torch.tensor([[[80.0, 96.0, 131.0, 139.0]]])  # first/last pixels, away from the borders
    to_norm = lambda b: b / 255 * 2 - 1  # noqa: E731
    with torch.inference_mode():
        a = model.roi_features(img, to_norm(box))
        b = model.roi_features(shifted, to_norm(box + 4))
        c = model.roi_features(shifted, to_norm(box))  # the unshifted box on the shifted image
    assert a.shape == (1, 1, 32, 8, 8)
    # not exact: the roll moves the zero-padded borders, which shifts the stem's GroupNorm statistics
    assert (a - b).abs().max() < 0.05 * (a - c).abs().max()


def test_light_tokenizer_round_trip_through_a_file(tmp_path):
    import gpstoken
    from gpstoken.checkpoint import save_checkpoint

    model = _light()
    path = tmp_path / "light.safetensors"
    save_checkpoint({k: v.contiguous() for k, v in model.state_dict().items()}, path,
                    model.config.to_dict(), "tokenizer", {})
    tok = gpstoken.load_tokenizer(path, device="cpu")
    assert tok.config == model.config
    img = torch.rand(1, 3, 256, 256) * 2 - 1
    rec = tok.reconstruct(img, n_tokens=16)
    assert tuple(rec.shape[-2:]) == (256, 256)


def test_loaded_light_stem_runs_channels_last_on_the_cpu(tmp_path):
    """A loaded light tokenizer stores its stem weights channels-last on the CPU (the memory-format
    policy), which moves its tokens by float rounding only and leaves a saved checkpoint as it was;
    the official full-resolution stem and CUDA keep NCHW."""
    import gpstoken
    from gpstoken.checkpoint import load_safetensors, save_checkpoint
    from gpstoken.models.memory_format import stem_memory_format

    model = _light()
    path = tmp_path / "light.safetensors"
    save_checkpoint({k: v.contiguous() for k, v in model.state_dict().items()}, path,
                    model.config.to_dict(), "tokenizer", {})
    tok = gpstoken.load_tokenizer(path, device="cpu")
    convs = [m.weight for m in tok.model.preprocess_img.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not any(w.is_contiguous() for w in convs)
    torch.manual_seed(2)
    img = torch.rand(2, 3, 256, 256) * 2 - 1
    layout = gpstoken.partition(img, 16)
    with torch.inference_mode():
        want = model.encode(img, layout.geometry, layout.regions)  # the NCHW stem
    got = tok.encode_tensor(img, layout).as_array()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    tok.save_pretrained(tmp_path / "again")
    assert torch.equal(load_safetensors(tmp_path / "again" / "model.safetensors")[0]["preprocess_img.1.weight"],
                       model.state_dict()["preprocess_img.1.weight"])
    official = TOKENIZER_ARCHS["gpstoken-m128"]
    assert stem_memory_format(official, torch.device("cpu")) == torch.contiguous_format
    assert stem_memory_format(model.config, torch.device("cuda")) == torch.contiguous_format


def test_decoder_runs_nchw_under_autograd_on_the_cpu_with_the_same_values():
    """The decoder's layout policy: channels-last at inference, NCHW under autograd on the CPU
    (test-time fitting, training), where torch's group-norm backward is cheaper. The image and the
    gradient of its input are those of the channels-last run, up to float rounding."""
    from gpstoken.models import decoder as decoder_module
    from gpstoken.models.memory_format import decoder_memory_format

    torch.manual_seed(3)
    dec = _light().decoder.eval()
    z = torch.randn(2, dec.conv_in.in_channels, 64, 64)
    with torch.no_grad():
        assert decoder_memory_format(z, dec) == torch.channels_last
        want = dec(z)
    zg = z.clone().requires_grad_(True)
    assert decoder_memory_format(zg, dec) == torch.contiguous_format
    assert decoder_memory_format(z, dec) == torch.contiguous_format  # training the decoder alone
    frozen = _light().decoder.requires_grad_(False)
    assert decoder_memory_format(z, frozen) == torch.channels_last  # nothing wants a gradient
    got = dec(zg)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(got.square().sum(), zg)
    original = decoder_module.decoder_memory_format
    try:  # the same backward through the channels-last map
        decoder_module.decoder_memory_format = lambda z, decoder: torch.channels_last
        zc = z.clone().requires_grad_(True)
        (grad_cl,) = torch.autograd.grad(dec(zc).square().sum(), zc)
    finally:
        decoder_module.decoder_memory_format = original
    torch.testing.assert_close(grad, grad_cl, atol=1e-4, rtol=1e-4)
    assert grad.abs().max() > 0
