"""Evaluation figures as PNG files (matplotlib Agg), each written atomically; return the path."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.metrics import roc_curve

from models.io import atomic_write_bytes


def _np_images(images: Any) -> np.ndarray:
    """Tensor/array (N,1,28,28) / (N,28,28) -> float (N,28,28) clipped to [0, 1]."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.clip(arr.astype(np.float64).reshape(-1, 28, 28), 0.0, 1.0)


def _save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def _tile(images: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """Mosaic of (N,28,28) images, `nrow` images per row, separated by `pad` grey pixels."""
    n = max(images.shape[0], 1)
    cols = max(1, min(nrow, n))
    rows = -(-n // cols)
    canvas = np.full((rows * (28 + pad) + pad, cols * (28 + pad) + pad), 0.5)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        top, left = pad + r * (28 + pad), pad + c * (28 + pad)
        canvas[top : top + 28, left : left + 28] = img
    return canvas


def _imshow(ax: plt.Axes, canvas: np.ndarray, title: str | None = None) -> None:
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def sample_grid(images: Any, path: Path, nrow: int = 8, title: str | None = None) -> Path:
    """Samples in a grid, `nrow` per row."""
    canvas = _tile(_np_images(images), nrow)
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 40, canvas.shape[0] / 40 + 0.3))
    _imshow(ax, canvas, title)
    return _save(fig, path)


def class_grid(images_by_label: Mapping[int, Any], path: Path) -> Path:
    """One row per requested digit (conditional models)."""
    labels = sorted(images_by_label)
    rows = [_np_images(images_by_label[k]) for k in labels]
    width = max((r.shape[0] for r in rows), default=1)
    fig, axes = plt.subplots(len(labels), 1, figsize=(width * 0.45, len(labels) * 0.5 + 0.2))
    for ax, k, row in zip(np.atleast_1d(axes), labels, rows, strict=True):
        _imshow(ax, _tile(row, width))
        ax.text(-4, 15, str(k), ha="right", va="center", fontsize=9)
    return _save(fig, path)


def reconstructions(originals: Any, recons: Any, path: Path, nrow: int = 8) -> Path:
    """Originals (top of each pair) above their reconstructions."""
    orig, rec = _np_images(originals), _np_images(recons)
    n = min(orig.shape[0], rec.shape[0])
    fig, axes = plt.subplots(
        2, 1, figsize=(min(n, nrow) * 0.5 + 0.4, 2 * (-(-n // nrow) * 0.6 + 0.35))
    )
    _imshow(axes[0], _tile(orig[:n], nrow), "original")
    _imshow(axes[1], _tile(rec[:n], nrow), "reconstruction")
    return _save(fig, path)


def denoising(
    clean: Any, rows: Sequence[tuple[str, Any, Sequence[float]]], path: Path, title: str = ""
) -> Path:
    """Clean digits on top, then one row per (name, images, per-image MSE to the clean digit).

    Each image of a row gets its MSE written under it, and the row's mean beside its name.
    """
    top = _np_images(clean)
    n = top.shape[0]
    fig, axes = plt.subplots(len(rows) + 1, 1, figsize=(n * 0.62 + 1.6, (len(rows) + 1) * 0.95))
    axes = np.atleast_1d(axes)
    _imshow(axes[0], _tile(top, n), title or None)
    axes[0].set_ylim(_tile(top, n).shape[0] + 10, 0)  # every row the same height
    axes[0].text(-3, 15, "clean", ha="right", va="center", fontsize=8)
    for ax, (name, images, mse) in zip(axes[1:], rows, strict=True):
        canvas = _tile(_np_images(images)[:n], n)
        _imshow(ax, canvas)
        ax.set_ylim(canvas.shape[0] + 10, 0)  # room for the numbers under the images
        mse = np.asarray(mse, dtype=np.float64).reshape(-1)
        ax.text(-3, 15, f"{name}\nMSE {mse.mean():.4f}", ha="right", va="center", fontsize=7)
        for i, value in enumerate(mse[:n]):
            ax.text(2 + i * 30 + 14, canvas.shape[0] + 6, f"{value:.3f}", ha="center",
                    va="center", fontsize=5.5)  # fmt: skip
    return _save(fig, path)


def project_2d(latents: Any) -> np.ndarray:
    """(N, D) -> (N, 2): identity for D <= 2 (zero-padded), else PCA via SVD."""
    z = np.asarray(latents, dtype=np.float64).reshape(len(latents), -1)
    if z.shape[1] <= 2:
        return np.pad(z, ((0, 0), (0, 2 - z.shape[1])))
    z = z - z.mean(axis=0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    return z @ vt[:2].T


def latent_scatter(latents: Any, labels: Any, path: Path) -> Path:
    """2-D (PCA when dim > 2) scatter of latents, coloured by digit."""
    xy = project_2d(latents)
    labels = np.asarray(labels).reshape(-1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    points = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=6)
    fig.colorbar(points, ax=ax, ticks=range(10), label="digit")
    dim = np.asarray(latents).reshape(len(xy), -1).shape[1]
    ax.set_title(f"latent space ({dim}-d, PCA)" if dim > 2 else "latent space")
    return _save(fig, path)


def interpolation_strip(images: Any, path: Path) -> Path:
    """A row of images stepping between two endpoints."""
    arr = _np_images(images)
    canvas = _tile(arr, arr.shape[0])
    fig, ax = plt.subplots(figsize=(canvas.shape[1] / 40, canvas.shape[0] / 40 + 0.2))
    _imshow(ax, canvas)
    return _save(fig, path)


def training_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One panel per numeric metric key in the history, against "step"."""
    numeric = (int, float)
    keys = sorted(
        {k for row in history for k, v in row.items() if k != "step" and type(v) in numeric}
    )
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 2.8))
    for ax, key in zip(np.atleast_1d(axes), keys, strict=False):
        pts = [(row["step"], row[key]) for row in history if key in row and "step" in row]
        if pts:
            steps, values = zip(*pts, strict=True)
            ax.plot(steps, values, lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    return _save(fig, path)


def roc_curves(normal_scores: Any, anomaly_scores_by_kind: Mapping[str, Any], path: Path) -> Path:
    """ROC curve of normals vs each anomaly kind."""
    normal = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for kind, scores in anomaly_scores_by_kind.items():
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        y = np.r_[np.zeros(normal.size), np.ones(scores.size)]
        fpr, tpr, _ = roc_curve(y, np.r_[normal, scores])
        ax.plot(fpr, tpr, lw=1, label=kind)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def score_histograms(
    normal_scores: Any,
    anomaly_scores_by_kind: Mapping[str, Any],
    threshold: float,
    path: Path,
) -> Path:
    """Histograms of normal and per-kind anomaly scores with the calibrated threshold."""
    normal = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    groups = {"normal (test)": normal} | {
        k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in anomaly_scores_by_kind.items()
    }
    everything = np.concatenate([*groups.values(), np.array([threshold])])
    lo, hi = np.percentile(everything, [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 50)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, scores in groups.items():
        width = 1.4 if name.startswith("normal") else 0.8
        clipped = np.clip(scores, bins[0], bins[-1])
        ax.hist(clipped, bins=bins, histtype="step", lw=width, label=name, density=True)
    ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("anomaly score (clipped to the 0.5-99.5 percentile range)")
    ax.legend(fontsize=7)
    return _save(fig, path)
