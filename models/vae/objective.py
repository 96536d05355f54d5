"""The VAE objective: log-likelihoods, KL, ELBO terms and the KL warm-up schedule.

All quantities are per image in nats, summed over the 784 pixels / latent dimensions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from models.vae.networks import Posterior

LOG_2PI = math.log(2 * math.pi)


class ElboTerms(NamedTuple):
    """Per-image (N,) evidence lower bound and its parts: elbo = -(recon + kl)."""

    elbo: Tensor
    recon: Tensor  # negative log-likelihood -E_q[log p(x|z)]
    kl: Tensor  # KL(q(z|x) || N(0, I))


def gaussian_kl(posterior: Posterior) -> Tensor:
    """Analytic KL(N(mean, exp(logvar)) || N(0, I)) per row (N,)."""
    mean, logvar = posterior
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def free_bits_kl(posterior: Posterior, free_bits: float) -> Tensor:
    """Batch KL for the loss with each dimension's batch-mean KL floored at `free_bits` nats.

    Dimensions below the floor get no KL gradient, so the encoder can use them freely
    (Kingma et al. 2016); the reported ELBO keeps the true KL (`gaussian_kl`).
    """
    mean, logvar = posterior
    per_dim = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean(0)
    return per_dim.clamp_min(free_bits).sum()


def log_normal(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """log N(x; mean, diag(exp(logvar))) summed over the last dimension."""
    return -0.5 * ((x - mean).square() / logvar.exp() + logvar + LOG_2PI).sum(-1)


def log_likelihood(logits: Tensor, images: Tensor, decoder: str, gaussian_std: float) -> Tensor:
    """log p(x|z) per image (N,) from decoder logits (N, 1, 28, 28).

    Bernoulli: -BCE(logits, x) (x in [0, 1] used as soft targets). Gaussian: the density of
    x under N(sigmoid(logits), gaussian_std^2) per pixel, so it can exceed 0 nats.
    """
    if decoder == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
        return -nll.flatten(1).sum(1)
    mean = torch.sigmoid(logits)
    log_std = math.log(gaussian_std)
    per_pixel = -0.5 * ((images - mean) / gaussian_std).square() - log_std - 0.5 * LOG_2PI
    return per_pixel.flatten(1).sum(1)


def decoder_mean(logits: Tensor) -> Tensor:
    """The decoder's expected image in [0, 1] (both likelihoods use a sigmoid mean)."""
    return torch.sigmoid(logits)


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    """Linear KL warm-up: beta * (step + 1) / warmup_steps, capped at beta."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup_steps)
