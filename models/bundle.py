"""The bundle: one folder that holds everything evaluating or serving a model needs.

Layout (names in models.spec):
    config.json        family + config (models.io)
    model.safetensors  weights (models.io)
    calibration.json   threshold, target FPR, sorted validation-normal scores (models.calibration)
    meta.json          BundleMeta: name, version, family, tasks, data_version, weights_sha256,
                       metrics (+ provenance); written when a registered version is materialized

The pipeline writes a bundle with `write_model_files` (the artifact it registers), serving reads
it with `read_meta` / `verify_weights`; both sides go through this module only.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import Config
from models.io import atomic_write_json, sha256_file
from models.spec import (
    BUNDLE_FILES,
    CALIBRATION_FILE,
    CONFIG_FILE,
    META_FILE,
    MODEL_FILES,
    TASKS,
    WEIGHTS_FILE,
    Tag,
    metrics_from_tags,
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BundleMeta(Config):
    """What a bundle is: identity, provenance and the metrics it was promoted on."""

    name: str
    version: str
    family: str
    weights_sha256: str
    tasks: tuple[str, ...] = ()
    data_version: str = "unknown"
    metrics: dict[str, float] = field(default_factory=dict)
    git_commit: str = "unknown"
    params_hash: str = "unknown"
    source: str = ""

    def validate(self) -> None:
        for name in ("name", "version", "family"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"meta.{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.weights_sha256, str) or not _SHA256.match(self.weights_sha256):
            raise ValueError(
                f"meta.weights_sha256 must be 64 lowercase hex chars, got {self.weights_sha256!r}"
            )
        unknown = sorted(set(self.tasks) - set(TASKS))
        if unknown:
            raise ValueError(f"meta.tasks has unknown task(s) {unknown}; known: {list(TASKS)}")
        bad = {k: v for k, v in self.metrics.items() if not isinstance(v, int | float)}
        if bad:
            raise ValueError(f"meta.metrics values must be numbers, got {bad}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"tasks": list(self.tasks)}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> BundleMeta:
        """Strict (unknown keys named), with metrics coerced to floats."""
        values = dict(values or {})
        values["metrics"] = {str(k): float(v) for k, v in dict(values.get("metrics", {})).items()}
        return super().from_dict(values)


def read_meta(directory: Path) -> BundleMeta:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {META_FILE} in {directory}")
    return BundleMeta.from_dict(json.loads(path.read_text()))


def write_meta(directory: Path, meta: BundleMeta) -> Path:
    path = Path(directory) / META_FILE
    atomic_write_json(path, meta.to_dict())
    return path


def verify_weights(directory: Path, expected_sha256: str) -> None:
    """Raise ValueError when the bundle's weights file does not hash to `expected_sha256`."""
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {directory}")
    actual = sha256_file(weights)
    if actual != expected_sha256:
        raise ValueError(
            f"weights checksum mismatch for {weights}: expected {expected_sha256}, got {actual}"
        )


def copy_bundle(src: Path, dst: Path) -> BundleMeta:
    """Copy the four bundle files from `src` to `dst`, verifying the weights on the copy."""
    src, dst = Path(src), Path(dst)
    meta = read_meta(src)
    dst.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:
        shutil.copy2(src / name, dst / name)
    verify_weights(dst, meta.weights_sha256)
    return meta


def write_model_files(dst: Path, model_dir: Path, calibration_dir: Path) -> str:
    """Assemble the registrable part of a bundle (config, weights, calibration) in `dst`;
    return the weights sha256."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(Path(model_dir) / name, dst / name)
    shutil.copy2(Path(calibration_dir) / CALIBRATION_FILE, dst / CALIBRATION_FILE)
    return sha256_file(dst / WEIGHTS_FILE)


def check_model_files(directory: Path, what: str) -> None:
    """Raise FileNotFoundError naming the first bundle file `directory` lacks."""
    for name in MODEL_FILES:
        if not (Path(directory) / name).is_file():
            raise FileNotFoundError(f"{what}: artifact has no {name}")


def meta_from_tags(
    name: str, version: str, tags: dict[str, str], tasks: tuple[str, ...] = (), source: str = ""
) -> BundleMeta:
    """BundleMeta of a registered version from its lineage and `metric.*` tags."""
    for key in (Tag.FAMILY, Tag.WEIGHTS_SHA256):
        if not tags.get(key):
            raise ValueError(f"{name} v{version} has no {key!r} tag")
    return BundleMeta(
        name=name,
        version=str(version),
        family=tags[Tag.FAMILY],
        weights_sha256=tags[Tag.WEIGHTS_SHA256],
        tasks=tasks,
        data_version=tags.get(Tag.DATA_VERSION, "unknown"),
        metrics=metrics_from_tags(tags),
        git_commit=tags.get(Tag.GIT_COMMIT, "unknown"),
        params_hash=tags.get(Tag.PARAMS_HASH, "unknown"),
        source=source,
    )
