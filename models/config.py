"""The one config base: frozen, typed, validated dataclasses built strictly from plain dicts.

Every config in the project derives from `Config`: unknown keys are refused with the key named,
and `validate` raises ValueError naming the field. A model family's config derives from its
subclass `ModelConfig` (what `GenerativeModel.config_cls` names); the others (the trainer's, the
evaluator's, the judge's, the data split's, the GX gate's, the promotion gate's, the drift
thresholds) derive from `Config` itself. No torch here, so light modules (the CLI, data,
validation) can use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self


@dataclass(frozen=True)
class Config:
    """Base for every frozen, validated config dataclass.

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


@dataclass(frozen=True)
class ModelConfig(Config):
    """Base for a model family's config (saved as config.json beside the weights)."""

    def __post_init__(self) -> None:
        if hasattr(self, "bf16_autocast"):
            check_bf16_setting(self.bf16_autocast)
        super().__post_init__()


def check_bf16_setting(value: object, name: str = "bf16_autocast") -> None:
    """ValueError unless `value` is true, false or "auto" (the families' `bf16_autocast`:
    "auto" turns bf16 autocast on where the device computes in bf16 natively,
    models.tensors.native_bf16)."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"{name} must be true, false or 'auto', got {value!r}")


def require(condition: bool, message: str) -> None:
    """Config validation helper: raise ValueError(message) unless condition holds."""
    if not condition:
        raise ValueError(message)
