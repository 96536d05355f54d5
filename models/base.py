"""The one contract every generator family implements.

The trainer, the evaluator and the service speak only this interface; they never
branch on the family. Images are float tensors of shape (N, 1, 28, 28) in [0, 1];
labels are int64 tensors of shape (N,) with values 0..9.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import torch
from torch import Tensor, nn

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class ModelConfig:
    """Base for the frozen, validated config dataclass of each family.

    Subclasses add fields with defaults and override `validate` to raise
    `ValueError` with a message naming the field and the bad value.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        """Raise ValueError when a field is out of range."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Self:
        """Build from a plain dict (params.yaml / config.json); unknown keys are an error."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown config key(s) {unknown}; known keys: {sorted(known)}"
            )
        for f in dataclasses.fields(cls):  # YAML/JSON give lists where we keep tuples
            if f.name in values and isinstance(values[f.name], list):
                values[f.name] = tuple(values[f.name])
        return cls(**values)


def require(condition: bool, message: str) -> None:
    """Config validation helper: raise ValueError(message) unless condition holds."""
    if not condition:
        raise ValueError(message)


class GenerativeModel(nn.Module, ABC):
    """Base class of the four families (autoencoder, vae, gan, diffusion).

    A family owns its networks, its objective and its optimizers; the generic trainer
    in `pipelines/` owns the loop, checkpoints, early stopping and I/O.
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

    # ---- training -------------------------------------------------------------------
    @abstractmethod
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers this family steps, by name (saved in checkpoints)."""

    @abstractmethod
    def training_step(
        self,
        images: Tensor,
        labels: Tensor,
        optimizers: dict[str, torch.optim.Optimizer],
        step: int,
        generator: torch.Generator,
    ) -> dict[str, float]:
        """One optimisation step on a batch (forward, backward, optimizer step(s)).

        All randomness must come from `generator` so training is reproducible and
        resumable. Returns scalar values to log (must include "loss").
        """

    @abstractmethod
    def validation_loss(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """Deterministic validation metrics for a batch; "loss" drives early stopping.

        Called under `torch.no_grad()` with the model in eval mode.
        """

    # ---- generation -----------------------------------------------------------------
    @property
    def conditional(self) -> bool:
        """True when `sample(labels=...)` produces the requested digit."""
        return bool(getattr(self.config, "conditional", False))

    @abstractmethod
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """Draw `n` images (N, 1, 28, 28) in [0, 1]. Same generator state -> same images."""

    # ---- scoring --------------------------------------------------------------------
    @abstractmethod
    def anomaly_score(self, images: Tensor) -> Tensor:
        """One finite float per image (N,), higher = more anomalous.

        Deterministic and independent of batch composition: scoring a batch and
        scoring its images one by one give the same values.
        """

    def reconstruct(self, images: Tensor) -> Tensor:
        """Reconstruction in [0, 1] where the family has one."""
        raise NotImplementedError(f"{self.family} has no reconstruction")

    @property
    def has_reconstruction(self) -> bool:
        return type(self).reconstruct is not GenerativeModel.reconstruct

    def on_train_step_end(self, step: int) -> None:
        """Hook after each optimisation step (e.g. EMA update)."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def bf16_autocast(enabled: bool, device_type: str = "cpu") -> torch.autocast:
    """bf16 autocast on `device_type` when `enabled` (the families' `bf16_autocast` option)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled)


def to_channels_last(images: Tensor, enabled: bool) -> Tensor:
    """`images` in channels-last memory format when `enabled` (the `channels_last` option)."""
    return images.contiguous(memory_format=torch.channels_last) if enabled else images


def check_images(images: Tensor) -> Tensor:
    """Validate a batch of images at the model boundary and return it as float32."""
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"images must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    return images


def check_labels(labels: Tensor | None, n: int) -> Tensor | None:
    if labels is None:
        return None
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"expected {n} labels, got {labels.numel()}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")
    return labels
