"""A small UNet for 28x28 digits: the denoising network, a pure nn.Module.

28 -> 14 -> 7 (three levels), residual blocks conditioned on a sinusoidal time embedding
(plus a class embedding with an extra "null" row for classifier-free guidance), optional
self-attention at the lowest resolution only. No dropout: training randomness must come from
the trainer's generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """Transformer-style embedding of (possibly fractional) timesteps: (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a (small) feature map."""

    def __init__(self, channels: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # (n, heads, hw, d)
        y = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(y.transpose(-1, -2).reshape(n, c, h, w))


class UNet(nn.Module):
    """eps/v-prediction network: (x_t, t, label) -> tensor shaped like x_t.

    `num_classes` > 0 adds a class embedding with one extra row (index `num_classes`) used as
    the "null" label for unconditional prediction.
    """

    def __init__(
        self,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        num_classes: int = 0,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        chs = [base_channels * int(m) for m in channel_mults]
        emb_dim = 4 * base_channels
        self.base_channels = base_channels
        self.num_classes = num_classes
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes > 0 else None
        self.stem = nn.Conv2d(in_channels, chs[0], 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        prev = chs[0]
        for i, ch in enumerate(chs):
            blocks = [ResBlock(prev if r == 0 else ch, ch, emb_dim) for r in range(num_res_blocks)]
            self.down.append(nn.ModuleList(blocks))
            last = i == len(chs) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(ch, ch, 3, 2, 1))
            prev = ch

        self.mid1 = ResBlock(chs[-1], chs[-1], emb_dim)
        self.mid_attn = Attention(chs[-1]) if attention else nn.Identity()
        self.mid2 = ResBlock(chs[-1], chs[-1], emb_dim)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chs))):
            ch = chs[i]
            self.up.append(
                nn.ModuleList([ResBlock(2 * ch, ch, emb_dim) for _ in range(num_res_blocks)])
            )
            self.upsample.append(
                nn.Conv2d(ch, chs[i - 1], 3, padding=1) if i > 0 else nn.Identity()
            )

        self.head = nn.Sequential(
            _norm(chs[0]), nn.SiLU(), nn.Conv2d(chs[0], in_channels, 3, padding=1)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def embed(self, t: Tensor, labels: Tensor | None) -> Tensor:
        emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels))
        if self.class_emb is not None:
            if labels is None:  # unconditional: the null row
                labels = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.class_emb(labels)
        return emb

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(t, labels)
        h = self.stem(x)
        skips = []
        for blocks, down in zip(self.down, self.downsample, strict=True):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, up in zip(self.up, self.upsample, strict=True):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if not isinstance(up, nn.Identity):  # conv at the low resolution: 4x cheaper
                h = F.interpolate(up(h), scale_factor=2.0, mode="nearest")
        return self.head(h)
