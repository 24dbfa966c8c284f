"""Losses for tokenizer training: PatchGAN discriminator, hinge GAN loss, VQGAN-style
adaptive weight, optional ST-LPIPS perceptual loss. The metrics (PSNR, SSIM, ST-LPIPS) live
in :mod:`gpstoken.metrics`."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..metrics import STLPIPS


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


class PerceptualLoss(nn.Module):
    """Mean ST-LPIPS distance (:class:`gpstoken.metrics.STLPIPS`) as a loss. Frozen, eval mode.

    Install (optional): see :data:`gpstoken.metrics.STLPIPS_INSTALL`.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        try:
            self.metric = STLPIPS(net)
        except ImportError as e:
            raise ImportError(f"perceptual_weight > 0: {e}; or set perceptual_weight to 0.") from e

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean ST-LPIPS distance between ``[B,3,H,W]`` images in ``[-1,1]``."""
        return self.metric(x, y).mean()


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
