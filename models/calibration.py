"""The anomaly verdict, calibrated on validation normals and shipped with the model.

Evaluation writes `calibration.json` next to a model's weights; the service reads the same
file, so the verdict the service gives is exactly the calibrated one.

Two-sided (typicality) verdicts. A reconstruction error or a negative log-likelihood is *lowest*
for inputs simpler than any digit - a blank image, a faint digit, a single dot - so a one-sided
"score above the threshold" test calls them the most normal images there are (Nalisnick et al.
2019, "Do deep generative models know what they don't know?"). A typicality test (Nalisnick et
al. 2019, "Detecting out-of-distribution inputs to deep generative models using typicality")
flags a score that is atypical on either side.

A score alone cannot see every too-simple input: a single 2x2 dot reconstructs with the error
of a thin "1". So the verdict also tests the input's *energy* (mean squared pixel intensity,
the "how much ink, how bright" that reconstruction and likelihood scores are blind to; Serra
et al. 2020 correct a likelihood for input complexity the same way) on both sides of the
validation normals' energies: blank, dot and faint inputs fall far below every digit.

The served score. `statistic` turns a raw model statistic (and the image's energy) into one
calibrated atypicality: greater than SCORE_THRESHOLD (1) exactly where the verdict flags the
input, larger = more atypical on any side of any test. The service returns it as `score` (the
raw statistic stays beside it as `raw_score`), and `percentile` places it among the validation
normals' own atypicalities (`val_statistic`), so score, percentile and verdict all mean the same
thing: a blank image's raw reconstruction error is tiny, its score is far above 1.

The false-positive budget `target_fpr` is split: `low_fpr` below the score's low threshold,
`energy_fpr` (half per side) outside the energy interval, and the rest above the score's high
threshold `threshold`; every threshold is a quantile of the validation normals. The union of
the tests flags at most `target_fpr` of the validation normals. `low_fpr = energy_fpr = 0` is
the one-sided score test of old calibration files, which still load as such.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.spec import CALIBRATION_FILE

_TINY = float(np.finfo(np.float64).tiny)
SCORE_THRESHOLD = 1.0  # the verdict's threshold on the calibrated score (`statistic`)


def image_energy(images: Any) -> np.ndarray:
    """Mean squared pixel intensity of each image ([0, 1] pixels; (N,1,28,28), (N,28,28),
    (N,784) or one image) -> (N,) float64."""
    arr = np.asarray(images, dtype=np.float64)
    arr = arr.reshape(1, -1) if arr.ndim <= 2 and arr.size == 784 else arr.reshape(len(arr), -1)
    return np.square(arr).mean(axis=1)


def _quantiles(values: np.ndarray, low: float, high: float) -> tuple[float | None, float | None]:
    """(largest t with at most `low` of values strictly below it, smallest t with at most `high`
    strictly above it); None for a side with no budget."""
    return (
        float(np.quantile(values, low, method="lower")) if low > 0 else None,
        float(np.quantile(values, 1.0 - high, method="higher")) if high > 0 else None,
    )


def _sorted_finite(values: Any, what: str) -> np.ndarray:
    arr = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"calibration needs a non-empty set of finite validation {what}")
    return arr


def _atypicality(
    values: np.ndarray, reference: tuple[float, ...], low: float | None, high: float | None
) -> np.ndarray:
    """Distance of each value from the reference median, per side in units of that side's
    threshold distance (> 1 exactly beyond a threshold); on a log scale when every reference
    value is positive (errors, code lengths and energies span orders of magnitude)."""

    def scale(x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.log(np.maximum(x, _TINY)) if reference[0] > 0 else x

    g, mid = scale(values), float(scale(np.median(reference)))
    out = np.full(g.shape, -np.inf)
    # a threshold at the median itself (a side whose quantile is the median) divides by _TINY:
    # every value beyond it is infinitely atypical (inf, flagged), as intended, not an overflow
    with np.errstate(over="ignore"):
        if high is not None:
            out = np.maximum(out, (g - mid) / max(float(scale(high)) - mid, _TINY))
        if low is not None:
            out = np.maximum(out, (mid - g) / max(mid - float(scale(low)), _TINY))
    return out


@dataclass(frozen=True)
class Calibration:
    """Thresholds at a target false-positive rate on validation-split normals."""

    threshold: float  # scores above it are anomalous
    target_fpr: float  # the whole false-positive budget, every test together
    val_scores: tuple[float, ...]  # sorted anomaly scores of validation normals
    low_threshold: float | None = None  # scores below it are anomalous too (None: no low side)
    low_fpr: float = 0.0  # the part of target_fpr spent below low_threshold
    energy_low: float | None = None  # inputs with less energy are anomalous (None: no test)
    energy_high: float | None = None  # inputs with more energy are anomalous
    energy_fpr: float = 0.0  # the part of target_fpr spent on the energy test (half per side)
    val_energy: tuple[float, ...] = ()  # sorted energies of the validation normals
    # sorted calibrated scores (`statistic`) of the validation normals, each from its own score
    # and image; empty in files written before the served score was calibrated
    val_statistic: tuple[float, ...] = ()

    @classmethod
    def fit(
        cls,
        val_scores: np.ndarray,
        target_fpr: float = 0.05,
        low_fpr: float = 0.0,
        val_images: Any = None,
        energy_fpr: float = 0.0,
    ) -> Calibration:
        """Thresholds on validation normals: at most `low_fpr` of them strictly below the low
        score threshold, `energy_fpr / 2` strictly outside each energy bound (needs
        `val_images`), and `target_fpr - low_fpr - energy_fpr` strictly above `threshold`.
        When the low threshold flags none of them (the smallest score is the threshold), its
        share goes to the high side (`low_fpr` is recorded as 0). The defaults fit the
        one-sided score test."""
        if not 0.0 < target_fpr < 1.0:
            raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
        if low_fpr < 0 or energy_fpr < 0 or low_fpr + energy_fpr >= target_fpr:
            raise ValueError(
                f"low_fpr ({low_fpr}) and energy_fpr ({energy_fpr}) must be >= 0 and leave "
                f"part of target_fpr ({target_fpr}) for high scores"
            )
        scores = _sorted_finite(val_scores, "scores")
        low, high = _quantiles(scores, low_fpr, target_fpr - low_fpr - energy_fpr)
        if low is not None and scores[0] >= low:
            # the low side flags no validation normal (a score floored at a quantile, as the
            # ensemble's is, or too few normals for its share): its share of the budget goes
            # to the high side instead of being lost
            low_fpr = 0.0
            high = _quantiles(scores, 0.0, target_fpr - energy_fpr)[1]
        energy: tuple[float | None, float | None] = (None, None)
        val_energy: tuple[float, ...] = ()
        if energy_fpr > 0:
            if val_images is None:
                raise ValueError("energy_fpr > 0 needs the validation images (val_images)")
            energies = _sorted_finite(image_energy(val_images), "images")
            if energies.size != scores.size:
                raise ValueError(f"{energies.size} validation images for {scores.size} scores")
            energy = _quantiles(energies, energy_fpr / 2, energy_fpr / 2)
            val_energy = tuple(float(e) for e in energies)
        fitted = cls(float(high), float(target_fpr), tuple(float(s) for s in scores), low,
                     float(low_fpr), *energy, float(energy_fpr), val_energy)  # fmt: skip
        paired = np.asarray(val_scores, dtype=np.float64).reshape(-1)
        own = fitted.statistic(paired, val_images if fitted.tests_energy else None)
        return replace(fitted, val_statistic=tuple(float(v) for v in np.sort(own)))

    @property
    def two_sided(self) -> bool:
        return self.low_threshold is not None

    @property
    def tests_energy(self) -> bool:
        return self.energy_low is not None

    def is_anomaly(self, score: float, image: Any = None) -> bool:
        """The verdict. Pass the scored image (pixels in [0, 1]) to apply the energy test as
        well; without it only the score's thresholds apply (a subset of the budget)."""
        score = float(score)
        flagged = score > self.threshold or (self.two_sided and score < self.low_threshold)
        if image is not None and self.tests_energy:
            energy = float(image_energy(image)[0])
            flagged = flagged or not self.energy_low <= energy <= self.energy_high
        return bool(flagged)

    @property
    def reference_statistic(self) -> tuple[float, ...]:
        """Sorted calibrated scores of the validation normals. Files written before they were
        stored give their raw scores' part alone (no energy test: the pairs are not kept)."""
        if self.val_statistic:
            return self.val_statistic
        own = self.statistic(np.asarray(self.val_scores, dtype=np.float64))
        return tuple(float(v) for v in np.sort(own))

    def percentile(self, score: float) -> float:
        """Share (0..100) of validation normals whose calibrated score (`statistic`) is at or
        below `score`, itself a calibrated score."""
        reference = self.reference_statistic
        return 100.0 * bisect.bisect_right(reference, float(score)) / len(reference)

    def raw_percentile(self, raw_score: float) -> float:
        """Share (0..100) of validation normals whose raw statistic is at or below `raw_score`."""
        return 100.0 * bisect.bisect_right(self.val_scores, float(raw_score)) / len(self.val_scores)

    def statistic(self, scores: np.ndarray, images: Any = None) -> np.ndarray:
        """Atypicality of each input, the quantity the verdict thresholds: > 1 exactly where
        `is_anomaly` is true (given the same images), larger = more atypical on any side of
        any test. Rank anomalies by it (AUROC); one-sided calibrations rank by score."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        out = _atypicality(scores, self.val_scores, self.low_threshold, self.threshold)
        if images is not None and self.tests_energy:
            energy = image_energy(images)
            if energy.shape != scores.shape:
                raise ValueError(f"{energy.size} images for {scores.size} scores")
            out = np.maximum(
                out, _atypicality(energy, self.val_energy, self.energy_low, self.energy_high)
            )
        return out

    def save(self, directory: Path) -> Path:
        from models.io import atomic_write_json

        path = Path(directory) / CALIBRATION_FILE
        payload = asdict(self) | {
            "val_scores": list(self.val_scores),
            "val_energy": list(self.val_energy),
            "val_statistic": list(self.val_statistic),
        }
        atomic_write_json(path, payload)
        return path

    @classmethod
    def load(cls, directory: Path) -> Calibration:
        """Read `calibration.json`; files written before two-sided verdicts load one-sided."""
        path = Path(directory) / CALIBRATION_FILE
        payload = json.loads(path.read_text())

        def optional(key: str) -> float | None:
            return None if payload.get(key) is None else float(payload[key])

        return cls(
            float(payload["threshold"]),
            float(payload["target_fpr"]),
            tuple(float(s) for s in payload["val_scores"]),
            optional("low_threshold"),
            float(payload.get("low_fpr", 0.0)),
            optional("energy_low"),
            optional("energy_high"),
            float(payload.get("energy_fpr", 0.0)),
            tuple(float(e) for e in payload.get("val_energy", ())),
            tuple(float(v) for v in payload.get("val_statistic", ())),
        )
