"""Frozen, validated configuration of the VAE family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from models.base import ModelConfig, require
from models.layers import check_image_model_config

DECODERS = ("bernoulli", "gaussian")
ARCHES = ("conv", "mlp")
SAMPLING_PRIORS = ("normal", "gaussian", "class_gaussians")
PRIOR_FITS = ("means", "samples")
# Every key a VAE config had before `arch` and the fitted sampling prior existed. A dict holding
# all of them is a saved config of that version: keys it lacks take their old behaviour
# (`LEGACY_VALUES`), so its weights load and sample as before. Partial dicts (params.yaml) get
# the current defaults.
V1_KEYS = frozenset({
    "latent_dim", "channels", "hidden_dim", "decoder", "gaussian_std", "beta", "kl_warmup_steps",
    "lr", "elbo_samples", "max_iwae_k", "eval_seed", "bf16_autocast", "channels_last",
})  # fmt: skip
LEGACY_VALUES: dict[str, Any] = {
    "arch": "conv",
    "sampling_prior": "normal",
    "prior_momentum": 0.05,
    "prior_fit": "means",
    "free_bits": 0.0,
}


@dataclass(frozen=True)
class VAEConfig(ModelConfig):
    """VAE hyperparameters.

    The encoder is two stride-2 convolutions (`channels`, 28 -> 14 -> 7) and a hidden
    layer of `hidden_dim` units; the decoder mirrors it. `decoder="bernoulli"` reads the
    outputs as pixel logits (BCE); `"gaussian"` as means of N(mean, gaussian_std^2).
    The KL weight ramps linearly from 0 to `beta` over `kl_warmup_steps` (0 = no ramp);
    `free_bits` (nats per latent dimension, 0 = off) floors each dimension's batch-mean KL in
    the training loss only. `arch="mlp"` is the pytorch/examples network instead
    (784 -> `hidden_dim` -> `latent_dim`, ReLU; `channels` unused).
    `sampling_prior` is what `sample` draws latents from: "normal" is the N(0, I) prior;
    "gaussian" / "class_gaussians" is ex-post density estimation - one full-covariance
    Gaussian, or one per digit class (mixed by class frequency), fitted to the posterior
    means (`prior_fit="means"`) or reparameterised posterior samples ("samples": the
    aggregate posterior, wider) of the training images, with running moments (EMA rate
    `prior_momentum`), saved with the weights. The ELBO, IWAE bound and anomaly score
    always use the N(0, I) prior.
    Evaluation bounds use fixed noise drawn once from `eval_seed`: the ELBO averages
    `elbo_samples` draws, `iwae_bound` accepts up to `max_iwae_k` importance samples.
    `bf16_autocast` runs the training forward pass in bfloat16 (bounds, scores and samples
    stay float32); with `channels_last` it is the fastest setting measured on the
    AVX512-BF16 CPU here. The default "auto" turns bf16 on only where the device computes in
    bf16 natively (models.tensors.native_bf16); elsewhere it is slower than fp32.
    """

    arch: str = "conv"
    latent_dim: int = 16  # 8 before the baselines study (docs/baselines.md)
    channels: tuple[int, ...] = (32, 64)
    hidden_dim: int = 256
    decoder: str = "bernoulli"
    gaussian_std: float = 0.1
    beta: float = 1.0
    kl_warmup_steps: int = 500
    free_bits: float = 0.0
    sampling_prior: str = "class_gaussians"  # "normal" before (docs/baselines.md)
    prior_momentum: float = 0.05
    prior_fit: str = "samples"  # wider than "means": more recall (docs/baselines.md)
    lr: float = 1e-3
    elbo_samples: int = 4
    max_iwae_k: int = 256
    eval_seed: int = 0
    bf16_autocast: bool | str = "auto"  # true, false, or "auto": on where bf16 is native
    channels_last: bool = True

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Self:
        """As `ModelConfig.from_dict`; a complete version-1 dict keeps its old behaviour."""
        values = dict(values or {})
        if set(values) >= V1_KEYS:
            values = LEGACY_VALUES | values
        return super().from_dict(values)

    def validate(self) -> None:
        check_image_model_config(self, ARCHES)
        require(
            isinstance(self.hidden_dim, int) and 1 <= self.hidden_dim <= 4096,
            f"hidden_dim must be an int in 1..4096, got {self.hidden_dim!r}",
        )
        require(
            self.decoder in DECODERS, f"decoder must be one of {DECODERS}, got {self.decoder!r}"
        )
        require(
            0.0 < self.gaussian_std <= 1.0,
            f"gaussian_std must be in (0, 1], got {self.gaussian_std!r}",
        )
        require(0.0 <= self.beta <= 100.0, f"beta must be in [0, 100], got {self.beta!r}")
        require(
            isinstance(self.kl_warmup_steps, int) and self.kl_warmup_steps >= 0,
            f"kl_warmup_steps must be an int >= 0, got {self.kl_warmup_steps!r}",
        )
        require(
            0.0 <= self.free_bits <= 10.0, f"free_bits must be in [0, 10], got {self.free_bits!r}"
        )
        require(
            self.sampling_prior in SAMPLING_PRIORS,
            f"sampling_prior must be one of {SAMPLING_PRIORS}, got {self.sampling_prior!r}",
        )
        require(
            self.prior_fit in PRIOR_FITS,
            f"prior_fit must be one of {PRIOR_FITS}, got {self.prior_fit!r}",
        )
        require(
            0.0 < self.prior_momentum <= 1.0,
            f"prior_momentum must be in (0, 1], got {self.prior_momentum!r}",
        )
        require(0.0 < self.lr <= 1.0, f"lr must be in (0, 1], got {self.lr!r}")
        require(
            isinstance(self.max_iwae_k, int) and 1 <= self.max_iwae_k <= 10_000,
            f"max_iwae_k must be an int in 1..10000, got {self.max_iwae_k!r}",
        )
        require(
            isinstance(self.elbo_samples, int) and 1 <= self.elbo_samples <= self.max_iwae_k,
            f"elbo_samples must be an int in 1..max_iwae_k, got {self.elbo_samples!r}",
        )
        require(
            isinstance(self.eval_seed, int) and self.eval_seed >= 0,
            f"eval_seed must be an int >= 0, got {self.eval_seed!r}",
        )
