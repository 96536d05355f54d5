"""Noise schedules and the samplers' timestep spacings (pure functions of the config)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

SPACINGS = ("trailing", "quadratic")


def linear_alphas_cumprod(timesteps: int) -> Tensor:
    """Ho et al. (2020): betas linear from 1e-4 to 0.02, rescaled to `timesteps` steps."""
    scale = 1000.0 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas.clamp(max=0.999), dim=0)


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) * pi/2)."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1.0 - betas, dim=0)


def alphas_cumprod(schedule: str, timesteps: int) -> Tensor:
    """alpha_bar_t for t = 0..T-1 (float64), by schedule name."""
    if schedule == "cosine":
        return cosine_alphas_cumprod(timesteps)
    if schedule == "linear":
        return linear_alphas_cumprod(timesteps)
    raise ValueError(f"unknown schedule {schedule!r}; known: ('cosine', 'linear')")


def ddim_timesteps(start: int, steps: int) -> list[int]:
    """`steps` network evaluations from level `start` down towards 0, "trailing" spacing.

    Evenly spaced, always starting at `start` itself (Lin et al. 2024: the first step must
    see the noise level the sample actually has). The step after the last one is x0.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    steps = min(steps, start + 1)
    ts = [round(start - i * (start + 1) / steps) for i in range(steps)]
    return sorted(set(ts), reverse=True)


def sampling_timesteps(start: int, steps: int, spacing: str) -> list[int]:
    """`steps` distinct levels from `start` down, the sampler's evaluation points.

    trailing   evenly spaced in t (`ddim_timesteps`); the last level is ~start/steps.
    quadratic  t_i = start (1 - i/steps)^2 (DPM-Solver's "time_quadratic"): denser at low
               noise, where few-step samplers lose detail; the last level is ~start/steps^2.
    Either way exactly min(steps, start + 1) strictly decreasing levels, the first `start`.
    (Uniform log-SNR spacing was tried too: with the cosine schedule's clipped last betas it
    spends half its levels above t = 900, and it was worse than both on a Gaussian toy.)
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if spacing == "trailing":
        return ddim_timesteps(start, steps)
    steps = min(steps, start + 1)
    if spacing != "quadratic":
        raise ValueError(f"unknown timestep spacing {spacing!r}; known: {SPACINGS}")
    ts = [round(start * (1 - i / steps) ** 2) for i in range(steps)]
    for i in range(len(ts) - 2, -1, -1):  # strictly decreasing: push collisions upwards
        ts[i] = max(ts[i], ts[i + 1] + 1)  # (never past `start`: at most start + 1 levels)
    return ts
