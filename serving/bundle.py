"""A served model on disk (a *bundle*) and the loaded, lock-guarded model the service calls.

Bundle layout (one folder):
    config.json        family + config (models.io)
    model.safetensors  weights (models.io); verified against meta.json's sha256 at load
    calibration.json   threshold, target FPR, sorted validation-normal scores
    meta.json          BundleMeta: name, version, family, tasks, data_version,
                       weights_sha256, metrics (+ optional provenance)

`load_bundle` refuses (ValueError) a bundle whose weights do not match the recorded sha256.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import GenerativeModel
from models.calibration import CALIBRATION_FILE, Calibration
from models.io import CONFIG_FILE, WEIGHTS_FILE, atomic_write_json, load_model, sha256_file

META_FILE = "meta.json"
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, CALIBRATION_FILE, META_FILE)
TASKS = ("generation", "anomaly")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BundleMeta:
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

    def __post_init__(self) -> None:
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
    def from_dict(cls, values: dict[str, Any]) -> BundleMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"meta.json: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(values)
        values["tasks"] = tuple(values.get("tasks", ()))
        values["metrics"] = {str(k): float(v) for k, v in dict(values.get("metrics", {})).items()}
        return cls(**values)


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


class ServedModel:
    """A verified model with its calibration and metadata, safe to call from many threads.

    Every model call holds `lock`: requests never run the same network concurrently, and all
    randomness comes from a per-request `torch.Generator` (never the global RNG), so a seed
    gives the same images whatever else the server is doing.
    """

    def __init__(
        self, meta: BundleMeta, calibration: Calibration, model: GenerativeModel, lock: Any
    ) -> None:
        self.meta = meta
        self.calibration = calibration
        self.model = model
        self.lock = lock
        self.supports_steps = "steps" in inspect.signature(model.sample).parameters

    @property
    def conditional(self) -> bool:
        return self.model.conditional

    @property
    def has_reconstruction(self) -> bool:
        return self.model.has_reconstruction

    def describe(self) -> dict[str, Any]:
        """Public description (for /metadata and response headers of a result)."""
        return {
            **self.meta.to_dict(),
            "threshold": self.calibration.threshold,
            "target_fpr": self.calibration.target_fpr,
            "conditional": self.conditional,
            "supports_steps": self.supports_steps,
            "has_reconstruction": self.has_reconstruction,
        }

    def score(self, images: np.ndarray) -> np.ndarray:
        """Anomaly scores (N,) float64 of float32 images (N, 1, 28, 28) in [0, 1]."""
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with self.lock, torch.no_grad():
            scores = self.model.anomaly_score(batch)
        return scores.detach().double().cpu().numpy()

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        with self.lock, torch.no_grad():
            out = self.model.reconstruct(batch)
        return out.detach().float().cpu().numpy()

    def sample(
        self, n: int, seed: int, label: int | None = None, steps: int | None = None
    ) -> np.ndarray:
        """`n` images (N, 1, 28, 28) float32 in [0, 1], a pure function of the arguments."""
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        labels = None if label is None else torch.full((n,), int(label), dtype=torch.long)
        kwargs: dict[str, Any] = {} if steps is None else {"steps": int(steps)}
        with self.lock, torch.no_grad():
            out = self.model.sample(n, generator=generator, labels=labels, **kwargs)
        return out.detach().float().clamp(0.0, 1.0).cpu().numpy()


def model_executor(torch_threads: int = 0, workers: int = 4) -> ThreadPoolExecutor:
    """The threads that run model calls, each with torch's intra-op thread count set.

    `torch.set_num_threads` in the main thread does not reach threads started later (their
    OpenMP pool keeps its default size), and an oversubscribed OpenMP pool can make a small
    batch 100x slower on a busy host. 0 = the main thread's current setting.
    """
    threads = torch_threads or torch.get_num_threads()
    return ThreadPoolExecutor(
        workers,
        thread_name_prefix="genops-model",
        initializer=torch.set_num_threads,
        initargs=(threads,),
    )


def load_bundle(directory: Path, cache: dict[tuple[str, str], Any] | None = None) -> ServedModel:
    """Verify and load a bundle. Raises ValueError/FileNotFoundError when it cannot be served.

    `cache` (keyed by weights + config hash) lets several roles that point at the same
    artifacts share one network and one lock.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    calibration = Calibration.load(directory)
    key = (meta.weights_sha256, sha256_file(directory / CONFIG_FILE))
    if cache is not None and key in cache:
        verify_weights(directory, meta.weights_sha256)
        model, lock = cache[key]
    else:
        model = load_model(directory, expected_sha256=meta.weights_sha256)
        lock = threading.Lock()
        if cache is not None:
            cache[key] = (model, lock)
    if meta.family != model.family:
        raise ValueError(f"{directory}: meta.family {meta.family!r} but config is {model.family!r}")
    return ServedModel(meta, calibration, model, lock)


def write_bundle(
    directory: Path, model: GenerativeModel, calibration: Calibration, meta: dict[str, Any]
) -> BundleMeta:
    """Save weights + config + calibration and a meta.json (weights_sha256 filled in)."""
    from models.io import save_model

    sha = save_model(model, directory)
    calibration.save(directory)
    full = BundleMeta.from_dict({"family": model.family, **meta, "weights_sha256": sha})
    write_meta(directory, full)
    return full
