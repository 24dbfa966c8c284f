"""SiT: state-dict layout vs the official manifest, numerical parity with the official
fixture (README section 5), and behaviour of the pieces the fixture does not pin down."""
import json

import pytest
import torch
from safetensors.torch import load_file

from gpstoken.checkpoint import TEXTURE_PREFIX, CheckpointMismatchError, fit_state_dict, sub_state_dict
from gpstoken.models.configs import SIT_ARCHS, SiTConfig
from gpstoken.models.sit import SiT, timestep_embedding

TOL = 1e-5


def _manifest_entries(official, name):
    manifest = json.loads((official / "manifest.json").read_text())
    return [(e["key"], tuple(e["shape"])) for e in manifest[name]["state_dict"]]


@pytest.mark.parametrize(
    "name, config",
    [
        ("sit_xl_2_gs", SIT_ARCHS["SiT-XL/2-gs"]),
        ("sit_small", SiTConfig(input_size=(32, 1), hidden_size=64, depth=2, num_heads=4, num_classes=10)),
    ],
)
def test_state_dict_layout_matches_manifest(official, name, config):
    with torch.device("meta"):
        model = SiT(config)
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == _manifest_entries(official, name)
    assert all(p.requires_grad for p in model.parameters())  # pos_embed is learnable too


@pytest.fixture(scope="module")
def fixture_model(official):
    folder = official / "sit"
    config = SiTConfig.from_dict(json.loads((folder / "config.json").read_text())["config"])
    model = SiT(config).eval()
    model.load_state_dict(fit_state_dict(model.state_dict(), load_file(folder / "sit_small.safetensors")))
    return model, load_file(folder / "cases.safetensors")


@torch.no_grad()
def test_forward_with_layout(fixture_model):
    model, c = fixture_model
    out = model(c["fwd/x"], c["fwd/t"], c["fwd/y"], c["fwd/cond"])
    torch.testing.assert_close(out, c["fwd/out"], atol=TOL, rtol=0)


@torch.no_grad()
def test_forward_without_layout_uses_pos_embed(fixture_model):
    model, c = fixture_model
    out = model(c["fwd/x"], c["fwd/t"], c["fwd/y"])
    torch.testing.assert_close(out, c["fwd_nocond/out"], atol=TOL, rtol=0)


@torch.no_grad()
def test_timestep_and_label_embeddings(fixture_model):
    model, c = fixture_model
    torch.testing.assert_close(model.t_embedder(c["fwd/t"]), c["fwd/t_emb"], atol=TOL, rtol=0)
    torch.testing.assert_close(model.y_embedder(c["fwd/y"], train=False), c["fwd/y_emb"], atol=TOL, rtol=0)


@torch.no_grad()
def test_forward_with_cfg_inside_interval(fixture_model):
    model, c = fixture_model
    out = model.forward_with_cfg(c["cfg/x"], c["cfg/t"], c["cfg/y"], 1.5, guidance_low=0, guidance_high=1000,
                                 cond=c["cfg/cond"])
    torch.testing.assert_close(out, c["cfg/out"], atol=TOL, rtol=0)
    torch.testing.assert_close(out[:2], out[2:], atol=0, rtol=0)


@torch.no_grad()
def test_forward_with_cfg_outside_interval_is_plain_forward(fixture_model):
    model, c = fixture_model
    out = model.forward_with_cfg(c["cfg/x"], c["cfg_outside/t"], c["cfg/y"], 1.5, guidance_low=0,
                                 guidance_high=500, cond=c["cfg/cond"])
    torch.testing.assert_close(out, c["cfg_outside/out"], atol=TOL, rtol=0)


def test_official_generator_keys_load_through_the_checkpoint_checker(fixture_model):
    model, _ = fixture_model
    sd = model.state_dict()
    ckpt = {f"{TEXTURE_PREFIX}{k}": v for k, v in sd.items()}
    ckpt["model.pos_embed"] = sd["pos_embed"]  # raw weights next to the EMA ones: not under the prefix
    fresh = SiT(model.config)
    fresh.load_state_dict(fit_state_dict(fresh.state_dict(), sub_state_dict(ckpt, TEXTURE_PREFIX, name="g")))
    torch.testing.assert_close(fresh.state_dict(), sd, atol=0, rtol=0)
    partial = {k: v for k, v in sd.items() if k != "pos_embed"}
    with pytest.raises(CheckpointMismatchError, match="1 missing: pos_embed"):
        fit_state_dict(SiT(model.config).state_dict(), partial)
    other = SiT(SiTConfig(input_size=(32, 1), in_channels=5, hidden_size=64, depth=2, num_heads=4, num_classes=10))
    with pytest.raises(CheckpointMismatchError, match="x_embedder.proj.weight"):
        fit_state_dict(other.state_dict(), sd)



SMALL = SiTConfig(input_size=(8, 1), in_channels=5, hidden_size=32, depth=1, num_heads=2, num_classes=3)


def test_timestep_embedding_order_and_range():
    t = torch.tensor([0.0, 0.5])
    emb = timestep_embedding(t, 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))  # cos first, then sin
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(0.5 * freqs), torch.sin(0.5 * freqs)]))


def test_init_is_adaln_zero_and_trainable():
    torch.manual_seed(0)
    model = SiT(SMALL)
    x, t, y = torch.randn(2, 5, 8, 1), torch.rand(2), torch.tensor([0, 2])
    out = model(x, t, y, torch.randn(2, 8, 5))
    assert out.shape == (2, 5, 8, 1) and torch.count_nonzero(out) == 0  # zero-initialised output layer
    assert torch.count_nonzero(model.blocks[0].adaLN_modulation[1].weight) == 0
    assert model.blocks[0].attn.qkv.weight.abs().sum() > 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = (model(x, t, y, torch.randn(2, 8, 5)) - x).pow(2).mean()
    loss.backward()
    opt.step()
    assert model(x, t, y, torch.randn(2, 8, 5)).abs().sum() > 0  # gradients reach the output layer


def test_label_dropout_train_and_forced():
    torch.manual_seed(0)
    emb = SiT(SMALL).y_embedder
    labels = torch.zeros(512, dtype=torch.long)
    table = emb.embedding_table.weight
    eval_out = emb(labels, train=False)
    torch.testing.assert_close(eval_out, table[labels])
    dropped = (emb(labels, train=True) == table[3]).all(dim=1).float().mean()
    assert 0.05 < dropped < 0.15  # class_dropout_prob = 0.1
    forced = emb(torch.tensor([0, 1, 2]), train=False, force_drop_ids=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(forced, table[torch.tensor([3, 1, 3])])


def test_no_layout_conditioning_model():
    config = SiTConfig(input_size=(8, 1), in_channels=5, hidden_size=32, depth=1, num_heads=2, num_classes=3,
                       cond_channels=0)
    model = SiT(config)
    assert model.cond_embedder is None and not any(k.startswith("cond_embedder") for k in model.state_dict())
    x = torch.randn(2, 5, 8, 1)
    assert model(x, torch.rand(2), torch.tensor([0, 1])).shape == x.shape
    with pytest.raises(ValueError, match="cond_channels=0"):
        model(x, torch.rand(2), torch.tensor([0, 1]), torch.randn(2, 8, 5))


def test_layout_conditioning_accepts_other_token_counts_but_pos_embed_does_not():
    model = SiT(SMALL).eval()
    x = torch.randn(1, 5, 16, 1)
    assert model(x, torch.rand(1), torch.tensor([1]), torch.randn(1, 16, 5)).shape == x.shape
    with pytest.raises(ValueError, match="pos_embed"):
        model(x, torch.rand(1), torch.tensor([1]))
    with pytest.raises(ValueError, match="cond must be"):
        model(x, torch.rand(1), torch.tensor([1]), torch.randn(1, 8, 5))
