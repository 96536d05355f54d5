"""Cheap detectors of the classic GAN failure modes, logged by the training step.

- Discriminator collapse: D wins outright (loss ~0, D(real) ~1, D(fake) ~0), so G gets no
  useful gradient. For WGAN-GP a near-zero loss is not a symptom; there the critic gap
  growing past a limit is.
- Mode collapse: G maps many z to the same few images. Measured as the mean pairwise L2
  distance of a fixed batch of samples divided by that of real images (~1 healthy, ->0
  collapsed).
- Oscillation: neither player settles; D's advantage swings back and forth over tens of
  steps instead of drifting slowly. Measured as the running mean of |fast EMA - slow EMA| of
  the D gap (mean D(real) - D(fake)): batch noise averages out in both EMAs, a slow drift
  moves them together, and only a swing with a period of tens of steps pulls them apart.
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


class SwingTracker:
    """Running oscillation amplitude of a logged signal (see the module docstring).

    State is three floats and a count, kept by the caller (the GAN keeps them in
    buffers); `update` returns the new state and the amplitude, bias-corrected for the
    EMAs' start-up.
    """

    FAST, SLOW, SWING = 0.9, 0.99, 0.98  # EMA decays: ~10, ~100 and ~50 steps

    @classmethod
    def update(cls, state: Tensor, value: float) -> float:
        """Fold `value` into `state` = [fast, slow, swing, count] in place; the amplitude."""
        fast, slow, swing, count = (float(v) for v in state)
        count += 1
        fast = cls.FAST * fast + (1 - cls.FAST) * value
        slow = cls.SLOW * slow + (1 - cls.SLOW) * value
        fast_hat = fast / (1 - cls.FAST**count)
        slow_hat = slow / (1 - cls.SLOW**count)
        swing = cls.SWING * swing + (1 - cls.SWING) * abs(fast_hat - slow_hat)
        state.copy_(torch.tensor([fast, slow, swing, count], dtype=state.dtype))
        return swing / (1 - cls.SWING**count)


def oscillation_warning(amplitude: float, limit: float) -> bool:
    """True when the swing amplitude exceeds `limit`."""
    return amplitude > limit


def mode_collapse_warning(diversity: float, min_ratio: float) -> bool:
    """True when samples are much less diverse than real digits."""
    return diversity < min_ratio
