"""RoIAlign against the official fixture (torchvision CPU semantics) and basic properties."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from gpstoken.models.roi_align import roi_align


@pytest.fixture(scope="module")
def case(official):
    return load_file(str(official / "roialign" / "cases.safetensors"))


@pytest.mark.parametrize("channels_last", [False, True])
def test_matches_fixture_output_and_gradient(case, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = case["input"].clone().contiguous(memory_format=fmt).requires_grad_()
    out = roi_align(x, case["rois"], 8)
    assert out.shape == case["out"].shape
    torch.testing.assert_close(out, case["out"], atol=1e-5, rtol=0)
    (out * case["grad_out"]).sum().backward()
    torch.testing.assert_close(x.grad, case["grad_input"], atol=1e-5, rtol=0)


def test_boxes_get_no_gradient_and_are_not_mutated(case):
    rois = case["rois"].clone().requires_grad_()
    before = rois.detach().clone()
    x = case["input"].clone().requires_grad_()
    roi_align(x, rois, 8).sum().backward()
    assert x.grad is not None
    assert rois.grad is None
    assert torch.equal(rois.detach(), before)


def test_empty_and_inverted_boxes_give_zeros():
    x = torch.randn(1, 3, 10, 12)
    boxes = torch.tensor([[0, 4.0, 4.0, 4.0, 9.0], [0, 6.0, 6.0, 2.0, 2.0]])
    out = roi_align(x, boxes, 4)
    assert out.shape == (2, 3, 4, 4)
    assert torch.count_nonzero(out) == 0


def test_constant_map_inside_is_preserved():
    x = torch.full((2, 4, 16, 16), 3.0)
    boxes = torch.tensor([[1, 2.0, 3.0, 13.0, 9.0], [0, 0.5, 0.5, 15.5, 15.5]])
    torch.testing.assert_close(roi_align(x, boxes, 8), torch.full((2, 4, 8, 8), 3.0))


def test_gradcheck_float64():
    x = torch.randn(2, 2, 9, 7, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0, 1.0, 2.0, 6.0, 8.0], [1, -2.0, 0.3, 3.7, 11.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: roi_align(f, boxes, 3), (x,))


def test_shape_validation():
    with pytest.raises(ValueError, match="boxes"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="features"):
        roi_align(torch.zeros(1, 4, 4), torch.zeros(3, 5), 2)
