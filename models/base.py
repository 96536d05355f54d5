"""The one contract every generator family implements.

The trainer, the evaluator and the service speak only this interface; they never
branch on the family. Images are float tensors of shape (N, 1, 28, 28) in [0, 1];
labels are int64 tensors of shape (N,) with values 0..9.
"""

from __future__ import annotations

import itertools
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from models.config import ModelConfig, require  # noqa: F401  (the config base, re-exported)
from models.tensors import check_labels, random_labels, use_bf16


@dataclass(frozen=True)
class Capabilities:
    """What a model can do beyond the required contract, declared by its family.

    Callers (evaluation, serving) read these flags instead of probing methods or signatures;
    the contract tests check that every flag is truthful.
    """

    conditional: bool = False  # `sample(labels=...)` produces the requested digits
    sampling_steps: bool = False  # `sample(steps=k)` sets the sampler's network evaluations
    max_sampling_steps: int | None = None  # the largest `steps` accepted (sampling_steps only)
    reconstruction: bool = False  # `reconstruct(images)`
    likelihood: bool = False  # `elbo(images)` and `iwae_bound(images, k)`, nats per image
    encoder: bool = False  # `encode(images)` -> latent codes (N, D)
    interpolation: bool = False  # `interpolate(a, b, steps)` between two images
    denoising: bool = False  # `denoise(images, strength, generator=...)`: cleans corrupted images

    def __post_init__(self) -> None:
        if self.max_sampling_steps is not None and not self.sampling_steps:
            raise ValueError("max_sampling_steps is only meaningful with sampling_steps")


Optimizers = dict[str, torch.optim.Optimizer]


@dataclass(frozen=True)
class Batch:
    """What one training step gets from the trainer.

    `step` counts optimisation steps from 0 across resumes; all randomness of the step must
    come from `generator`, so a run is reproducible and resumes bit for bit.
    """

    images: Tensor  # (N, 1, 28, 28) floats in [0, 1], on the model's device
    labels: Tensor | None  # (N,) int64 digits 0..9 (the trainer always passes them)
    step: int
    generator: torch.Generator


def _check_count(n: Any) -> int:
    """`n` as an int >= 1; ValueError for bools, floats and anything below 1."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return int(n)


class GenerativeModel(nn.Module, ABC):
    """Base class of the four families (autoencoder, vae, gan, diffusion).

    A family owns its networks, its objective and its optimizers; the generic trainer
    in `pipelines/` owns the loop, checkpoints, early stopping and I/O.

    Devices: a model computes on the device of its parameters (`device`). Inputs may come
    from any device; outputs of `sample`, `anomaly_score` and `reconstruct` stay on the
    model's device (callers `.cpu()` them). Random draws happen on the generator's device
    (the model's when no generator is given) and are then moved, so a CPU generator gives
    the same noise whatever device the model is on.
    """

    family: ClassVar[str]
    config_cls: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise ValueError(
                f"{type(self).__name__} needs a {self.config_cls.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config

    @property
    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What this model can do beyond the required contract (may depend on the config)."""

    @property
    def conditional(self) -> bool:
        """Shorthand for `capabilities.conditional`."""
        return self.capabilities.conditional

    @property
    def has_reconstruction(self) -> bool:
        """Shorthand for `capabilities.reconstruction`."""
        return self.capabilities.reconstruction

    @property
    def device(self) -> torch.device:
        """Where the model's parameters and buffers live."""
        for tensor in itertools.chain(self.parameters(), self.buffers()):
            return tensor.device
        return torch.device("cpu")

    # ---- training -------------------------------------------------------------------
    @abstractmethod
    def configure_optimizers(self) -> Optimizers:
        """The optimizers this family steps, by name (saved in checkpoints)."""

    @abstractmethod
    def training_step(self, batch: Batch, optimizers: Optimizers) -> dict[str, float]:
        """One optimisation step on a batch (forward, backward, optimizer step(s)).

        All randomness must come from `batch.generator` so training is reproducible and
        resumable. Returns scalar values to log (must include "loss").
        """

    @abstractmethod
    def validation_loss(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """Deterministic validation metrics for a batch; "loss" drives early stopping.

        Called under `torch.no_grad()` with the model in eval mode.
        """

    def on_train_step_end(self, step: int) -> None:
        """Hook after each optimisation step (e.g. EMA update)."""

    def fit_scorer(self, images: Tensor) -> None:
        """Fit what `anomaly_score` keeps from the training images (e.g. a feature bank),
        with the final weights; the trainer calls it once training is done. Default: nothing,
        the score is the trained networks alone."""

    # ---- generation -----------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        steps: int | None = None,
    ) -> Tensor:
        """Draw `n` images (n, 1, 28, 28) in [0, 1] on the model's device.

        The same generator state gives the same images. Arguments are validated here, once,
        for every family (ValueError naming the argument):
          * `n`: an int >= 1 (not a bool or a float).
          * `labels`: None or n integer class ids in 0..9. A conditional model draws the
            given digits; with labels=None it first draws n labels uniformly at random from
            `generator` (`random_labels`), before any other draw. An unconditional model
            ignores labels (valid ones; bad ones are still a ValueError).
          * `steps`: only for models whose `capabilities.sampling_steps` is True: the
            sampler's network evaluations, an int >= 1 (and <= `max_sampling_steps`);
            None means the family's configured default.
        """
        return self._sample(*self.sample_arguments(n, generator, labels, steps))

    def sample_arguments(
        self,
        n: int,
        generator: torch.Generator | None,
        labels: Tensor | None,
        steps: int | None,
    ) -> tuple[int, torch.Generator | None, Tensor | None, int | None]:
        """`sample`'s arguments validated and resolved as `_sample` receives them.

        Family-specific samplers with extra options (e.g. `Diffusion.guided_sample`) call
        this too, so every entry point follows the rules documented on `sample`.
        """
        caps = self.capabilities
        n = _check_count(n)
        labels = check_labels(labels, n)
        steps = self.check_steps(steps)
        if not caps.conditional:
            labels = None
        elif labels is None:
            labels = random_labels(n, generator, self.device)
        else:
            labels = labels.to(self.device)
        return n, generator, labels, steps

    def check_steps(self, steps: int | None) -> int | None:
        """`steps` validated as `sample` documents it (None passes through), else ValueError."""
        if steps is None:
            return None
        caps = self.capabilities
        if not caps.sampling_steps:
            raise ValueError(f"{self.family} has no sampling steps: steps must be None")
        limit = caps.max_sampling_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        if limit is not None and steps > limit:
            raise ValueError(f"steps must be an int in 1..{limit}, got {steps!r}")
        return int(steps)

    @abstractmethod
    def _sample(
        self, n: int, generator: torch.Generator | None, labels: Tensor | None, steps: int | None
    ) -> Tensor:
        """The family's sampler, called by `sample` with validated arguments.

        `labels` is a long tensor (n,) on the model's device for a conditional model and None
        for an unconditional one; `steps` is None unless the family declares sampling_steps.
        """

    # ---- scoring --------------------------------------------------------------------
    @abstractmethod
    def anomaly_score(self, images: Tensor) -> Tensor:
        """One finite float per image (N,), higher = more anomalous.

        Deterministic and independent of batch composition: scoring a batch and
        scoring its images one by one give the same values.
        """

    # ---- optional extras (declared in `capabilities`) ----------------------------------
    def reconstruct(self, images: Tensor) -> Tensor:
        """Reconstruction (N, 1, 28, 28) in [0, 1] (`capabilities.reconstruction`)."""
        raise NotImplementedError(f"{self.family} has no reconstruction")

    def denoise(
        self,
        images: Tensor,
        strength: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Cleaned images (N, 1, 28, 28) in [0, 1] from corrupted ones (`capabilities.denoising`).

        `strength` in [0, 1] says how much of the input to forget (the family documents its
        meaning; None = the family's default); all randomness comes from `generator`. Families
        without it denoise, if at all, through `reconstruct`.
        """
        raise NotImplementedError(f"{self.family} has no strength-controlled denoising")

    def encode(self, images: Tensor) -> Tensor:
        """Latent codes (N, D) of images (`capabilities.encoder`)."""
        raise NotImplementedError(f"{self.family} has no encoder")

    def elbo(self, images: Tensor) -> Tensor:
        """Per-image evidence lower bound in nats (N,) (`capabilities.likelihood`)."""
        raise NotImplementedError(f"{self.family} has no likelihood bound")

    def iwae_bound(self, images: Tensor, k: int = 64) -> Tensor:
        """Per-image importance-weighted bound in nats (N,) (`capabilities.likelihood`)."""
        raise NotImplementedError(f"{self.family} has no likelihood bound")

    def interpolate(self, a: Tensor, b: Tensor, steps: int = 8) -> Tensor:
        """`steps` images (steps, 1, 28, 28) from image a to b (`capabilities.interpolation`)."""
        raise NotImplementedError(f"{self.family} has no interpolation")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def training_precision(self) -> str:
        """ "bf16" when training steps run under bf16 autocast on this model's device (its
        config's `bf16_autocast` resolved by models.tensors.use_bf16), else "fp32"."""
        setting = getattr(self.config, "bf16_autocast", False)
        return "bf16" if use_bf16(setting, self.device) else "fp32"
