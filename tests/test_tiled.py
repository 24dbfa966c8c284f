"""Tiled decoding (gpstoken.models.tiled) equals the untiled decoder; chunked encode; fp32 fallback."""
import warnings

import pytest
import torch

from gpstoken.models.configs import DecoderConfig
from gpstoken.models.decoder import Decoder
from gpstoken.models.tiled import decode_tiled


def _decoder(**kw) -> Decoder:
    torch.manual_seed(0)
    dec = Decoder(DecoderConfig(**{"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, **kw})).eval()
    for mod in dec.modules():  # norms away from the identity, so wrong statistics show
        if isinstance(mod, (torch.nn.GroupNorm,)) or type(mod).__name__ == "PatchGroupNorm":
            torch.nn.init.normal_(mod.weight, 1.0, 0.3)
            torch.nn.init.normal_(mod.bias, 0.0, 0.3)
    return dec


@pytest.mark.parametrize("grid, tile", [((2, 3), 1), ((3, 2), 2)])
def test_tiled_decode_equals_untiled(grid, tile):
    dec = _decoder()
    z = torch.randn(2, 16, 6 * grid[0], 6 * grid[1]) * 2 + torch.linspace(-1, 1, 6 * grid[1])  # patch stats differ
    with torch.inference_mode():
        want = dec(z, grid)
        got = decode_tiled(dec, z, grid, tile)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def test_tiled_decode_needs_the_whole_map_statistics():
    """A tile decoded alone (its own statistics) differs: the passes really use all tiles."""
    dec = _decoder()
    z = torch.randn(1, 16, 12, 12) * 2 + torch.linspace(-2, 2, 12)
    with torch.inference_mode():
        whole = decode_tiled(dec, z, (2, 2), 1)[..., :12, :12]
        alone = dec(z[..., :6, :6], (1, 1))
    assert (whole - alone).abs().max() > 1e-2


def test_stages_count_the_convolutions_and_norms():
    # conv_in, mid block 1, attention, mid block 2, level 1 (2 blocks, upsample), level 0 (2 blocks), out
    dec = _decoder()
    stages = dec.stages()
    assert [st.reach for st in stages] == [1, 2, 0, 2, 2, 2, 1, 2, 2, 1]
    assert [st.norms for st in stages] == [0, 2, 0, 2, 2, 2, 0, 2, 2, 1]
    assert [st.scale for st in stages] == [1, 1, 1, 1, 1, 1, 2, 1, 1, 1]
    assert stages[2].run is dec.mid.attn_1


def test_tiled_decode_through_temporary_files_equals_untiled():
    """cache_bytes=0: every intermediate map goes through a temporary file, read back by windows."""
    dec = _decoder()
    z = torch.randn(2, 16, 18, 12) * 2 + torch.linspace(-1, 1, 12)  # a batch of 2: per-image blocks in the file
    with torch.inference_mode():
        want = dec(z, (3, 2))
        got = decode_tiled(dec, z, (3, 2), 1, cache_bytes=0)
    assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def test_chunked_encode_and_tiled_decode_through_the_tokenizer(monkeypatch):
    """A 5-patch image goes through the chunked encoder and the tiled decoder; both equal the all-at-once path."""
    import gpstoken
    import gpstoken.pipeline.tokenizer as pipeline

    img = torch.rand(1, 3, 64, 64 * 5) * 2 - 1
    tok = gpstoken.load_tokenizer("default", device="cpu")
    tokens = tok.encode_tensor(img, gpstoken.partition(img, 16))
    rec = tok.decode_tensor(tokens)
    monkeypatch.setattr(pipeline, "ENCODE_CHUNK", 100)
    monkeypatch.setattr(pipeline, "UNTILED_PATCHES", 100)
    tokens_all = tok.encode_tensor(img, gpstoken.partition(img, 16))
    assert torch.allclose(tokens.geometry, tokens_all.geometry, atol=1e-5)
    assert torch.allclose(tokens.features, tokens_all.features, atol=1e-5)
    assert (rec - tok.decode_tensor(tokens)).abs().max() < 1e-4


def test_non_finite_half_precision_decode_falls_back_to_float32(monkeypatch):
    import gpstoken
    from gpstoken.pipeline import Tokenizer

    base = gpstoken.load_tokenizer("default", device="cpu")
    tok = Tokenizer(base.model, base.name, torch.device("cpu"), torch.bfloat16)
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    tokens = base.encode_tensor(img, gpstoken.partition(img, 16))
    decode = tok.model.decode
    dtypes = []

    def overflowing(*args, **kw):  # what an fp16 overflow looks like: inf/nan in the output
        dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32)
        out = decode(*args, **kw)
        return out * float("nan") if torch.is_autocast_enabled("cpu") else out

    monkeypatch.setattr(tok.model, "decode", overflowing)
    with pytest.warns(RuntimeWarning, match="non-finite values; decoded again in float32"):
        rec = tok.decode_tensor(tokens)
    assert dtypes == [torch.bfloat16, torch.float32]
    assert torch.isfinite(rec).all() and (rec - base.decode_tensor(tokens)).abs().max() < 1e-5
    dtypes.clear()
    monkeypatch.setattr(tok.model, "decode", decode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.decode_tensor(tokens)  # finite: no warning, no second decode


def test_full_temporary_folder_is_a_clear_error(monkeypatch):
    import errno
    import tempfile

    class FullDisk:
        name = "tmpfile"

        def seek(self, offset):
            pass

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(tempfile, "TemporaryFile", lambda: FullDisk())
    dec = _decoder()
    with torch.inference_mode(), pytest.raises(OSError, match=r"No space left on device; it needs about .* GB.*"
                                                             r"free space there or set TMPDIR"):
        decode_tiled(dec, torch.randn(1, 16, 12, 12), (2, 2), 1, cache_bytes=0)
