"""The Gaussian diffusion process: forward noising, the training target, DDIM denoising.

Network-agnostic (lucidrains' `GaussianDiffusion` without the network): every method takes
the denoiser's output or a denoise function. Images live in [-1, 1] here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from models import rng
from models.diffusion.schedule import alphas_cumprod, ddim_timesteps

# (x_t, t) -> the network's raw output (v or eps), already classifier-free guided
Denoiser = Callable[[Tensor, Tensor], Tensor]


def _at(values: Tensor, t: Tensor) -> Tensor:
    """Gather per-sample schedule values for int timesteps t as (N, 1, 1, 1)."""
    return values[t].reshape(-1, 1, 1, 1)


class GaussianDiffusion(nn.Module):
    """DDPM forward process on `timesteps` levels; eps- or v-prediction; DDIM sampler."""

    def __init__(self, timesteps: int, schedule: str, objective: str, min_snr_gamma: float) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.objective = objective
        self.min_snr_gamma = min_snr_gamma
        ab = alphas_cumprod(schedule, timesteps)
        # derived from the config, so not part of the saved state
        self.register_buffer("alphas_cumprod", ab.float(), persistent=False)
        self.register_buffer("sqrt_ab", ab.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1m_ab", (1 - ab).sqrt().float(), persistent=False)
        self.register_buffer("snr", (ab / (1 - ab)).float(), persistent=False)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        return _at(self.sqrt_ab, t) * x0 + _at(self.sqrt_1m_ab, t) * noise

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network regresses: eps, or v = sqrt(ab) eps - sqrt(1 - ab) x0."""
        if self.objective == "eps":
            return noise
        return _at(self.sqrt_ab, t) * noise - _at(self.sqrt_1m_ab, t) * x0

    def loss_weight(self, t: Tensor) -> Tensor:
        """Min-SNR-gamma weights (Hang et al. 2023), expressed for the chosen target.

        The x0-space weight min(SNR, gamma) becomes min(SNR, gamma)/SNR for eps and
        min(SNR, gamma)/(SNR + 1) for v. gamma = 0 means plain (unweighted) MSE.
        """
        snr = self.snr[t]
        if self.min_snr_gamma <= 0:
            return torch.ones_like(snr)
        clipped = snr.clamp(max=self.min_snr_gamma)
        return clipped / snr if self.objective == "eps" else clipped / (snr + 1)

    def loss(self, output: Tensor, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(weighted loss, unweighted MSE), both means over the batch."""
        mse = (output.float() - self.target(x0, t, noise)).pow(2).mean(dim=(1, 2, 3))
        return (self.loss_weight(t) * mse).mean(), mse.mean()

    def predict_x0_eps(self, x_t: Tensor, t: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
        """Recover (x0, eps) from the network output at level t, x0 clipped to [-1, 1]."""
        a, s = _at(self.sqrt_ab, t), _at(self.sqrt_1m_ab, t)
        output = output.float()
        x0 = (x_t - s * output) / a if self.objective == "eps" else a * x_t - s * output
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - a * x0) / s  # consistent with the clipped x0
        return x0, eps

    def ddim(
        self,
        denoise: Denoiser,
        x_t: Tensor,
        start: int,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """DDIM (Song et al. 2021) from level `start` to x0 in `steps` network evaluations.

        eta = 0 is deterministic; eta > 0 draws its extra noise from `generator`.
        """
        x = x_t
        ts = ddim_timesteps(start, steps)
        for i, t_now in enumerate(ts):
            t = torch.full((x.shape[0],), t_now, dtype=torch.long, device=x.device)
            x0, eps = self.predict_x0_eps(x, t, denoise(x, t))
            if i == len(ts) - 1:
                return x0
            ab_now, ab_next = self.alphas_cumprod[t_now], self.alphas_cumprod[ts[i + 1]]
            sigma = eta * ((1 - ab_next) / (1 - ab_now) * (1 - ab_now / ab_next)).sqrt()
            x = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x = x + sigma * rng.randn(x.shape, generator, x.device)
        return x
