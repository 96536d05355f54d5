"""DCGAN-style networks sized for 28x28 digits: pure nn.Modules working in [-1, 1].

Generator:      z (+ label embedding) -> 7x7 -> 14x14 -> 28x28, BatchNorm + ReLU, Tanh out.
Discriminator:  strided convs 28 -> 14 -> 7 -> 4, LeakyReLU(0.2), BatchNorm (or per-sample
                LayerNorm for WGAN-GP, whose penalty is per-sample); projection head for labels.
Encoder:        the discriminator's layout, predicting z (and label logits when conditional).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


def _conv_norm(channels: int, norm: str) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "layer":  # LayerNorm over (C, H, W) of each sample
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def dcgan_init(module: nn.Module) -> None:
    """DCGAN initialisation: conv/linear weights N(0, 0.02), norm scales N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """z (N, latent_dim) [+ labels] -> images (N, 1, 28, 28) in [-1, 1]."""

    def __init__(self, latent_dim: int, width: int, num_classes: int = 0, embed_dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = latent_dim + (embed_dim if num_classes else 0)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(in_dim, 4 * width, 7, 1, 0, bias=False),  # projection to 7x7
            nn.BatchNorm2d(4 * width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False),  # 14x14
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False),  # 28x28
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 3, 1, 1),
            nn.Tanh(),
        )
        dcgan_init(self)

    def condition(self, labels: Tensor) -> Tensor:
        """Label embedding; `labels` are class ids (N,) or class probabilities (N, C)."""
        assert self.embed is not None
        if labels.is_floating_point():  # soft labels: expected embedding
            return labels @ self.embed.weight
        return self.embed(labels)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional generator needs labels")
            z = torch.cat([z, self.condition(labels).to(z.dtype)], dim=1)
        return self.net(z[:, :, None, None])


class DiscriminatorOutput(NamedTuple):
    logits: Tensor  # (N,) real-vs-fake score (a logit for dcgan, a critic value for wgan-gp)
    features: Tensor  # (N, F) penultimate features, label-independent (used by f-AnoGAN)


class _ConvTrunk(nn.Sequential):
    """28 -> 14 -> 7 -> 4 strided convs with LeakyReLU(0.2); output flattened (N, 64*width)."""

    def __init__(self, width: int, norm: str):
        super().__init__(
            nn.Conv2d(1, width, 4, 2, 1),  # 14x14, no norm on the input layer (DCGAN)
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=norm == "none"),  # 7x7
            _conv_norm(2 * width, norm),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1, bias=norm == "none"),  # 4x4
            _conv_norm(4 * width, norm),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(),
        )
        self.out_features = 4 * width * 4 * 4


class Discriminator(nn.Module):
    """images in [-1, 1] [+ labels] -> DiscriminatorOutput.

    Conditioning is a projection (Miyato & Koyama 2018): logit = w.f + embed(y).f, so the
    features f themselves never see the label and f-AnoGAN can use them on unlabelled images.
    """

    def __init__(self, width: int, num_classes: int = 0, norm: str = "batch"):
        super().__init__()
        self.trunk = _ConvTrunk(width, norm)
        self.head = nn.Linear(self.trunk.out_features, 1)
        self.embed = nn.Embedding(num_classes, self.trunk.out_features) if num_classes else None
        dcgan_init(self)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> DiscriminatorOutput:
        features = self.trunk(x)
        logits = self.head(features).squeeze(1)
        if self.embed is not None and labels is not None:
            logits = logits + (self.embed(labels) * features).sum(dim=1)
        return DiscriminatorOutput(logits, features)


class EncoderOutput(NamedTuple):
    z: Tensor  # (N, latent_dim)
    label_logits: Tensor | None  # (N, num_classes) for a conditional GAN


class Encoder(nn.Module):
    """images in [-1, 1] -> latent code (and label logits): the f-AnoGAN encoder."""

    def __init__(self, latent_dim: int, width: int, num_classes: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.trunk = _ConvTrunk(width, "batch")
        self.head = nn.Linear(self.trunk.out_features, latent_dim + num_classes)
        dcgan_init(self)

    def forward(self, x: Tensor) -> EncoderOutput:
        out = self.head(self.trunk(x))
        z, logits = out[:, : self.latent_dim], out[:, self.latent_dim :]
        return EncoderOutput(z, logits if logits.shape[1] else None)
