"""Per-class layout bank: storage, sampling, and the guarded conversion of the official pickle."""
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gpstoken.layout_bank import (
    FORMAT,
    LayoutBank,
    LayoutBankError,
    convert_initg_pickle,
    load_layout_bank,
    read_initg_pickle,
)


def _bank():
    return LayoutBank({207: torch.rand(6, 16, 5), 3: torch.rand(2, 16, 5)})


def test_save_load_roundtrip(tmp_path):
    bank = _bank()
    path = bank.save(tmp_path / "bank.safetensors")
    loaded = LayoutBank.load(path)
    assert loaded.classes == [3, 207] and loaded.n_tokens == 16 and len(loaded) == 2
    for cid in bank:
        torch.testing.assert_close(loaded[cid], bank[cid], atol=0, rtol=0)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["class_207", "class_3"]
        assert f.metadata() == {"format": FORMAT, "format_version": "1", "n_tokens": "16"}


def test_state_dict_with_prefix_roundtrip():
    bank = _bank()
    state = bank.state_dict(prefix="layout_bank.") | {"ema_model.pos_embed": torch.zeros(1)}
    again = LayoutBank.from_state_dict(state, prefix="layout_bank.")
    assert again.classes == bank.classes
    with pytest.raises(LayoutBankError, match="unexpected layout bank key"):
        LayoutBank.from_state_dict({"layout_bank.cls_1": torch.zeros(1, 2, 5)}, prefix="layout_bank.")


def test_sample_is_seeded_and_draws_from_the_class():
    bank = _bank()
    a = bank.sample(207, 8, generator=torch.Generator().manual_seed(0))
    b = bank.sample(207, 8, generator=torch.Generator().manual_seed(0))
    assert a.shape == (8, 16, 5) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    rows = bank[207].reshape(6, -1)
    assert all((rows == s.reshape(1, -1)).all(dim=1).any() for s in a)  # every draw is a stored layout
    draws = bank.sample(207, 200, generator=torch.Generator().manual_seed(1))
    assert len({int((rows == s.reshape(1, -1)).all(dim=1).nonzero()) for s in draws}) == 6  # all reachable
    with pytest.raises(KeyError, match="class 5 is not in the layout bank"):
        bank.sample(5)
    with pytest.raises(ValueError, match="positive int"):
        bank.sample(3, 0)


def test_invalid_banks_are_rejected(tmp_path):
    with pytest.raises(LayoutBankError, match=r"\[M>0, N, 5\]"):
        LayoutBank({1: torch.rand(2, 16, 4)})
    with pytest.raises(LayoutBankError, match="other classes have 16"):
        LayoutBank({1: torch.rand(2, 16, 5), 2: torch.rand(2, 8, 5)})
    with pytest.raises(LayoutBankError, match="non-negative integers"):
        LayoutBank({-1: torch.rand(2, 16, 5)})
    other = tmp_path / "other.safetensors"
    save_file({"class_1": torch.rand(1, 4, 5)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(LayoutBankError, match="not a layout bank"):
        LayoutBank.load(other)
    newer = tmp_path / "newer.safetensors"
    save_file({"class_1": torch.rand(1, 4, 5)}, str(newer), metadata={"format": FORMAT, "format_version": "99"})
    with pytest.raises(LayoutBankError, match="version '99'"):
        LayoutBank.load(newer)
    with pytest.raises(FileNotFoundError):
        LayoutBank.load(tmp_path / "missing.safetensors")


def _initg(rng):
    """An official-style initg: class id -> list of [N, >=5] float64 arrays (extra columns)."""
    return {
        207: [rng.random((16, 7)) for _ in range(3)],
        np.int64(5): [rng.random((16, 5)).astype(np.float32)],
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_convert_initg_pickle(tmp_path, protocol):
    data = _initg(np.random.default_rng(0))
    src = tmp_path / "initg.pickle"
    src.write_bytes(pickle.dumps(data, protocol=protocol))
    out = tmp_path / "bank.safetensors"
    bank = convert_initg_pickle(src, out)
    assert bank.classes == [5, 207] and bank.n_tokens == 16
    loaded = LayoutBank.load(out)
    expected = torch.from_numpy(np.stack([a[:, :5] for a in data[207]]).astype(np.float32))
    torch.testing.assert_close(loaded[207], expected, atol=0, rtol=0)
    torch.testing.assert_close(loaded[5][0], torch.from_numpy(data[np.int64(5)][0]), atol=0, rtol=0)


def test_a_pickle_is_not_a_safetensors_bank(tmp_path):
    src = tmp_path / "initg.pickle"
    src.write_bytes(pickle.dumps(_initg(np.random.default_rng(0))))
    with pytest.raises(LayoutBankError, match="is a pickle.*load_layout_bank"):
        LayoutBank.load(src)


def test_load_layout_bank_caches_the_pickle_as_safetensors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    data = _initg(np.random.default_rng(0))
    src = tmp_path / "initg.pickle"
    src.write_bytes(pickle.dumps(data))
    bank = load_layout_bank(src)
    cached = list((tmp_path / "cache" / "gpstoken" / "layout-banks").glob("*.safetensors"))
    assert len(cached) == 1 and LayoutBank.load(cached[0]).classes == bank.classes == [5, 207]
    src.write_bytes(b"garbage")  # the cache is keyed by content: a changed file is read again
    with pytest.raises(LayoutBankError, match="not a valid layout pickle|blocked|not a readable"):
        load_layout_bank(src)
    assert load_layout_bank(cached[0]).classes == [5, 207]  # a safetensors bank loads directly


@pytest.mark.parametrize("payload, words", [
    ({1: ["not a number"]}, "may only hold"),
    ({1: [np.array(["a", "b"])]}, "dtype <U1"),
    ({1: [1.5]}, "a float"),
    ({"cls": [np.zeros((16, 5))]}, "a str"),
])
def test_pickle_with_anything_but_numbers_is_refused(tmp_path, payload, words):
    src = tmp_path / "initg.pickle"
    src.write_bytes(pickle.dumps(payload))
    with pytest.raises(LayoutBankError, match=words):
        read_initg_pickle(src)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_blocks_code_execution(tmp_path):
    src = tmp_path / "evil.pickle"
    src.write_bytes(pickle.dumps({1: [_Exploit()]}))
    with pytest.raises(LayoutBankError, match="blocked global"):
        convert_initg_pickle(src, tmp_path / "bank.safetensors")
    assert not (tmp_path / "bank.safetensors").exists()


def test_convert_reports_malformed_layouts(tmp_path):
    src = tmp_path / "initg.pickle"
    src.write_bytes(pickle.dumps({1: [np.zeros((16, 5)), np.zeros((8, 5))]}))
    with pytest.raises(LayoutBankError, match="different token counts"):
        convert_initg_pickle(src, tmp_path / "b.safetensors")
    src.write_bytes(pickle.dumps({1: [np.zeros((16, 3))]}))
    with pytest.raises(LayoutBankError, match=r"\[N, >=5\]"):
        convert_initg_pickle(src, tmp_path / "b.safetensors")
    src.write_bytes(pickle.dumps([np.zeros((16, 5))]))
    with pytest.raises(LayoutBankError, match="expected a dict"):
        convert_initg_pickle(src, tmp_path / "b.safetensors")
