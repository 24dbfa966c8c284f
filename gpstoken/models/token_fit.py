"""Test-time fitting of encoded tokens to their image (the ``fit_steps`` of a tokenizer).

The encoder predicts tokens in one pass. A few steps of gradient descent on the decoder's
reconstruction error then move each token's Gaussian and features closer to what the decoder
needs for *this* image (the amortisation gap of a small, briefly trained encoder). The tokens
keep their format and meaning: any decoder of the same checkpoint decodes them as usual.

Parametrisation (so that one step size suits every token size): the features move freely; each
Gaussian moves by ``sigma <- sigma0 * exp(a)``, ``rho <- clamp(rho0 + b, +-RHO_LIMIT)``,
``mu <- mu0 + sigma0 * c`` (centres move in units of the token's own initial sigma). Adam with
short-memory moments (``BETAS``) and a cosine decay of the step size over the ``steps``.

The constants were chosen on centre crops of 12 *training* photos of the embedded default
(never the held-out ones): see docs/model_card.md.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..geometry import GEOMETRY

__all__ = ["LR_FEATURES", "LR_GEOMETRY", "BETAS", "RHO_LIMIT", "fit_tokens"]

LR_FEATURES = 0.25  #: Adam step size of the features
LR_GEOMETRY = 0.08  #: Adam step size of log-sigma, rho and the centre offsets (in sigmas)
BETAS = (0.3, 0.5)  #: Adam moment decays: a few steps need short memories
RHO_LIMIT = 0.99  #: |rho| bound that keeps every fitted Gaussian valid for the renderer
# The loss is the sum over patches of each patch's mean squared error, times LOSS_SCALE, with
# Adam's eps times LOSS_SCALE too: the same steps as the unscaled loss (Adam is invariant to a
# common scale of gradients and eps), but gradients that stay normal numbers in float16.
LOSS_SCALE = 2.0 ** 16
_EPS = 1e-8


def fit_tokens(decode: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, patches: torch.Tensor,
               steps: int) -> torch.Tensor:
    """Fit tokens to the patches they encode.

    decode: tokens float [P,N,5+C] -> images float [P,3,256,256] (one patch each, grid (1,1));
    it runs under the caller's autocast. tokens: float [P,N,5+C] (sigma > 0, |rho| < 1) as the
    encoder made them; patches: float [P,3,256,256] in [-1,1]; steps >= 1. Works under any
    grad mode of the caller, ``torch.inference_mode`` included (the inputs are copied outside it).
    Returns detached float32 tokens [P,N,5+C] after ``steps`` Adam steps.
    """
    with torch.inference_mode(False), torch.enable_grad():
        return _fit(decode, tokens.detach().float().clone(), patches.detach().float().clone(), steps)


def _fit(decode: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, patches: torch.Tensor,
         steps: int) -> torch.Tensor:
    """:func:`fit_tokens` on float32 copies that autograd may use, with gradients enabled."""
    g0 = tokens[..., :GEOMETRY]
    sigma0 = g0[..., :2]
    features = tokens[..., GEOMETRY:].clone().requires_grad_(True)
    log_scale = torch.zeros_like(sigma0, requires_grad=True)
    rho_shift = torch.zeros_like(g0[..., 2:3], requires_grad=True)
    centre_shift = torch.zeros_like(sigma0, requires_grad=True)

    def current() -> torch.Tensor:
        return torch.cat([sigma0 * log_scale.exp(), (g0[..., 2:3] + rho_shift).clamp(-RHO_LIMIT, RHO_LIMIT),
                          g0[..., 3:] + sigma0 * centre_shift, features], -1)

    params = [features, log_scale, rho_shift, centre_shift]
    rates = [LR_FEATURES, LR_GEOMETRY]
    opt = torch.optim.Adam([{"params": params[:1], "lr": rates[0]}, {"params": params[1:], "lr": rates[1]}],
                           betas=BETAS, eps=_EPS * LOSS_SCALE)
    for k in range(steps):
        decay = 0.5 * (1 + math.cos(math.pi * k / steps))
        for group, lr in zip(opt.param_groups, rates):
            group["lr"] = lr * decay
        err = decode(current()).float() - patches
        loss = err.square().mean(dim=(1, 2, 3)).sum() * LOSS_SCALE
        with torch.autocast(patches.device.type, enabled=False):  # backward as after an autocast region
            grads = torch.autograd.grad(loss, params)
        for p, grad in zip(params, grads):
            p.grad = grad
        opt.step()
    return current().detach()
