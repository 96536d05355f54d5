"""Cheap detectors of the classic GAN failure modes, logged by the training step.

- Discriminator collapse: D wins outright (loss ~0, D(real) ~1, D(fake) ~0), so G gets no
  useful gradient. For WGAN-GP a near-zero loss is not a symptom; there the critic gap
  growing past a limit is.
- Mode collapse: G maps many z to the same few images. Measured as the mean pairwise L2
  distance of a fixed batch of samples divided by that of real images (~1 healthy, ->0
  collapsed).
- Oscillation: neither player settles; D's advantage (the D gap, mean D(real) - D(fake))
  swings back and forth over tens of steps instead of drifting slowly. Measured by
  `SwingTracker`: how far a fast EMA of the gap gets from a slow one between two of their
  crossings.
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

    A fast and a slow EMA of the signal cross each time it turns; the amplitude is a
    running mean (weight `CROSS` per crossing) of the largest |fast - slow| seen between
    two crossings. Batch noise crosses often but never far; a slow drift keeps the fast
    EMA on one side (no crossing, no growth); a swing with a period of tens of steps
    crosses far from the slow EMA every half period. A signal that settles smoothly stops
    crossing, so a half-swing that lasts `HOLD` steps (far longer than the swings this
    watches for) is folded in as if it had turned, and may only lower the amplitude: the
    flag clears once the swings die out, while a slow drift still cannot raise it. The
    state (STATE_SIZE floats) is kept by the caller, the GAN in a buffer:
    [fast, slow, amplitude, count, peak, side, steps since the last turn].
    """

    FAST, SLOW, CROSS, HOLD = 0.9, 0.99, 0.5, 100
    STATE_SIZE = 7

    @classmethod
    def update(cls, state: Tensor, value: float) -> float:
        """Fold `value` into `state` in place; the current amplitude."""
        fast, slow, amplitude, count, peak, side, since = (float(v) for v in state)
        count += 1
        since += 1
        fast = cls.FAST * fast + (1 - cls.FAST) * value
        slow = cls.SLOW * slow + (1 - cls.SLOW) * value
        diff = fast / (1 - cls.FAST**count) - slow / (1 - cls.SLOW**count)  # bias-corrected
        peak = max(peak, abs(diff))
        now = float((diff > 0) - (diff < 0))
        if side and now and now != side:  # the signal turned: fold in this half-swing's peak
            amplitude = (1 - cls.CROSS) * amplitude + cls.CROSS * peak
            peak, since = abs(diff), 0.0
        elif since >= cls.HOLD:  # no turn for HOLD steps: not a swing; may only lower it
            amplitude = min(amplitude, (1 - cls.CROSS) * amplitude + cls.CROSS * peak)
            peak, since = abs(diff), 0.0
        side = now or side
        values = [fast, slow, amplitude, count, peak, side, since]
        state.copy_(torch.tensor(values, dtype=state.dtype))
        return amplitude


def oscillation_warning(amplitude: float, limit: float) -> bool:
    """True when the swing amplitude exceeds `limit`."""
    return amplitude > limit


def mode_collapse_warning(diversity: float, min_ratio: float) -> bool:
    """True when samples are much less diverse than real digits."""
    return diversity < min_ratio
