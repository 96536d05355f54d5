"""Paired evidence and the paired bootstrap that the promotion gate decides on.

Evaluation of a model leaves *evidence* beside its metrics: the judge features of its fixed-seed
samples (for FD-judge) and the calibrated atypicality (`Calibration.statistic`, what the verdict
thresholds) of the test normals, the tuned anomaly suite and the held-out benchmark. Two
models evaluated on the same data version with the same judge saw exactly the same real images
and the same suite, and drew their samples with the same seeds and labels, so their evidence is
paired item by item.

The gate then asks not "is the candidate's point estimate better?" (MLflow's validation
thresholds, ZenML's latest >= current) but "does a confidence interval of the *difference*,
resampled on the same items for both models, clear the margin?". Each bootstrap replicate draws
one set of indices and applies it to both models, which cancels the noise the two share (which
real images, which anomalies) and leaves the noise that tells them apart.

The anomaly task's metric (`anomaly_auroc_mean`) weighs the tuned suite and the held-out
benchmark equally: the mean of the tuned kinds' AUROCs and the mean of the held-out kinds'
AUROCs, averaged (`anomaly_task_metric`; evaluation computes it with the same function).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.io import atomic_write_bytes
from models.spec import ANOMALY, GENERATION, TASKS

EVIDENCE_FILE = "paired.npz"
HELDOUT_PREFIX = "heldout/"  # suite_kinds of held-out benchmark items: "heldout/<kind>"
# what the anomaly scores in the evidence are; evidence without it (raw scores, no held-out
# benchmark) is stale and refused on load, so the gate measures that model again
ANOMALY_STATISTIC = "calibrated-atypicality-v1"


def anomaly_task_metric(auroc_by_kind: Mapping[str, float]) -> float:
    """The anomaly task's metric from per-kind AUROCs (held-out kinds named "heldout/<kind>"):
    the mean over tuned kinds and the mean over held-out kinds, averaged; the one present
    when only one set is there."""
    tuned = [v for k, v in auroc_by_kind.items() if not k.startswith(HELDOUT_PREFIX)]
    heldout = [v for k, v in auroc_by_kind.items() if k.startswith(HELDOUT_PREFIX)]
    means = [float(np.mean(group)) for group in (tuned, heldout) if group]
    if not means:
        raise ValueError("anomaly_task_metric needs the AUROC of at least one kind")
    return float(np.mean(means))


@dataclass(frozen=True)
class Evidence:
    """What a model's evaluation leaves for a paired comparison."""

    sample_features: np.ndarray  # (S, D) judge features of the fixed-seed samples
    reference_features: np.ndarray  # (R, D) judge features of the real test images
    test_scores: np.ndarray  # (T,) calibrated atypicality of the test normals
    suite_scores: np.ndarray  # (A,) the same of the tuned suite and the held-out benchmark
    suite_kinds: np.ndarray  # (A,) the kind of each item (str; held-out: "heldout/<kind>")
    anomaly_statistic: str = ANOMALY_STATISTIC  # what the anomaly scores above are

    def save(self, directory: Path) -> Path:
        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in asdict(self).items()})
        path = Path(directory) / EVIDENCE_FILE
        atomic_write_bytes(path, buf.getvalue())
        return path

    @classmethod
    def load(cls, path: Path) -> Evidence:
        path = Path(path)
        if path.is_dir():
            path = path / EVIDENCE_FILE
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in data.files}
        statistic = str(fields.pop("anomaly_statistic", "raw scores"))
        if statistic != ANOMALY_STATISTIC:
            raise ValueError(f"{path}: evidence holds {statistic}, this gate compares "
                             f"{ANOMALY_STATISTIC}: measure the model again")  # fmt: skip
        return cls(**fields, anomaly_statistic=statistic)

    def check_paired_with(self, other: Evidence) -> None:
        """Raise ValueError unless both were measured on the same items."""
        for name in ("sample_features", "reference_features", "test_scores", "suite_scores"):
            a, b = getattr(self, name), getattr(other, name)
            if a.shape != b.shape:
                raise ValueError(f"evidence is not paired: {name} shapes {a.shape} vs {b.shape}")
        if self.anomaly_statistic != other.anomaly_statistic:
            raise ValueError("evidence is not paired: different anomaly statistics")
        if not np.array_equal(self.suite_kinds, other.suite_kinds):
            raise ValueError("evidence is not paired: the anomaly suites differ")
        if not np.allclose(self.reference_features, other.reference_features, atol=1e-5):
            raise ValueError("evidence is not paired: the real reference images differ (judge?)")


@dataclass(frozen=True)
class PairedInterval:
    """The candidate's improvement over the champion (positive = better), with its CI."""

    metric: str
    candidate: float
    champion: float
    improvement: float
    ci_low: float
    ci_high: float
    confidence: float
    n_bootstrap: int
    method: str = "paired-bootstrap"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def clears(self, margin: float) -> bool:
        """The decision: the interval's lower end clears the margin (metric units)."""
        return self.ci_low > margin

    def summary(self, margin: float) -> str:
        return (
            f"{self.metric} {self.candidate:.4g} vs champion {self.champion:.4g}: improvement "
            f"{self.improvement:+.4g}, {self.confidence:.0%} CI [{self.ci_low:+.4g}, "
            f"{self.ci_high:+.4g}] {'clears' if self.clears(margin) else 'does not clear'} "
            f"margin {margin:g}"
        )


# ---- the two statistics, fast enough to bootstrap -----------------------------------------------
def _fd(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of two feature sets. Tr sqrt(Sa Sb) = sum of sqrt(eig(Sa Sb)), whose
    eigenvalues are real and non-negative for PSD Sa, Sb: an eigendecomposition instead of sqrtm."""
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb).real
    value = mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.sqrt(np.clip(eig, 0, None)).sum()
    return float(max(value, 0.0))


def _auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """Mann-Whitney AUROC, ties counted half (anomalies positive, higher = more anomalous)."""
    both = np.concatenate([normal, anomalous])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both), dtype=np.float64)
    ranks[order] = np.arange(1, len(both) + 1)
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    if (counts > 1).any():  # average ranks over ties
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    n_a, n_n = len(anomalous), len(normal)
    return float((ranks[n_n:].sum() - n_a * (n_a + 1) / 2) / (n_a * n_n))


def anomaly_statistic(
    ev: Evidence, normal_idx: np.ndarray, kind_idx: Mapping[str, np.ndarray]
) -> float:
    """`anomaly_task_metric` of the items `normal_idx` (test normals) and `kind_idx` (per kind)."""
    normal = ev.test_scores[normal_idx]
    return anomaly_task_metric(
        {kind: _auroc(normal, ev.suite_scores[idx]) for kind, idx in kind_idx.items()}
    )


def generation_statistic(ev: Evidence, s_idx: np.ndarray, r_idx: np.ndarray) -> float:
    return _fd(ev.sample_features[s_idx], ev.reference_features[r_idx])


# ---- the paired bootstrap -----------------------------------------------------------------------
def paired_bootstrap(
    task_name: str,
    candidate: Evidence,
    champion: Evidence,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedInterval:
    """Percentile CI of the candidate's improvement on the task's metric, resampling the same
    items (samples and real images; normals and anomalies per kind) for both models."""
    if task_name not in TASKS:
        raise ValueError(f"unknown task {task_name!r}; known: {list(TASKS)}")
    if not 0.5 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    if n_bootstrap < 20:
        raise ValueError(f"n_bootstrap must be >= 20, got {n_bootstrap}")
    candidate.check_paired_with(champion)
    task = TASKS[task_name]
    rng = np.random.default_rng(seed)
    if task_name == GENERATION:
        s_all = np.arange(len(candidate.sample_features))
        r_all = np.arange(len(candidate.reference_features))

        def stat(ev: Evidence, idx: tuple) -> float:
            return generation_statistic(ev, *idx)

        full = (s_all, r_all)
        draws = [
            (rng.choice(s_all, len(s_all)), rng.choice(r_all, len(r_all)))
            for _ in range(n_bootstrap)
        ]
    elif task_name == ANOMALY:
        kinds = {str(k): np.flatnonzero(candidate.suite_kinds == k) for k in
                 dict.fromkeys(candidate.suite_kinds.tolist())}  # fmt: skip
        n_all = np.arange(len(candidate.test_scores))

        def stat(ev: Evidence, idx: tuple) -> float:
            return anomaly_statistic(ev, *idx)

        full = (n_all, kinds)
        draws = [
            (rng.choice(n_all, len(n_all)), {k: rng.choice(v, len(v)) for k, v in kinds.items()})
            for _ in range(n_bootstrap)
        ]
    else:  # pragma: no cover - TASKS and this function change together
        raise ValueError(f"no paired statistic for task {task_name!r}")
    cand_value, champ_value = stat(candidate, full), stat(champion, full)
    diffs = np.array([task.improvement(stat(candidate, d), stat(champion, d)) for d in draws])
    alpha = 1.0 - confidence
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return PairedInterval(
        task.metric,
        cand_value,
        champ_value,
        task.improvement(cand_value, champ_value),
        float(low),
        float(high),
        confidence,
        n_bootstrap,
    )
