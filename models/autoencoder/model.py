"""The autoencoder family: objective, corruption, scoring and latent-Gaussian sampling."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from models import rng
from models.autoencoder.config import AutoencoderConfig
from models.autoencoder.networks import build_networks
from models.base import Batch, Capabilities, GenerativeModel, Optimizers
from models.layers import ImageModelOptions, LatentGaussianMixture
from models.tensors import NUM_CLASSES, check_images, check_labels


class Autoencoder(ImageModelOptions, GenerativeModel):
    """Classic bottleneck autoencoder (optionally denoising) on 28x28 digits.

    * Training minimises a per-pixel BCE (on logits) or MSE reconstruction loss. With
      `denoise_std` / `mask_prob` the encoder sees a corrupted input (Gaussian noise,
      clipped to [0, 1], and/or pixels zeroed with probability `mask_prob`, all drawn from
      the trainer's generator) while the target stays the clean image.
    * `anomaly_score` is the per-image mean squared reconstruction error (mean over the
      784 pixels of (reconstruct(x) - x)^2); it has no randomness and no batch coupling.
    * `sample` is deliberately a weak generator: an autoencoder has no prior, so we fit
      Gaussians (full or diagonal covariance) to the training latents - running EMA
      statistics kept as buffers and updated deterministically in every training step,
      one per digit class when `conditional`, else a single one - and decode draws from
      them. Samples are blurrier and less varied than
      a VAE's or GAN's, and a single Gaussian (conditional=False) often lands between
      digit clusters: it is a baseline generator by design.
    """

    family: ClassVar[str] = "autoencoder"
    config_cls: ClassVar[type[AutoencoderConfig]] = AutoencoderConfig
    config: AutoencoderConfig

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__(config)
        self.encoder, self.decoder = build_networks(
            config.arch, config.latent_dim, config.hidden_dims, config.channels
        )
        self.latent_prior = LatentGaussianMixture(
            NUM_CLASSES if config.conditional else 1,
            config.latent_dim,
            config.prior_momentum,
            full_cov=config.latent_prior == "full",
        )
        if self._use_channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(conditional=self.config.conditional, reconstruction=True, encoder=True)

    # ---- networks ---------------------------------------------------------------------
    def _logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(latents, pixel logits) for prepared images, both float32."""
        z = self.encoder(images)
        return z.float(), self.decoder(z).float()

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Latent codes (N, latent_dim) of clean images."""
        return self.encoder(self._prepare(images)).float()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Images (N, 1, 28, 28) in [0, 1] from latent codes (N, latent_dim)."""
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            dim = self.config.latent_dim
            raise ValueError(f"z must have shape (N, {dim}), got {tuple(z.shape)}")
        return torch.sigmoid(self.decoder(z.float().to(self.device)).float())

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        return torch.sigmoid(self._logits(self._prepare(images))[1])

    # ---- training ---------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        params = list(self.encoder.parameters()) + list(self.decoder.parameters())
        opt = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        return {"adam": opt}

    def _corrupt(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Denoising-AE input corruption; all noise comes from `generator`."""
        cfg = self.config
        out = images
        if cfg.denoise_std > 0:
            noise = rng.randn(images.shape, generator, images.device)
            out = (out + cfg.denoise_std * noise).clamp(0.0, 1.0)
        if cfg.mask_prob > 0:
            out = out * (rng.rand(images.shape, generator, images.device) >= cfg.mask_prob)
        if self._use_channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _recon_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.config.loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(torch.sigmoid(logits), target)

    def training_step(self, batch: Batch, optimizers: Optimizers) -> dict[str, float]:
        clean = self._prepare(batch.images)
        corrupted = self.config.denoise_std > 0 or self.config.mask_prob > 0
        inputs = self._corrupt(clean, batch.generator) if corrupted else clean
        with self._autocast():
            z, logits = self._logits(inputs)
        loss = self._recon_loss(logits, clean)
        opt = optimizers["adam"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # the prior is fitted to latents of clean images (what `encode` returns)
        if corrupted:
            with torch.no_grad(), self._autocast():
                z = self.encoder(clean).float()
        self.latent_prior.update(z, self._components(batch.labels, clean.shape[0]).to(z.device))
        return {"loss": float(loss.detach())}

    def _components(self, labels: Tensor | None, n: int) -> Tensor:
        """Which latent Gaussian each training image updates: its class, or the only one."""
        if not self.config.conditional:
            return torch.zeros(n, dtype=torch.long, device=self.device)
        labels = check_labels(labels, n)
        if labels is None:
            raise ValueError("a conditional autoencoder needs labels in training_step")
        return labels.to(self.device)

    @torch.no_grad()
    def validation_loss(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        clean = self._prepare(images)
        _, logits = self._logits(clean)
        mse = (torch.sigmoid(logits) - clean).square().mean()
        return {"loss": float(self._recon_loss(logits, clean)), "mse": float(mse)}

    # ---- generation and scoring ---------------------------------------------------------
    def _sample(
        self, n: int, generator: torch.Generator | None, labels: Tensor | None, steps: int | None
    ) -> Tensor:
        """Decode `n` draws from the Gaussians fitted to training latents (weak by design).

        Conditional: `labels` pick the per-class Gaussian. Unconditional: the only one.
        """
        return self.decode(self.latent_prior.sample(n, generator, labels))

    @torch.no_grad()
    def anomaly_score(self, images: Tensor) -> Tensor:
        """Per-image mean squared reconstruction error (N,)."""
        images = check_images(images).to(self.device)
        return (self.reconstruct(images) - images).square().flatten(1).mean(1)
