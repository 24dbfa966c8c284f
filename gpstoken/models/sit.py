"""SiT generator over GPS tokens (docs/algorithms.md section 6), with the official state-dict layout.

The token sequence is treated as a ``[B, C, N, 1]`` "image" with patch size 1, so every
token is one transformer position. Instead of a positional embedding, the initial layout
``g_init`` (``[B, N, 5]``) is embedded with a small MLP and added to the token embeddings;
without a layout a learnable ``pos_embed`` is used. Conditioning (timestep + class label)
enters every block through adaLN-Zero modulation.

Key names and shapes match the official checkpoints (``pos_embed``, ``x_embedder.proj``,
``t_embedder.mlp``, ``y_embedder.embedding_table``, ``cond_embedder``, ``blocks.i.{attn,mlp,
adaLN_modulation}``, ``final_layer``); official checkpoints store them under ``ema_model.``
(loading goes through :mod:`gpstoken.checkpoint`).
"""
from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..sampling import cfg_velocity
from .configs import SiTConfig

__all__ = ["SiT", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) timesteps.

    Args:
        t: ``[B]`` raw timesteps (flow time in ``[0, 1]``, not rescaled).
        dim: embedding size; the first half holds cosines, the second sines.
        max_period: controls the lowest frequency, ``exp(-ln(max_period) * i / (dim // 2))``.

    Returns:
        ``[B, dim]`` float32 embedding (``[cos, sin]`` order, zero-padded when ``dim`` is odd).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x [B, N, D] * (1 + scale [B, D]) + shift [B, D]``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    """Patch embedding: ``[B, C, H, W] -> [B, (H/p)*(W/p), D]`` (row-major patches)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Timestep -> ``[B, D]``: 256-d sinusoid, then Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: Tensor) -> Tensor:
        """``t [B]`` -> ``[B, D]``."""
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> ``[B, D]`` with an extra "null" row (index ``num_classes``) for CFG.

    The null row exists only when ``dropout_prob > 0``. Labels are replaced by the null class
    at random with probability ``dropout_prob`` in training mode, or where ``force_drop_ids``
    is 1 (any mode).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def token_drop(self, labels: Tensor, force_drop_ids: Tensor | None = None) -> Tensor:
        """Replace dropped labels by the null class ``num_classes``."""
        if self.dropout_prob <= 0:
            raise ValueError("label dropping needs class_dropout_prob > 0 (there is no null class row)")
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids.to(labels.device) == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(self, labels: Tensor, train: bool, force_drop_ids: Tensor | None = None) -> Tensor:
        """``labels [B]`` int64 in ``[0, num_classes]`` -> ``[B, D]``."""
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention; the qkv projection output is laid out ``[3, heads, head_dim]``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """``fc1 -> GELU(tanh) -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning.

    Modulation chunks, in order: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``x [B, N, D]``, ``c [B, D]`` -> ``[B, N, D]``."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm then a linear map to ``p*p*out_channels`` per token."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SiT(nn.Module):
    """Scalable interpolant transformer over GPS tokens (official layout, no timm dependency).

    Input ``x`` is ``[B, in_channels, H, W]`` with ``(H, W) = input_size`` for the official
    models (``(N, 1)``: N tokens). ``forward`` predicts the velocity, ``[B, in_channels, H, W]``
    (with ``learn_sigma`` the network outputs ``2 * in_channels`` channels and the first
    ``in_channels`` are returned).
    """

    def __init__(self, config: SiTConfig) -> None:
        super().__init__()
        self.config = config
        p = config.patch_size
        h, w = config.input_size
        if h % p or w % p:
            raise ValueError(f"input_size {config.input_size} is not a multiple of patch_size {p}")
        self.in_channels = config.in_channels
        self.out_channels = config.in_channels * (2 if config.learn_sigma else 1)
        self.patch_size = p
        self.num_classes = config.num_classes
        d = config.hidden_size
        self.x_embedder = PatchEmbed(config.in_channels, d, p)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        self.cond_embedder: nn.Sequential | None = None
        if config.cond_channels > 0:
            self.cond_embedder = nn.Sequential(nn.Linear(config.cond_channels, d), nn.SiLU(), nn.Linear(d, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // p) * (w // p), d))
        self.blocks = nn.ModuleList(
            SiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(d, p, self.out_channels)
        self.initialize_weights()

    @property
    def null_class(self) -> int:
        """Label index of the unconditional ("null") class used for CFG."""
        if self.config.class_dropout_prob <= 0:
            raise ValueError("this SiT has no null class (class_dropout_prob == 0)")
        return self.num_classes

    def initialize_weights(self) -> None:
        """SiT initialisation: xavier-uniform linears (zero bias), N(0, 0.02) label/timestep
        embeddings, zero ``pos_embed`` and zero adaLN / output layers (adaLN-Zero)."""
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_basic)
        nn.init.zeros_(self.pos_embed)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(cast(Tensor, self.x_embedder.proj.bias))  # the conv is built with a bias
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for i in (0, 2):
            nn.init.normal_(cast(nn.Linear, self.t_embedder.mlp[i]).weight, std=0.02)
        modulated = [cast(SiTBlock, block).adaLN_modulation for block in self.blocks]
        zeroed = [cast(nn.Linear, seq[-1]) for seq in (*modulated, self.final_layer.adaLN_modulation)]
        for lin in (*zeroed, self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _unpatchify(self, x: Tensor, h: int, w: int) -> Tensor:
        """``[B, h*w, p*p*C] -> [B, C, h*p, w*p]``."""
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, h * p, w * p)

    def embed(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """Token embeddings ``[B, N, D]``: patch embedding plus the layout embedding
        (``cond [B, N, cond_channels]``) or, without a layout, ``pos_embed``."""
        tokens = self.x_embedder(x)
        if cond is None:
            if tokens.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(
                    f"without cond the token count must be {self.pos_embed.shape[1]} (pos_embed), got {tokens.shape[1]}"
                )
            return tokens + self.pos_embed
        if self.cond_embedder is None:
            raise ValueError("this SiT has cond_channels=0 and takes no layout condition; pass cond=None")
        if cond.shape != (*tokens.shape[:2], self.config.cond_channels):
            raise ValueError(
                f"cond must be [B, N, {self.config.cond_channels}] = {(*tokens.shape[:2], self.config.cond_channels)}, "
                f"got {tuple(cond.shape)}"
            )
        return tokens + self.cond_embedder(cond.to(tokens.dtype))

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        cond: Tensor | None = None,
        *,
        force_drop_ids: Tensor | None = None,
    ) -> Tensor:
        """Predict the velocity.

        Args:
            x: ``[B, in_channels, H, W]`` noisy tokens (``W = 1`` for token sequences).
            t: ``[B]`` flow time in ``[0, 1]`` (0 = noise, 1 = data).
            y: ``[B]`` int64 labels in ``[0, num_classes]`` (``num_classes`` = null class).
            cond: ``[B, H*W, cond_channels]`` layout (``g_init``) or None (uses ``pos_embed``).
            force_drop_ids: optional ``[B]``; where 1 the label is replaced by the null class
                (training-time CFG dropout with a fixed pattern). In train mode labels are
                otherwise dropped at random with probability ``class_dropout_prob``.

        Returns:
            ``[B, in_channels, H, W]``.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        p = self.patch_size
        h, w = x.shape[2] // p, x.shape[3] // p
        tokens = self.embed(x, cond)
        c = self.t_embedder(t) + self.y_embedder(y, self.training, force_drop_ids)
        for block in self.blocks:
            tokens = block(tokens, c)
        out = self._unpatchify(self.final_layer(tokens, c), h, w)
        return out[:, : self.in_channels] if self.config.learn_sigma else out

    def forward_with_cfg(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor,
        cfg_scale: float,
        guidance_low: float = 0.0,
        guidance_high: float = 1000.0,
        cond: Tensor | None = None,
    ) -> Tensor:
        """Classifier-free guided velocity with a guidance interval (official semantics), through
        :func:`gpstoken.sampling.cfg_velocity`.

        The batch is laid out ``[conditional half; unconditional half]`` (``y`` second half =
        null class). Only ``t[0]`` is looked at: when
        ``guidance_low / 1000 <= t[0] <= guidance_high / 1000`` the first half of ``x`` is
        duplicated, run once, and ``uncond + cfg_scale * (cond - uncond)`` is returned for both
        halves. Otherwise a plain :meth:`forward` runs on the full batch (``x``, ``y``, ``cond``
        as given). ``cond`` is passed through unchanged in both cases.

        Args:
            x: ``[2B, in_channels, H, W]``; t: ``[2B]``; y: ``[2B]``; cond: ``[2B, N, 5]`` or None.
            guidance_low, guidance_high: interval bounds in units of 1/1000 of flow time.

        Returns:
            ``[2B, in_channels, H, W]``.
        """
        guided = cfg_velocity(lambda xx, tt: self.forward(xx, tt, y, cond), cfg_scale,
                              interval=(guidance_low / 1000.0, guidance_high / 1000.0))
        return guided(x, t)

