"""Cheap detectors of the classic GAN failure modes, logged by the training step.

- Discriminator collapse: D wins outright (loss ~0, D(real) ~1, D(fake) ~0), so G gets no
  useful gradient. For WGAN-GP a near-zero loss is not a symptom; there the critic gap
  growing past a limit is.
- Mode collapse: G maps many z to the same few images. Measured as the mean pairwise L2
  distance of a fixed batch of samples divided by that of real images (~1 healthy, ->0
  collapsed).
"""

from __future__ import annotations

import torch
from torch import Tensor


def mean_pairwise_distance(images: Tensor) -> float:
    """Mean L2 distance over all pairs of a batch (N >= 2) of flattened images."""
    flat = images.detach().float().flatten(1)
    if flat.shape[0] < 2:
        raise ValueError("mean_pairwise_distance needs at least two images")
    return float(torch.pdist(flat).mean())


def diversity_ratio(samples: Tensor, real: Tensor) -> float:
    """Sample diversity relative to real images (both in [0, 1]); 0 when real has none."""
    real_spread = mean_pairwise_distance(real)
    return mean_pairwise_distance(samples) / real_spread if real_spread > 0 else 0.0


def d_collapse_warning(
    objective: str,
    d_loss: float,
    d_real: float,
    d_fake: float,
    *,
    loss_floor: float,
    prob_gap: float,
    wgan_gap_limit: float,
) -> bool:
    """True when the discriminator has (nearly) perfectly separated real from fake."""
    gap = d_real - d_fake
    if objective == "wgan-gp":
        return gap > wgan_gap_limit
    return d_loss < loss_floor or gap > prob_gap


def mode_collapse_warning(diversity: float, min_ratio: float) -> bool:
    """True when samples are much less diverse than real digits."""
    return diversity < min_ratio
