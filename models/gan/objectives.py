"""GAN objectives (non-saturating DCGAN, WGAN-GP) and the f-AnoGAN izif residual.

Pure functions of network outputs; the model decides when each is optimised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models import rng


def discriminator_loss(objective: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """D/critic loss (without the gradient penalty)."""
    if objective == "wgan-gp":
        return fake_logits.float().mean() - real_logits.float().mean()
    real = F.binary_cross_entropy_with_logits(real_logits.float(), torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits.float(), torch.zeros_like(fake_logits))
    return real + fake


def negative_loss(objective: str, negative_logits: Tensor) -> Tensor:
    """D's loss on negative-augmented reals, which it must call fake: BCE towards 0 for dcgan,
    the mean critic value for wgan-gp (pushed down like a fake's)."""
    if objective == "wgan-gp":
        return negative_logits.float().mean()
    target = torch.zeros_like(negative_logits)
    return F.binary_cross_entropy_with_logits(negative_logits.float(), target)


def generator_loss(objective: str, fake_logits: Tensor) -> Tensor:
    """Non-saturating -log D(G(z)) for dcgan; -critic(G(z)) for wgan-gp."""
    if objective == "wgan-gp":
        return -fake_logits.float().mean()
    return F.binary_cross_entropy_with_logits(fake_logits.float(), torch.ones_like(fake_logits))


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, generator: torch.Generator
) -> Tensor:
    """WGAN-GP: E[(||grad_x critic(x_hat)||_2 - 1)^2] on random real/fake interpolates."""
    eps = rng.rand((real.shape[0], 1, 1, 1), generator, real.device).to(real.dtype)
    mixed = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


def discriminator_probs(objective: str, logits: Tensor) -> Tensor:
    """Mean D output as logged: a probability for dcgan, the raw critic value for wgan-gp."""
    logits = logits.detach().float()
    return (logits if objective == "wgan-gp" else torch.sigmoid(logits)).mean()


class IzifResidual(NamedTuple):
    """Per-image f-AnoGAN residuals (Schlegl et al. 2019, izif training / scoring)."""

    image: Tensor  # (N,) mean squared pixel residual ||x - G(E(x))||^2 / n_pixels
    feature: Tensor  # (N,) mean squared residual of D's penultimate features
    total: Tensor  # (N,) image + kappa * feature: the anomaly score and the encoder loss


def izif_residual(
    x: Tensor, x_hat: Tensor, f_x: Tensor, f_hat: Tensor, kappa: float
) -> IzifResidual:
    image = (x.float() - x_hat.float()).pow(2).flatten(1).mean(dim=1)
    feature = (f_x.float() - f_hat.float()).pow(2).flatten(1).mean(dim=1)
    return IzifResidual(image, feature, image + kappa * feature)
