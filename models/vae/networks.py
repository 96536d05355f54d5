"""Pure networks of the VAE: a Gaussian encoder and a pixel-logit decoder."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from models.layers import act, down_convs, up_convs

LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(logvar) finite early in training


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
