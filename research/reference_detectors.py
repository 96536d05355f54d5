"""Reference anomaly detectors that are not generative: the rows every generative score is read
against (issue 24; docs/anomaly.md).

- `knn`: research.one_class_knn's nearest-neighbour scorer (blurred, shift-tolerant cosine, k=3,
  chosen on the one-class protocol's validation split), its bank the training split's digits.
- `mahalanobis`: Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
  samples and adversarial attacks": class-conditional Gaussians with one shared covariance in the
  judge classifier's penultimate features, fitted on the training split; an image's score is its
  smallest Mahalanobis distance to a class mean. (The paper's input preprocessing and layer
  ensemble are left out: they are tuned on out-of-distribution data, which we never choose on.)

Both are measured by exactly the evaluation the families get
(pipelines.evaluation.evaluator.detection_metrics): calibrated on validation normals with the same
two-sided budget and input-energy test, scored on the tuned suite and the held-out benchmark.
They land in the leaderboard as reference rows, never ranked and never promoted: a served
detector must be a registered family with its card and gate, and these are not. `genops
reference-detectors` runs them.
"""

from __future__ import annotations

import hashlib
import json
import platform
import resource
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

REFERENCE_FAMILY = "reference"  # the leaderboard's family of these rows (not a model family)
DETECTORS = ("knn", "mahalanobis")
RESULTS_FORMAT = "genops-reference-detectors/1"


class MahalanobisDetector:
    """Tied-covariance class-conditional Gaussians on feature vectors (Lee et al. 2018)."""

    def __init__(self, ridge: float = 1e-6) -> None:
        self.ridge = ridge
        self._whiten: np.ndarray | None = None
        self._means: np.ndarray | None = None

    def fit(self, features: np.ndarray, labels: np.ndarray) -> MahalanobisDetector:
        """Class means and the pooled within-class covariance of (N, D) `features`."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).reshape(-1)
        if x.ndim != 2 or x.shape[0] != y.size or x.shape[0] <= x.shape[1]:
            raise ValueError(f"need (N > D, D) features and N labels, got {x.shape}, {y.shape}")
        classes = np.unique(y)
        means = np.stack([x[y == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, y)]
        cov = centred.T @ centred / x.shape[0]
        cov += self.ridge * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
        values, vectors = np.linalg.eigh(cov)
        self._whiten = vectors / np.sqrt(values)  # x @ W has identity covariance
        self._means = means @ self._whiten
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance to a class mean, per row (higher = stranger)."""
        if self._whiten is None or self._means is None:
            raise ValueError("call fit() before score()")
        z = np.asarray(features, dtype=np.float64) @ self._whiten
        d = (z**2).sum(1)[:, None] - 2.0 * z @ self._means.T + (self._means**2).sum(1)[None, :]
        return np.maximum(d.min(axis=1), 0.0)


def knn_score(train_x: torch.Tensor, batch_size: int = 256) -> Callable[[np.ndarray], np.ndarray]:
    """The kNN scorer with `train_x` as its bank, as an images -> scores function."""
    from research.one_class_knn import KnnScorer

    scorer = KnnScorer().fit(train_x)
    return lambda images: scorer.score(torch.from_numpy(images), batch_size)


def mahalanobis_score(
    judge: Any, train_x: torch.Tensor, train_y: torch.Tensor
) -> Callable[[np.ndarray], np.ndarray]:
    """The Mahalanobis detector in `judge`'s features, fitted on the training split."""
    from pipelines.evaluation.judge import judge_outputs

    features, _ = judge_outputs(judge, train_x)
    detector = MahalanobisDetector().fit(features, train_y.numpy())
    return lambda images: detector.score(judge_outputs(judge, images)[0])


def _peak_rss_gb() -> float:
    scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB here
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def run_reference_detectors(
    params: Mapping[str, Any],
    data_dir: Path,
    judge_dir: Path,
    out_dir: Path,
    detectors: tuple[str, ...] = DETECTORS,
    knn_bank: int | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure each detector with the families' evaluation; rows in the baselines format.

    `knn_bank` caps the kNN bank to a stratified, seeded slice of the training split (None: all
    of it). Writes each detector's calibration and scores under `out_dir/<name>/`.
    """
    from pipelines.data.dataset import SPLITS, load_tensors
    from pipelines.data.versioning import data_version
    from pipelines.evaluation.evaluator import (
        EvalConfig,
        detection_metrics,
        scored_normals,
        stratified_slice,
    )
    from pipelines.evaluation.judge import load_judge
    from pipelines.settings import section
    from pipelines.stages.evaluate import judge_version

    unknown = sorted(set(detectors) - set(DETECTORS))
    if unknown or not detectors:
        raise ValueError(f"unknown detector(s) {unknown}; known: {list(DETECTORS)}")
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    splits = {s: load_tensors(data_dir, s) for s in SPLITS}
    scored = scored_normals(splits, cfg)  # the families' normals (their slice, if capped)
    train_x, train_y = splits["train"]
    version = data_version(data_dir=data_dir)
    rows = []
    for name in detectors:
        t0 = time.perf_counter()
        if name == "knn":
            bank = train_x
            if knn_bank is not None and knn_bank < len(train_x):
                bank = train_x[stratified_slice(train_y, knn_bank, cfg.slice_seed)]
            score, fit_note = knn_score(bank), {"bank": len(bank)}
        else:
            judge = load_judge(judge_dir)
            score = mahalanobis_score(judge, train_x, train_y)
            fit_note = {"judge_version": judge_version(judge_dir)}
        fit_s = time.perf_counter() - t0
        progress(f"{name}: fitted in {fit_s:.1f} s; scoring val, test, suite and held-out")
        metrics, _ = detection_metrics(score, scored, cfg, Path(out_dir) / name)
        seconds = time.perf_counter() - t0
        progress(
            f"{name}: anomaly_auroc_mean {metrics['anomaly_auroc_mean']:.4f}, "
            f"held-out real mean {metrics.get('heldout_auroc_real_mean', float('nan')):.4f} "
            f"({seconds:.0f} s)"
        )
        rows.append({
            "name": name,
            "family": REFERENCE_FAMILY,
            "is_baseline": True,
            "is_reference": True,
            "data_version": version,
            "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "fit_seconds": fit_s,
            "seconds": seconds,
            "n_test_scored": len(scored["test"][0]),
            "n_val_scored": len(scored["val"][0]),
            **fit_note,
            "metrics": metrics | {"fit_seconds": fit_s},
        })  # fmt: skip
    return {
        "format": RESULTS_FORMAT,
        "rows": rows,
        "peak_rss_gb": _peak_rss_gb(),
        "params_sha256": hashlib.sha256(
            json.dumps(section(params, "evaluate"), sort_keys=True).encode()
        ).hexdigest(),
    }
