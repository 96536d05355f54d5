"""The VAE family: reparameterised ELBO training, deterministic bounds, prior sampling."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from models import rng
from models.base import Batch, Capabilities, GenerativeModel, Optimizers
from models.layers import ImageModelOptions, LatentGaussianMixture
from models.tensors import NUM_CLASSES, check_labels
from models.vae.config import VAEConfig
from models.vae.networks import Posterior, build_networks
from models.vae.objective import (
    ElboTerms,
    decoder_mean,
    free_bits_kl,
    gaussian_kl,
    kl_weight,
    log_likelihood,
    log_normal,
)

MAX_DECODE_BATCH = 8192  # images decoded at once by the multi-sample bounds


class VAE(ImageModelOptions, GenerativeModel):
    """Variational autoencoder with a diagonal-Gaussian encoder and a N(0, I) prior.

    * Training maximises the beta-weighted ELBO with one reparameterised sample per image
      (noise from the trainer's generator); the KL weight warms up linearly to `beta`
      (with `free_bits`, each latent dimension's batch-mean KL is floored in the loss).
    * `elbo` is deterministic: the analytic KL plus the reconstruction term averaged over
      the first `elbo_samples` rows of a fixed noise buffer (`eval_eps`, drawn once from
      `eval_seed` and saved with the weights), identical for every image, so values do not
      depend on batch composition. `iwae_bound(images, k)` uses the first k rows likewise.
    * `anomaly_score` is the negative ELBO in nats per image (higher = less likely).
    * `sample` decodes latent draws and returns the decoder mean (sigmoid of the logits),
      not binarised pixels. The latents come from N(0, I) (`sampling_prior="normal"`) or
      from Gaussians fitted to the training posterior means (ex-post density estimation:
      `latent_prior`, running moments updated deterministically in every training step and
      saved as buffers; one per digit class for "class_gaussians", drawn by class
      frequency). The model is unconditional: labels are ignored.
    """

    family: ClassVar[str] = "vae"
    config_cls: ClassVar[type[VAEConfig]] = VAEConfig
    config: VAEConfig

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config)
        self.encoder, self.decoder = build_networks(
            config.arch, config.channels, config.hidden_dim, config.latent_dim
        )
        seeded = torch.Generator().manual_seed(config.eval_seed)
        eps = torch.randn(config.max_iwae_k, config.latent_dim, generator=seeded)
        self.register_buffer("eval_eps", eps)
        self.latent_prior: LatentGaussianMixture | None = None
        if config.sampling_prior != "normal":
            components = NUM_CLASSES if config.sampling_prior == "class_gaussians" else 1
            self.latent_prior = LatentGaussianMixture(
                components, config.latent_dim, config.prior_momentum
            )
        if self._use_channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(reconstruction=True, likelihood=True, encoder=True, interpolation=True)

    # ---- networks ---------------------------------------------------------------------
    def _posterior(self, images: Tensor) -> Posterior:
        mean, logvar = self.encoder(images)
        return Posterior(mean.float(), logvar.float())

    def _log_likelihood(self, logits: Tensor, images: Tensor) -> Tensor:
        return log_likelihood(logits.float(), images, self.config.decoder, self.config.gaussian_std)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Posterior means (N, latent_dim)."""
        return self._posterior(self._prepare(images)).mean

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Decoder means (N, 1, 28, 28) in [0, 1] for latents (N, latent_dim)."""
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            dim = self.config.latent_dim
            raise ValueError(f"z must have shape (N, {dim}), got {tuple(z.shape)}")
        return decoder_mean(self.decoder(z.float().to(self.device)).float())

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """Decoder mean at the posterior mean."""
        return self.decode(self.encode(images))

    # ---- training ---------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def training_step(self, batch: Batch, optimizers: Optimizers) -> dict[str, float]:
        x = self._prepare(batch.images)
        with self._autocast():
            posterior = self._posterior(x)
            noise = rng.randn(posterior.mean.shape, batch.generator, x.device)
            z = posterior.mean + (0.5 * posterior.logvar).exp() * noise
            logits = self.decoder(z)
        recon = -self._log_likelihood(logits, x).mean()
        kl = gaussian_kl(posterior).mean()
        weight = kl_weight(batch.step, self.config.beta, self.config.kl_warmup_steps)
        kl_loss = free_bits_kl(posterior, self.config.free_bits) if self.config.free_bits else kl
        loss = recon + weight * kl_loss
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if self.latent_prior is not None:  # fitted to this step's posterior means or samples
            fitted = posterior.mean if self.config.prior_fit == "means" else z.float()
            self.latent_prior.update(fitted.detach(), self._components(batch))
        recon_v, kl_v = float(recon.detach()), float(kl.detach())
        return {"loss": float(loss.detach()), "recon": recon_v, "kl": kl_v, "kl_weight": weight}

    def _components(self, batch: Batch) -> Tensor:
        """Which fitted Gaussian each training image updates: its class, or the only one."""
        n = batch.images.shape[0]
        if self.config.sampling_prior != "class_gaussians":
            return torch.zeros(n, dtype=torch.long, device=self.device)
        labels = check_labels(batch.labels, n)
        if labels is None:
            raise ValueError("sampling_prior='class_gaussians' needs labels in training_step")
        return labels.to(self.device)

    @torch.no_grad()
    def validation_loss(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """Mean per-image negative ELBO ("loss"), ELBO, reconstruction NLL and KL, in nats."""
        terms = self.elbo_terms(images)
        return {
            "loss": float(-terms.elbo.mean()),
            "elbo": float(terms.elbo.mean()),
            "recon": float(terms.recon.mean()),
            "kl": float(terms.kl.mean()),
        }

    # ---- deterministic bounds ---------------------------------------------------------
    def _latents(self, posterior: Posterior, k: int) -> Tensor:
        """(k, N, D) latents mean + std * eval_eps[:k], the same noise rows for every image."""
        std = (0.5 * posterior.logvar).exp()
        return posterior.mean + std * self.eval_eps[:k, None, :]

    def _decode_log_likelihood(self, z: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) (k, N) for latents (k, N, D), decoding in bounded chunks."""
        k, n, dim = z.shape
        rows = max(1, MAX_DECODE_BATCH // max(n, 1))
        out = []
        for start in range(0, k, rows):
            zc = z[start : start + rows]
            logits = self.decoder(zc.reshape(-1, dim)).float()
            xr = x.expand(zc.shape[0], *x.shape).reshape(-1, *x.shape[1:])
            out.append(self._log_likelihood(logits, xr).view(zc.shape[0], n))
        return torch.cat(out)

    @torch.no_grad()
    def elbo_terms(self, images: Tensor) -> ElboTerms:
        """Per-image ELBO, reconstruction NLL and KL in nats (fixed noise, deterministic)."""
        x = self._prepare(images)
        posterior = self._posterior(x)
        z = self._latents(posterior, self.config.elbo_samples)
        recon = -self._decode_log_likelihood(z, x).mean(0)
        kl = gaussian_kl(posterior)
        return ElboTerms(-(recon + kl), recon, kl)

    def elbo(self, images: Tensor) -> Tensor:
        """Per-image ELBO in nats (N,)."""
        return self.elbo_terms(images).elbo

    @torch.no_grad()
    def iwae_bound(self, images: Tensor, k: int = 64) -> Tensor:
        """Per-image importance-weighted bound log (1/k) sum_i p(x, z_i) / q(z_i|x) (N,)."""
        if not isinstance(k, int) or not 1 <= k <= self.config.max_iwae_k:
            raise ValueError(f"k must be an int in 1..{self.config.max_iwae_k}, got {k!r}")
        x = self._prepare(images)
        posterior = self._posterior(x)
        z = self._latents(posterior, k)
        log_prior = log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
        log_q = log_normal(z, posterior.mean, posterior.logvar)
        log_w = self._decode_log_likelihood(z, x) + log_prior - log_q
        return torch.logsumexp(log_w, dim=0) - math.log(k)

    # ---- generation and scoring ---------------------------------------------------------
    def _sample(
        self, n: int, generator: torch.Generator | None, labels: Tensor | None, steps: int | None
    ) -> Tensor:
        """Decoder means of `n` latents from `generator`: N(0, I) or the fitted Gaussians."""
        if self.latent_prior is not None:
            return self.decode(self.latent_prior.sample(n, generator))
        return self.decode(rng.randn((n, self.config.latent_dim), generator, self.device))

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
        """Decode `steps` evenly spaced points between the posterior means of images a and b.

        a and b are single images, (1, 28, 28) or (1, 1, 28, 28); returns (steps, 1, 28, 28).
        """
        if not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an int >= 2, got {steps!r}")
        ends = [x.reshape(-1, 1, 28, 28) if x.numel() == 784 else x for x in (a, b)]
        if any(x.shape[0] != 1 for x in ends):
            raise ValueError("interpolate takes two single images")
        za, zb = self.encode(torch.cat(ends)).unbind(0)
        t = torch.linspace(0.0, 1.0, steps, device=za.device)[:, None]
        return self.decode(torch.lerp(za, zb, t))

    @torch.no_grad()
    def anomaly_score(self, images: Tensor) -> Tensor:
        """Negative ELBO in nats per image (N,), deterministic and batch-independent."""
        return -self.elbo(images)
