"""Exponential moving average of model weights."""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """EMA copy of a model: ``ema = d * ema + (1 - d) * param`` after every optimizer step.

    decay: the target decay (0.9999 in the paper). warmup: use
    ``min(decay, (1 + n) / (10 + n))`` for the n-th update, so short runs (fine-tuning, the
    tiny models) are not dominated by the initial weights. Buffers are copied as they are.
    The averaged model (``.model``) is float32 on the training device, in eval mode.
    Checkpointed through ``state_dict`` / ``load_state_dict`` (accelerate's
    ``register_for_checkpointing``).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = float(decay), bool(warmup)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)
        self.updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        n = self.updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (unwrapped module)."""
        d = self.current_decay()
        ema_p: list[torch.Tensor] = list(self.model.parameters())
        src_p = [p.detach().float() for p in model.parameters()]
        if len(ema_p) != len(src_p):
            raise ValueError("EMA.update: the model's parameters do not match the EMA copy")
        torch._foreach_lerp_(ema_p, src_p, 1.0 - d)
        for b, s in zip(self.model.buffers(), model.buffers()):
            b.copy_(s)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
