"""Pure networks of the VAE: a Gaussian encoder and a pixel-logit decoder, conv or MLP."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from models.layers import act, down_convs, up_convs

LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(logvar) finite early in training
PIXELS = 28 * 28


class Posterior(NamedTuple):
    """Diagonal Gaussian q(z|x): means and log-variances, each (N, latent_dim)."""

    mean: Tensor
    logvar: Tensor


class GaussianEncoder(nn.Module):
    """(N, 1, 28, 28) -> Posterior through two stride-2 convolutions and a hidden layer."""

    def __init__(self, channels: tuple[int, int], hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *down_convs(channels), nn.Linear(channels[1] * 7 * 7, hidden_dim), act()
        )
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, images: Tensor) -> Posterior:
        mean, logvar = self.head(self.features(images)).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))


class Decoder(nn.Module):
    """(N, latent_dim) -> pixel logits (N, 1, 28, 28), mirroring the encoder."""

    def __init__(self, channels: tuple[int, int], hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.c2 = channels[1]
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), act(), nn.Linear(hidden_dim, self.c2 * 7 * 7), act()
        )
        self.deconv = nn.Sequential(*up_convs(channels))

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(-1, self.c2, 7, 7))


class MLPEncoder(nn.Module):
    """(N, 1, 28, 28) -> Posterior: 784 -> hidden (ReLU) -> mean, logvar.

    The pytorch/examples VAE's encoder (fc1, then fc21/fc22 as one head), ReLU as there.
    """

    def __init__(self, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, hidden_dim), nn.ReLU())
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, images: Tensor) -> Posterior:
        mean, logvar = self.head(self.features(images)).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))


class MLPDecoder(nn.Module):
    """(N, latent_dim) -> pixel logits (N, 1, 28, 28): latent -> hidden (ReLU) -> 784."""

    def __init__(self, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, PIXELS)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, 1, 28, 28)


def build_networks(
    arch: str, channels: tuple[int, ...], hidden_dim: int, latent_dim: int
) -> tuple[nn.Module, nn.Module]:
    """(encoder, decoder) of `arch` ("conv" or "mlp"; the MLP ignores `channels`)."""
    if arch == "mlp":
        return MLPEncoder(hidden_dim, latent_dim), MLPDecoder(hidden_dim, latent_dim)
    pair = (channels[0], channels[1])
    return GaussianEncoder(pair, hidden_dim, latent_dim), Decoder(pair, hidden_dim, latent_dim)
