"""The anomaly threshold, calibrated on validation normals and shipped with the model.

Evaluation writes `calibration.json` next to a model's weights; the service reads the same
file, so the threshold the service applies is exactly the calibrated one.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.spec import CALIBRATION_FILE


@dataclass(frozen=True)
class Calibration:
    """Threshold at a target false-positive rate on validation-split normal scores."""

    threshold: float
    target_fpr: float
    val_scores: tuple[float, ...]  # sorted anomaly scores of validation normals

    @classmethod
    def fit(cls, val_scores: np.ndarray, target_fpr: float = 0.05) -> Calibration:
        if not 0.0 < target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
        scores = np.sort(np.asarray(val_scores, dtype=np.float64).reshape(-1))
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError("calibration needs a non-empty set of finite validation scores")
        # smallest threshold whose share of normals strictly above it is <= target_fpr
        threshold = float(np.quantile(scores, 1.0 - target_fpr, method="higher"))
        return cls(threshold, float(target_fpr), tuple(float(s) for s in scores))

    def is_anomaly(self, score: float) -> bool:
        return bool(score > self.threshold)

    def percentile(self, score: float) -> float:
        """Share (0..100) of validation normals scoring at or below `score`."""
        return 100.0 * bisect.bisect_right(self.val_scores, float(score)) / len(self.val_scores)

    def save(self, directory: Path) -> Path:
        from models.io import atomic_write_json

        path = Path(directory) / CALIBRATION_FILE
        atomic_write_json(path, asdict(self) | {"val_scores": list(self.val_scores)})
        return path

    @classmethod
    def load(cls, directory: Path) -> Calibration:
        path = Path(directory) / CALIBRATION_FILE
        payload = json.loads(path.read_text())
        return cls(
            float(payload["threshold"]),
            float(payload["target_fpr"]),
            tuple(float(s) for s in payload["val_scores"]),
        )
