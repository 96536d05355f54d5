"""Known-answer metrics on plain arrays: sample quality from judge features/probabilities and
anomaly-detection quality from scores. Pure functions; no I/O.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

NUM_CLASSES = 10
_EPS = 1e-12


def _as_2d(feats: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name} must be (N>=2, D) features, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) features."""
    arr = _as_2d(feats, "feats")
    return arr.mean(axis=0), np.cov(arr, rowvar=False)


def frechet_distance_from_stats(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray
) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)), as in FID (Heusel et al. 2017)."""
    mu_a, mu_b = np.atleast_1d(mu_a), np.atleast_1d(mu_b)
    sigma_a, sigma_b = np.atleast_2d(sigma_a), np.atleast_2d(sigma_b)
    if mu_a.shape != mu_b.shape or sigma_a.shape != sigma_b.shape:
        raise ValueError(f"feature dims differ: {mu_a.shape} vs {mu_b.shape}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
    if caught or not np.isfinite(covmean).all():
        # singular product (e.g. dead ReLU features): nudge the diagonals, as pytorch-fid does
        offset = np.eye(sigma_a.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    if np.iscomplexobj(covmean):
        # numerical noise gives tiny imaginary parts; large ones mean something is wrong
        if np.abs(covmean.imag).max() > 1e-3 * max(1.0, np.abs(covmean.real).max()):
            raise ValueError(f"sqrtm has a large imaginary part: {np.abs(covmean.imag).max():g}")
        covmean = covmean.real
    diff = mu_a - mu_b
    fd = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * np.trace(covmean)
    return float(max(fd, 0.0))


def frechet_distance(feat_a: np.ndarray, feat_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance_from_stats(*feature_stats(feat_a), *feature_stats(feat_b))


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point."""
    d = _pairwise(feats, feats)
    # column 0 of the sorted row is the point itself (distance 0)
    return np.sort(d, axis=1)[:, min(k, d.shape[1] - 1)]


def _share_inside(points: np.ndarray, centers: np.ndarray, radii: np.ndarray) -> float:
    inside = np.zeros(points.shape[0], dtype=bool)
    for start in range(0, points.shape[0], 1024):
        d = _pairwise(points[start : start + 1024], centers)
        inside[start : start + 1024] = (d <= radii[None, :] + 1e-9).any(axis=1)
    return float(inside.mean())


def precision_recall(
    real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3
) -> tuple[float, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN ball manifolds.

    Precision: share of fake points inside the real manifold; recall: share of real points
    inside the fake manifold. A set compared with itself gives (1, 1).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    real, fake = _as_2d(real_feats, "real_feats"), _as_2d(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: {real.shape[1]} vs {fake.shape[1]}")
    precision = _share_inside(fake, real, _knn_radii(real, k))
    recall = _share_inside(real, fake, _knn_radii(fake, k))
    return precision, recall


def _as_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be (N>0, C), got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probs must be finite and non-negative")
    return p


def class_histogram(probs: np.ndarray) -> np.ndarray:
    """Share of samples whose argmax class is each digit (sums to 1)."""
    p = _as_probs(probs)
    counts = np.bincount(p.argmax(axis=1), minlength=p.shape[1])
    return counts / counts.sum()


def mode_coverage(probs: np.ndarray) -> dict[str, object]:
    """Class shares, KL(shares || uniform) in nats, and #classes with >= half their fair share."""
    shares = class_histogram(probs)
    c = shares.size
    kl = float(np.sum(np.where(shares > 0, shares * np.log(np.maximum(shares, _EPS) * c), 0.0)))
    return {
        "shares": [float(s) for s in shares],
        "kl_to_uniform": max(kl, 0.0),
        "classes_covered": int((shares >= 0.5 / c).sum()),
    }


def inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))); 1 (collapsed/uncertain) .. C (confident and balanced)."""
    p = _as_probs(probs)
    p = p / p.sum(axis=1, keepdims=True)
    marginal = p.mean(axis=0, keepdims=True)
    kl = np.sum(p * (np.log(p + _EPS) - np.log(marginal + _EPS)), axis=1)
    return float(np.exp(kl.mean()))


def mean_confidence(probs: np.ndarray) -> float:
    """Mean max-class probability."""
    return float(_as_probs(probs).max(axis=1).mean())


def label_agreement(probs: np.ndarray, requested_labels: np.ndarray) -> float:
    """Share of samples whose judged class equals the requested label."""
    p = _as_probs(probs)
    labels = np.asarray(requested_labels).reshape(-1)
    if labels.size != p.shape[0]:
        raise ValueError(f"{labels.size} labels for {p.shape[0]} samples")
    return float((p.argmax(axis=1) == labels).mean())


def _scores(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> tuple[np.ndarray, ...]:
    normal = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    anomaly = np.asarray(anomaly_scores, dtype=np.float64).reshape(-1)
    if normal.size == 0 or anomaly.size == 0:
        raise ValueError("need at least one normal and one anomaly score")
    if not (np.isfinite(normal).all() and np.isfinite(anomaly).all()):
        raise ValueError("scores contain NaN or Inf")
    y = np.concatenate([np.zeros(normal.size), np.ones(anomaly.size)])
    return y, np.concatenate([normal, anomaly])


def auroc(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """Area under ROC with anomalies as positives (higher score = more anomalous)."""
    return float(roc_auc_score(*_scores(normal_scores, anomaly_scores)))


def aupr(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """Average precision with anomalies as positives."""
    return float(average_precision_score(*_scores(normal_scores, anomaly_scores)))


def tpr_at_threshold(anomaly_scores: np.ndarray, threshold: float) -> float:
    """Share of anomalies flagged (score > threshold, the service's rule)."""
    s = np.asarray(anomaly_scores, dtype=np.float64).reshape(-1)
    return float((s > threshold).mean()) if s.size else float("nan")


def fpr_at_threshold(normal_scores: np.ndarray, threshold: float) -> float:
    """Share of normals wrongly flagged (score > threshold)."""
    return tpr_at_threshold(normal_scores, threshold)
