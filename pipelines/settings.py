"""Read params.yaml (the DVC params file) into typed configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipelines.data.dataset import SplitConfig
from pipelines.data.validation import ValidationConfig

DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found (run from the project root)")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise ValueError(f"params section {name!r} must be a mapping, got {type(value).__name__}")
    return value


def split_config(params: dict[str, Any]) -> SplitConfig:
    return SplitConfig.from_dict(section(params, "data"))


def validation_config(params: dict[str, Any]) -> ValidationConfig:
    return ValidationConfig.from_dict(section(params, "validate"))
