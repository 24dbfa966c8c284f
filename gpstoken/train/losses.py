"""Losses and metrics for tokenizer training: PatchGAN discriminator, hinge GAN loss,
VQGAN-style adaptive weight, optional ST-LPIPS perceptual loss, PSNR and SSIM."""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: strided 4x4 convs, each 2x wider (capped at 8x), BatchNorm-free
    (GroupNorm, which behaves the same on every process and batch size), LeakyReLU(0.2), and a
    1-channel map of real/fake logits, one per ~70 px receptive field at 3 layers."""

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, n_layers + 1):
            c_out = channels * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.GroupNorm(32 if c_out % 32 == 0 else 1, c_out),
                       nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: Tensor) -> Tensor:
        """``[B,3,H,W]`` in ``[-1,1]`` -> logits ``[B,1,h,w]``."""
        return self.net(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss ``(relu(1 - D(x)) + relu(1 + D(G(z)))) / 2``."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator hinge loss ``-D(G(z))``."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """VQGAN adaptive weight ``|grad rec| / (|grad g| + 1e-4)`` at the decoder's last layer,
    clamped to ``[0, max_weight]`` and detached."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return w.clamp(0.0, max_weight).detach()


# ----------------------------------------------------------------------------- perceptual


def _define_torchvision_stub_ops() -> None:
    """Register the two ``torchvision`` operator schemas its Python package checks at import,
    so a ``--no-deps`` torchvision wheel imports on a torch build it was not compiled for
    (only its model definitions are used by stlpips)."""
    lib = torch.library.Library("torchvision", "DEF")  # noqa: F841 - kept alive below
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _define_torchvision_stub_ops.lib = lib  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=None)
def _import_stlpips():
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):
        try:
            _define_torchvision_stub_ops()
            import torchvision  # noqa: F401
        except Exception as e:  # any failure here means: not usable
            raise ImportError(f"torchvision could not be imported ({e})") from e
    from stlpips_pytorch import stlpips

    return stlpips


def stlpips_available() -> bool:
    """Whether the optional ST-LPIPS perceptual loss can be used."""
    try:
        _import_stlpips()
        return True
    except ImportError:
        return False


class PerceptualLoss(nn.Module):
    """Shift-tolerant LPIPS (``stlpips-pytorch``; weights ship in its wheel). Frozen, eval mode.

    Install (optional): ``pip install --no-deps stlpips-pytorch==0.0.2 torchsummary`` plus
    ``ipython`` and torchvision (where torchvision has no build for this torch,
    ``pip install --no-deps torchvision``: its missing ``nms`` operators are declared here
    before it is imported, only its model definitions are used).
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        try:
            stlpips = _import_stlpips()
        except ImportError as e:
            raise ImportError(
                "perceptual_weight > 0 needs the optional ST-LPIPS package: pip install --no-deps "
                "stlpips-pytorch==0.0.2 torchsummary (plus ipython, and `pip install --no-deps torchvision` "
                "if torchvision is missing); "
                f"or set perceptual_weight to 0. ({e})"
            ) from e
        self.net = stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False).eval()
        self.net.requires_grad_(False)

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean ST-LPIPS distance between ``[B,3,H,W]`` images in ``[-1,1]``."""
        return self.net(x.float(), y.float(), normalize=False).mean()


# ----------------------------------------------------------------------------- metrics


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image PSNR in dB of ``[B,3,H,W]`` images in ``[-1,1]`` (data range 1 after mapping
    to ``[0,1]``)."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    y = (y.float().clamp(-1, 1) + 1) / 2
    mse = (x - y).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    ax = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(ax ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g


def ssim(x: Tensor, y: Tensor, *, window: int = 11, sigma: float = 1.5, grey: bool = False) -> Tensor:
    """Per-image SSIM (Wang et al. 2004: Gaussian window 11 / 1.5, K1 0.01, K2 0.03, valid
    filtering) of ``[B,3,H,W]`` images in ``[-1,1]``, mapped to ``[0,1]``. ``grey=False``
    averages over RGB channels; ``grey=True`` uses the BT.601 luma."""
    x = (x.float().clamp(-1, 1) + 1) / 2
    y = (y.float().clamp(-1, 1) + 1) / 2
    if grey:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        x, y = (x * w).sum(1, keepdim=True), (y * w).sum(1, keepdim=True)
    c = x.shape[1]
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    kx = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(z, kx, groups=c), ky, groups=c)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def reconstruction_loss(recon: Tensor, target: Tensor, l1: float, l2: float) -> Tensor:
    """``l1 * |x - y| + l2 * (x - y)^2``, averaged over pixels."""
    d = recon.float() - target.float()
    loss = recon.new_zeros((), dtype=torch.float32)
    if l1:
        loss = loss + l1 * d.abs().mean()
    if l2:
        loss = loss + l2 * d.pow(2).mean()
    return loss


def maybe_perceptual(weight: float, net: str = "alex") -> Optional[PerceptualLoss]:
    """The ST-LPIPS module when ``weight > 0`` (raises a clear ImportError when unavailable)."""
    return PerceptualLoss(net) if weight > 0 else None
