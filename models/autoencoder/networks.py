"""Pure encoder/decoder networks of the autoencoder family (no objective, no sampling)."""

from __future__ import annotations

import itertools

from torch import Tensor, nn

from models.layers import act, down_convs, up_convs

PIXELS = 28 * 28


class ConvEncoder(nn.Module):
    """(N, 1, 28, 28) -> (N, latent_dim) through two stride-2 convolutions."""

    def __init__(self, channels: tuple[int, int], latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*down_convs(channels))
        self.head = nn.Linear(channels[1] * 7 * 7, latent_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.features(images))


class ConvDecoder(nn.Module):
    """(N, latent_dim) -> pixel logits (N, 1, 28, 28), mirroring `ConvEncoder`."""

    def __init__(self, channels: tuple[int, int], latent_dim: int) -> None:
        super().__init__()
        self.c2 = channels[1]
        self.fc = nn.Sequential(nn.Linear(latent_dim, self.c2 * 7 * 7), act())
        self.deconv = nn.Sequential(*up_convs(channels))

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(-1, self.c2, 7, 7))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """(N, 1, 28, 28) -> (N, latent_dim): 784 -> hidden_dims... -> latent_dim."""

    def __init__(self, hidden_dims: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.net = _mlp([PIXELS, *hidden_dims, latent_dim])

    def features(self, images: Tensor) -> Tensor:
        """The last hidden layer's activations (N, hidden_dims[-1]), before the latent head:
        the MLP's counterpart of `ConvEncoder.features` (models.ensemble's encoder kNN)."""
        return self.net[:-1](images.flatten(1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.flatten(1))


class MLPDecoder(nn.Module):
    """(N, latent_dim) -> pixel logits (N, 1, 28, 28): the encoder's sizes reversed."""

    def __init__(self, hidden_dims: tuple[int, ...], latent_dim: int) -> None:
        super().__init__()
        self.net = _mlp([latent_dim, *reversed(hidden_dims), PIXELS])

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, 1, 28, 28)


def build_networks(
    arch: str, latent_dim: int, hidden_dims: tuple[int, ...], channels: tuple[int, ...]
) -> tuple[nn.Module, nn.Module]:
    """The (encoder, decoder) pair for `arch` ("conv" or "mlp")."""
    if arch == "conv":
        pair = (channels[0], channels[1])
        return ConvEncoder(pair, latent_dim), ConvDecoder(pair, latent_dim)
    if arch == "mlp":
        return MLPEncoder(hidden_dims, latent_dim), MLPDecoder(hidden_dims, latent_dim)
    raise ValueError(f"unknown arch {arch!r}")
