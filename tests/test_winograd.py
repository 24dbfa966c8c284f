"""Winograd F(2x2, 3x3) convolution: equal to F.conv2d, used only where it should be."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpstoken.models import winograd
from gpstoken.models.winograd import Conv3x3, winograd_conv3x3, winograd_weight


@pytest.mark.parametrize("bsz, cin, cout, h, w, channels_last", [
    (1, 8, 16, 8, 8, True),
    (2, 16, 8, 38, 12, False),  # 19 tile rows: a partial last chunk
    (1, 4, 4, 2, 2, True),  # one tile
    (3, 32, 32, 64, 70, True),
])
def test_equals_conv2d(bsz, cin, cout, h, w, channels_last):
    g = torch.Generator().manual_seed(cin * h + w)
    x = torch.randn(bsz, cin, h, w, generator=g) * 2 + 0.5
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin**0.5)
    bias = torch.randn(cout, generator=g)
    want = F.conv2d(x, weight, bias, padding=1)
    got = winograd_conv3x3(x, winograd_weight(weight), bias)
    assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _conv(monkeypatch, cin=8, cout=8) -> Conv3x3:
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 4)
    torch.manual_seed(0)
    return Conv3x3(cin, cout)


def test_module_uses_winograd_only_without_autograd(monkeypatch):
    conv = _conv(monkeypatch)
    calls = []
    monkeypatch.setattr(winograd, "winograd_conv3x3",
                        lambda *a: calls.append(1) or F.conv2d(a[0], conv.weight, a[2], padding=1))
    x = torch.randn(1, 8, 6, 6)
    out = conv(x)  # grad mode, weights require grad: the direct convolution (autograd)
    assert out.requires_grad and not calls
    with torch.no_grad():
        conv(x)
    with torch.inference_mode():
        conv(x)
        conv(torch.randn(1, 8, 5, 6))  # odd height: direct
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(x).dtype == torch.bfloat16  # autocast's bf16 convolution, not ours
    assert len(calls) == 2


def test_module_matches_conv2d_and_follows_weight_updates(monkeypatch):
    conv = _conv(monkeypatch)
    x = torch.randn(2, 8, 10, 10)
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
    conv.load_state_dict({"weight": torch.randn(8, 8, 3, 3), "bias": torch.zeros(8)})  # cache must refresh
    with torch.inference_mode():
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)
    assert set(conv.state_dict()) == {"weight", "bias"}


def test_decoder_with_winograd_matches_direct_convolutions(monkeypatch):
    """A decoder whose deepest levels are 256 channels wide: same image either way."""
    from gpstoken.models.configs import DecoderConfig
    from gpstoken.models.decoder import Decoder

    torch.manual_seed(1)
    dec = Decoder(DecoderConfig(ch=64, ch_mult=(1, 2, 4), num_res_blocks=1)).eval()
    z = torch.randn(1, 16, 16, 16)
    calls = []
    real = winograd.winograd_conv3x3
    monkeypatch.setattr(winograd, "winograd_conv3x3", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        fast = dec(z)
        assert len(calls) == 8  # mid 2 blocks + deepest level 2 blocks, two convolutions each
        monkeypatch.setattr(winograd, "MIN_CHANNELS", 10**9)
        direct = dec(z)
    torch.testing.assert_close(fast, direct, rtol=0, atol=1e-5)
