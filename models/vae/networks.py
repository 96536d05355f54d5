"""Pure networks of the VAE: a Gaussian encoder and a pixel-logit decoder."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

LOGVAR_RANGE = (-12.0, 8.0)  # keeps exp(logvar) finite early in training


class Posterior(NamedTuple):
    """Diagonal Gaussian q(z|x): means and log-variances, each (N, latent_dim)."""

    mean: Tensor
    logvar: Tensor


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2)


class GaussianEncoder(nn.Module):
    """(N, 1, 28, 28) -> Posterior through two stride-2 convolutions and a hidden layer."""

    def __init__(self, channels: tuple[int, int], hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),  # 28 -> 14
            _act(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # 14 -> 7
            _act(),
            nn.Flatten(),
            nn.Linear(c2 * 7 * 7, hidden_dim),
            _act(),
        )
        self.head = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, images: Tensor) -> Posterior:
        mean, logvar = self.head(self.features(images)).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))


class Decoder(nn.Module):
    """(N, latent_dim) -> pixel logits (N, 1, 28, 28), mirroring the encoder."""

    def __init__(self, channels: tuple[int, int], hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.c2 = c2
        self.fc = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim),
            _act(),
            nn.Linear(hidden_dim, c2 * 7 * 7),
            _act(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # 7 -> 14
            _act(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # 14 -> 28
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.deconv(self.fc(z).view(-1, self.c2, 7, 7))
