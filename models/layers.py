"""Building blocks the autoencoder and the VAE share (pure torch, no objective).

Each conv helper returns a list of layers in creation order, so a caller that wraps it in
`nn.Sequential(*...)` keeps the same parameter names and the same seeded initialisation
as if it had written the layers itself (weights saved before the helper existed still load).
`LatentGaussianMixture` is the Gaussians both fit to their training latents for sampling
(the autoencoder's stand-in for a prior, the VAE's ex-post density estimate).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from models import rng
from models.config import require
from models.tensors import bf16_autocast, check_images, to_channels_last


def act() -> nn.Module:
    """The hidden activation of the conv and MLP stacks."""
    return nn.LeakyReLU(0.2)


def down_convs(channels: tuple[int, int]) -> list[nn.Module]:
    """(N, 1, 28, 28) -> (N, c2 * 7 * 7): two stride-2 convolutions, flattened."""
    c1, c2 = channels
    return [
        nn.Conv2d(1, c1, 4, stride=2, padding=1),  # 28 -> 14
        act(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # 14 -> 7
        act(),
        nn.Flatten(),
    ]


def up_convs(channels: tuple[int, int]) -> list[nn.Module]:
    """(N, c2, 7, 7) -> pixel logits (N, 1, 28, 28), mirroring `down_convs`."""
    c1, c2 = channels
    return [
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # 7 -> 14
        act(),
        nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # 14 -> 28
    ]


class LatentGaussianMixture(nn.Module):
    """Running (EMA) mean and covariance of encoder outputs per component, kept as buffers.

    With `num_components=10` there is one Gaussian per digit class (a mixture weighted by
    the running class frequencies); with 1 a single Gaussian fits all latents. `update` is
    deterministic (no randomness), so training resumes bit-identically from a checkpoint.
    A component's first update copies its batch statistics; later ones blend them in with
    weight `momentum`, so the fit tracks the encoder as it trains.
    """

    def __init__(
        self, num_components: int, dim: int, momentum: float, full_cov: bool = True
    ) -> None:
        super().__init__()
        self.momentum = momentum
        self.full_cov = full_cov
        self.register_buffer("means", torch.zeros(num_components, dim))
        self.register_buffer("covs", torch.eye(dim).repeat(num_components, 1, 1))
        self.register_buffer("weights", torch.full((num_components,), 1.0 / num_components))
        self.register_buffer("num_updates", torch.zeros(num_components, dtype=torch.long))

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @torch.no_grad()
    def update(self, z: Tensor, components: Tensor) -> None:
        """Blend in batch statistics of latents (N, dim) assigned to `components` (N,).

        Components with fewer than two latents in the batch keep their statistics.
        """
        z = z.detach().float()
        counts = torch.bincount(components, minlength=self.num_components).to(z.dtype)
        self.weights.lerp_(counts / counts.sum(), self.momentum)
        for k in range(self.num_components):
            zk = z[components == k]
            if zk.shape[0] < 2:
                continue
            mean = zk.mean(0)
            centred = zk - mean
            cov = centred.T @ centred / (zk.shape[0] - 1)
            weight = 1.0 if int(self.num_updates[k]) == 0 else self.momentum
            self.means[k].lerp_(mean, weight)
            self.covs[k].lerp_(cov, weight)
            self.num_updates[k] += 1

    def sample(
        self, n: int, generator: torch.Generator | None = None, components: Tensor | None = None
    ) -> Tensor:
        """Draw (n, dim) latents; components default to draws from the mixture weights."""
        device = self.means.device
        if components is None:
            source = generator.device if generator is not None else device
            components = torch.multinomial(
                self.weights.to(source), n, replacement=True, generator=generator
            )
        components = components.to(device)
        dim = self.means.shape[1]
        eps = rng.randn((n, dim), generator, device)
        means = self.means[components]
        if self.full_cov:
            jitter = 1e-5 * torch.eye(dim, device=self.covs.device)
            scales = torch.linalg.cholesky(self.covs + jitter)[components]  # (n, dim, dim)
            return means + (scales @ eps.unsqueeze(-1)).squeeze(-1)
        stds = self.covs.diagonal(dim1=1, dim2=2).clamp_min(0).sqrt()[components]
        return means + eps * stds


class ImageModelOptions:
    """Input preparation and precision for a family whose config has `arch` ("conv" or "mlp"),
    `channels_last` and `bf16_autocast` (the autoencoder and the VAE); mixed into the model."""

    @property
    def _use_channels_last(self) -> bool:
        return self.config.channels_last and self.config.arch == "conv"  # type: ignore[attr-defined]

    def _prepare(self, images: Tensor) -> Tensor:
        images = check_images(images).to(self.device)  # type: ignore[attr-defined]
        return to_channels_last(images, self._use_channels_last)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return bf16_autocast(self.config.bf16_autocast, self.device)  # type: ignore[attr-defined]


def check_image_model_config(config, arches: tuple[str, ...]) -> None:
    """The `arch`, `latent_dim` and `channels` rules the autoencoder and VAE configs share."""
    require(config.arch in arches, f"arch must be one of {arches}, got {config.arch!r}")
    require(
        isinstance(config.latent_dim, int) and 1 <= config.latent_dim <= 512,
        f"latent_dim must be an int in 1..512, got {config.latent_dim!r}",
    )
    require(
        len(config.channels) == 2
        and all(isinstance(c, int) and 1 <= c <= 512 for c in config.channels),
        f"channels must be two ints in 1..512 (28->14->7), got {config.channels!r}",
    )
