"""A Gaussian fitted to the training latents: the autoencoder's stand-in for a prior."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LatentGaussian(nn.Module):
    """Running (EMA) mean and covariance of encoder outputs, kept as buffers.

    `update` is deterministic (no randomness), so training with it resumes bit-identically
    from a checkpoint. The first update copies the batch statistics; later ones blend them
    in with weight `momentum`, so the fit tracks the encoder as it trains.
    """

    def __init__(self, dim: int, momentum: float, full_cov: bool = True) -> None:
        super().__init__()
        self.momentum = momentum
        self.full_cov = full_cov
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("cov", torch.eye(dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, z: Tensor) -> None:
        """Blend in the statistics of a batch of latents (N, dim); N < 2 is ignored."""
        if z.shape[0] < 2:
            return
        z = z.detach().float()
        batch_mean = z.mean(0)
        centred = z - batch_mean
        batch_cov = centred.T @ centred / (z.shape[0] - 1)
        if int(self.num_updates) == 0:
            self.mean.copy_(batch_mean)
            self.cov.copy_(batch_cov)
        else:
            self.mean.lerp_(batch_mean, self.momentum)
            self.cov.lerp_(batch_cov, self.momentum)
        self.num_updates += 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw (n, dim) latents from N(mean, cov) (or its diagonal) with `generator`."""
        dim = self.mean.shape[0]
        device = generator.device if generator is not None else self.mean.device
        eps = torch.randn(n, dim, generator=generator, device=device).to(self.mean.device)
        if self.full_cov:
            jitter = 1e-5 * torch.eye(dim, device=self.cov.device)
            scale = torch.linalg.cholesky(self.cov + jitter)
            return self.mean + eps @ scale.T
        return self.mean + eps * self.cov.diagonal().clamp_min(0).sqrt()
