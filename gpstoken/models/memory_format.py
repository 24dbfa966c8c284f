"""Memory-format policy of a loaded tokenizer's convolutions (the one place that picks it).

The encoder stem's weights are stored channels-last where that pays and keeps the official
numbers; PyTorch then runs the whole stem channels-last (a convolution follows its weight's
format), and the RoIAlign reads the channels-last map without a copy. The format is set once
when a :class:`gpstoken.pipeline.Tokenizer` is built, so no call pays for it.

* **Strided stem (the light variant) on the CPU: channels-last.** ``Tokenizer.encode_tensor``
  of the default model, one torch thread (oneDNN, AVX512): a quarter less CPU per image at
  batch 1 and 7-20% less at batch 4, float32 and bfloat16; tokens within 4e-6 of the NCHW run
  in float32 (docs/evaluation.md, Throughput).
* **Full-resolution stem (the official S64 / M128 / L256): NCHW.** Channels-last sums its
  convolutions in another order: the pooled features move by 1e-4 and the tokens by 2e-5, off
  the 1e-5 parity with the official encoder that the fixtures test.
* **CUDA: NCHW** (unchanged).

The decoder's map (:func:`decoder_memory_format`, :mod:`gpstoken.models.decoder`):

* **Inference: channels-last** on every device. Storing the decoder's weights channels-last
  too changed nothing measurable (decode at batch 1 and 4, float32 and bfloat16, within 1%),
  so they stay as loaded.
* **Autograd on the CPU (test-time fitting, training): NCHW.** torch's group-norm backward
  reads a channels-last map through strided views. A forward + backward of the default
  decoder for 4 patches, one thread, per patch: 276 -> 283 ms in float32, 241 -> 157 ms in
  bfloat16 autocast; with weight gradients too (training) 465 -> 425 and 319 -> 213 ms.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .configs import TokenizerConfig

if TYPE_CHECKING:
    from .tokenizer import GPSTokenizer

__all__ = ["stem_memory_format", "set_inference_format", "decoder_memory_format"]


def stem_memory_format(config: TokenizerConfig, device: torch.device) -> torch.memory_format:
    """The memory format of the encoder stem's weights for inference on ``device``."""
    if device.type == "cpu" and config.stem_stride > 1:
        return torch.channels_last
    return torch.contiguous_format


def set_inference_format(model: "GPSTokenizer", device: torch.device) -> None:
    """Store ``model``'s stem weights in :func:`stem_memory_format` (in place; values unchanged)."""
    fmt = stem_memory_format(model.config, device)
    for layer in model.preprocess_img.modules():
        if isinstance(layer, nn.Conv2d):
            layer.weight.data = layer.weight.data.contiguous(memory_format=fmt)


def decoder_memory_format(z: torch.Tensor, decoder: nn.Module) -> torch.memory_format:
    """The layout ``decoder`` runs its map ``z`` (float [B,C,H,W]) in: NCHW under autograd on the
    CPU (gradients wanted for ``z`` or for any of the decoder's weights), else channels-last (see
    the module docstring)."""
    if z.device.type == "cpu" and torch.is_grad_enabled() and (
            z.requires_grad or any(p.requires_grad for p in decoder.parameters())):
        return torch.contiguous_format
    return torch.channels_last
