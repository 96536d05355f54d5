"""Evaluate any GenerativeModel through the shared contract only.

`evaluate_model` returns one flat JSON-serialisable dict (keys below), writes
`calibration.json`, `test_scores.npy`, `metrics.json` and `plots/*.png` into `out_dir`.

Metric keys (all floats unless noted; "where defined" keys are absent otherwise):
  meta        family (str), conditional (bool), has_reconstruction (bool), n_samples, n_test
  quality     fd_judge, fd_judge_real_reference, precision, recall, precision_real_reference,
              recall_real_reference, inception_score, inception_score_real_reference,
              mean_confidence, classes_covered (int), kl_to_uniform, class_share/<0..9>,
              label_agreement (conditional models: share judged as the requested label)
  likelihood  elbo_nats, elbo_bits_per_dim, iwae_nats (models with `capabilities.likelihood`)
  recon       recon_mse, recon_mae (test split, where has_reconstruction)
  denoise     denoise_input_mse/<kind>, denoise_mse/<kind> for kind in gaussian, salt_pepper,
              block: one test digit per class corrupted, then cleaned by `denoise` (where
              declared) or `reconstruct` (pipelines.evaluation.denoising; plot denoising.png)
  anomaly     every AUROC ranks by the calibrated atypicality the verdict thresholds (two-sided
              score + input energy, models.calibration; docs/anomaly.md):
              tuned suite: anomaly_auroc/<kind>, anomaly_aupr/<kind>, anomaly_tpr/<kind>
              (share flagged), suite_auroc_mean, anomaly_aupr_mean, anomaly_auroc_pooled,
              anomaly_tpr_at_threshold (pooled);
              held-out benchmark (pipelines.evaluation.heldout): heldout_auroc/<kind>,
              heldout_tpr/<kind>, heldout_auroc_mean, heldout_auroc_min, heldout_auroc_real_mean,
              degenerate_flagged_min (lowest share flagged over the degenerate kinds);
              anomaly_auroc_mean = the task's metric: mean of suite_auroc_mean and
              heldout_auroc_mean (pipelines.evaluation.paired.anomaly_task_metric);
              threshold, low_threshold, energy_low, energy_high (where fitted), target_fpr,
              val_fpr, test_fpr (full verdict), test_fpr_score_only (verdict without the image)
  cost        params (int), sample_ms_per_image, score_ms_per_image, eval_seconds
Families only differ through what `model.capabilities` declares (likelihood, reconstruction,
encoder, interpolation, conditional); `sample(steps=...)` is passed only with sampling_steps.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.base import GenerativeModel
from models.calibration import Calibration
from models.config import Config, require
from models.io import atomic_write_bytes, atomic_write_json
from models.tensors import check_images
from pipelines.evaluation import metrics as M
from pipelines.evaluation import plots
from pipelines.evaluation.anomalies import build_anomaly_suite
from pipelines.evaluation.denoising import Denoised, run_denoising, write_figure
from pipelines.evaluation.heldout import DEGENERATE_KINDS, REAL_KINDS, build_heldout_benchmark
from pipelines.evaluation.judge import JudgeNet, judge_outputs
from pipelines.evaluation.paired import HELDOUT_PREFIX, Evidence, anomaly_task_metric

log = logging.getLogger(__name__)
Splits = Mapping[str, tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class EvalConfig(Config):
    """Evaluation settings (reuses Config's validation and strict `from_dict`)."""

    n_samples: int = 1000
    sample_seed: int = 0
    target_fpr: float = 0.05
    pr_k: int = 3
    anomaly_per_kind: int = 100
    anomaly_seed: int = 20_250
    anomaly_low_fpr: float = 0.01  # of target_fpr: below the low score threshold
    anomaly_energy_fpr: float = 0.01  # of target_fpr: outside the input-energy interval
    heldout_per_kind: int | None = None  # held-out benchmark images per kind (None: as suite)
    heldout_seed: int = 20_261_127
    score_batch_size: int = 256
    sample_batch_size: int = 250
    sample_steps: int | None = None  # diffusion DDIM steps, passed only if `sample` takes it
    reference_seed: int = 0
    likelihood_max_images: int = 500  # cap on test images for elbo / iwae (IWAE is costly)
    # test and val digits scored for the anomaly metrics, calibration and reconstruction: a
    # stratified, seeded slice of each split (None: all). The AUROC's error is set by the 100
    # anomalies per kind, not the normals: 3,000 normals vs 10,000 changes it < 1 % (params.yaml)
    score_max_normals: int | None = None
    slice_seed: int = 20_261_204
    n_plot: int = 64

    def validate(self) -> None:
        require(self.n_samples >= 10, f"n_samples must be >= 10, got {self.n_samples}")
        require(0 < self.target_fpr < 1, f"target_fpr must be in (0, 1), got {self.target_fpr}")
        require(1 <= self.pr_k < self.n_samples, f"pr_k must be in [1, n_samples), got {self.pr_k}")
        for name in ("anomaly_per_kind", "score_batch_size", "sample_batch_size",
                     "likelihood_max_images", "n_plot"):  # fmt: skip
            value = getattr(self, name)
            require(value >= 1, f"{name} must be >= 1, got {value}")
        low, energy, per_kind = self.anomaly_low_fpr, self.anomaly_energy_fpr, self.heldout_per_kind
        require(
            low >= 0 and energy >= 0 and low + energy < self.target_fpr,
            "anomaly_low_fpr and anomaly_energy_fpr must be >= 0, their sum below target_fpr",
        )
        require(per_kind is None or per_kind >= 1, f"heldout_per_kind must be >= 1, got {per_kind}")
        cap = self.score_max_normals
        require(cap is None or cap >= 100, f"score_max_normals must be None or >= 100, got {cap}")
        steps = self.sample_steps
        require(steps is None or steps >= 1, f"sample_steps must be None or >= 1, got {steps}")


# ---- the real-data reference (cacheable) ----------------------------------------------------
def real_reference(judge: JudgeNet, train_x: Any, test_x: Any, cfg: EvalConfig) -> dict[str, Any]:
    """Judge features/probabilities and statistics of the test split, plus real-vs-real values.

    The reference draws min(n_samples, len(train)) train images (seeded) - the same count the
    model is sampled at - and scores them against the test split exactly as samples are
    scored, so `fd_judge_real_reference` is the FD a perfect generator would get.
    All values are numpy arrays (scalars as 0-d), so `save_reference` can cache them.
    """
    feats, probs = judge_outputs(judge, test_x)
    mu, sigma = M.feature_stats(feats)
    n_train = len(train_x)
    idx = np.random.default_rng(cfg.reference_seed).choice(
        n_train, size=min(cfg.n_samples, n_train), replace=False
    )
    sub_feats, sub_probs = judge_outputs(judge, np.asarray(train_x)[np.sort(idx)])
    precision, recall = M.precision_recall(feats, sub_feats, cfg.pr_k)
    return {
        "test_features": feats,
        "test_probs": probs,
        "test_mu": mu,
        "test_sigma": sigma,
        "fd_judge_real_reference": np.asarray(
            M.frechet_distance_from_stats(*M.feature_stats(sub_feats), mu, sigma)
        ),
        "precision_real_reference": np.asarray(precision),
        "recall_real_reference": np.asarray(recall),
        "inception_score_real_reference": np.asarray(M.inception_score(sub_probs)),
        "reference_n": np.asarray(len(idx)),
        "pr_k": np.asarray(cfg.pr_k),
    }


def _check_reference(reference: Mapping[str, Any], cfg: EvalConfig, n_train: int) -> None:
    """Refuse a cached reference computed for another sample count or k (stale cache)."""
    expected = {"reference_n": min(cfg.n_samples, n_train), "pr_k": cfg.pr_k}
    found = {k: int(np.asarray(reference[k])) if k in reference else None for k in expected}
    if found != expected:
        raise ValueError(f"real reference was computed for {found}, this evaluation needs "
                         f"{expected}: recompute it with real_reference(...)")  # fmt: skip


def save_reference(reference: Mapping[str, Any], path: Path) -> Path:
    """Cache a `real_reference` dict as an .npz (no pickle), atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in reference.items()})
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def load_reference(path: Path) -> dict[str, np.ndarray]:
    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# ---- model calls ----------------------------------------------------------------------------
def _device(model: GenerativeModel) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def draw_samples(model: GenerativeModel, cfg: EvalConfig) -> tuple[Tensor, Tensor | None, float]:
    """n_samples images (labels cycling 0..9 for conditional models) and ms per image."""
    gen = torch.Generator().manual_seed(cfg.sample_seed)
    labels = torch.arange(cfg.n_samples) % 10 if model.conditional else None
    kwargs: dict[str, Any] = {}
    if cfg.sample_steps is not None and model.capabilities.sampling_steps:
        kwargs["steps"] = cfg.sample_steps
    chunks, t0 = [], time.perf_counter()
    with torch.no_grad():
        for start in range(0, cfg.n_samples, cfg.sample_batch_size):
            n = min(cfg.sample_batch_size, cfg.n_samples - start)
            lab = None if labels is None else labels[start : start + n].to(_device(model))
            chunks.append(model.sample(n, generator=gen, labels=lab, **kwargs).detach().cpu())
    elapsed = time.perf_counter() - t0
    images = check_images(torch.cat(chunks))
    if images.shape[0] != cfg.n_samples:
        raise ValueError(f"sample returned {images.shape[0]} images, expected {cfg.n_samples}")
    return images.clamp(0, 1), labels, 1000.0 * elapsed / cfg.n_samples


def stratified_slice(labels: Tensor, n: int | None, seed: int) -> Tensor:
    """Sorted indices of a seeded slice of `n` items with each class's share kept (largest
    remainders get the rounding); all indices when n is None or not smaller than the split."""
    total = int(labels.shape[0])
    if n is None or n >= total:
        return torch.arange(total)
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * n / total
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[: n - take.sum()]] += 1
    picked = [
        rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    return torch.from_numpy(np.sort(np.concatenate(picked)))


def scored_normals(splits: Splits, cfg: EvalConfig) -> Splits:
    """The val and test normals every detector scores: all of them, or with
    `score_max_normals` the same stratified, seeded slice for every model (paired)."""
    scored = {k: splits[k] for k in ("val", "test")}
    if cfg.score_max_normals is not None:
        scored = {k: tuple(t[stratified_slice(v[1], cfg.score_max_normals, cfg.slice_seed + i)]
                           for t in v) for i, (k, v) in enumerate(scored.items())}  # fmt: skip
    return scored


def score_images(model: GenerativeModel, images: Tensor, batch_size: int) -> np.ndarray:
    """Anomaly scores (N,) in batches, under no_grad (families needing autograd enable it)."""
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(_device(model))
            out.append(model.anomaly_score(batch).detach().cpu().reshape(-1))
    scores = torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)
    if scores.shape[0] != images.shape[0] or not np.isfinite(scores).all():
        raise ValueError(f"{model.family}: anomaly_score must give one finite value per image")
    return scores


def _batched_mean(fn: Any, images: Tensor, batch_size: int, device: torch.device) -> float:
    """Mean of a per-image (or per-batch mean) quantity, weighted by batch size."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device)
            value = torch.as_tensor(fn(batch)).detach().double().cpu().reshape(-1)
            total += float(value.mean()) * batch.shape[0]
            count += batch.shape[0]
    return total / max(count, 1)


# ---- metric groups --------------------------------------------------------------------------
def _quality(
    feats: np.ndarray, probs: np.ndarray, labels: Tensor | None, ref: Mapping[str, Any], k: int
) -> dict[str, Any]:
    precision, recall = M.precision_recall(np.asarray(ref["test_features"]), feats, k)
    coverage = M.mode_coverage(probs)
    out: dict[str, Any] = {
        "fd_judge": M.frechet_distance_from_stats(
            *M.feature_stats(feats), np.asarray(ref["test_mu"]), np.asarray(ref["test_sigma"])
        ),
        "precision": precision,
        "recall": recall,
        "inception_score": M.inception_score(probs),
        "mean_confidence": M.mean_confidence(probs),
        "classes_covered": coverage["classes_covered"],
        "kl_to_uniform": coverage["kl_to_uniform"],
    }
    out |= {f"class_share/{d}": s for d, s in enumerate(coverage["shares"])}
    for key in ("fd_judge", "precision", "recall", "inception_score"):
        out[f"{key}_real_reference"] = float(np.asarray(ref[f"{key}_real_reference"]))
    if labels is not None:
        out["label_agreement"] = M.label_agreement(probs, labels.numpy())
    return out


def _likelihood(model: GenerativeModel, test_x: Tensor, cfg: EvalConfig) -> dict[str, float]:
    images, out = test_x[: cfg.likelihood_max_images], {}
    if model.capabilities.likelihood:
        out["elbo_nats"] = _batched_mean(model.elbo, images, cfg.score_batch_size, _device(model))
        out["elbo_bits_per_dim"] = -out["elbo_nats"] / (784 * math.log(2))
        out["iwae_nats"] = _batched_mean(
            model.iwae_bound, images, cfg.score_batch_size, _device(model)
        )
    return out


def _reconstruction(model: GenerativeModel, test_x: Tensor, cfg: EvalConfig) -> dict[str, float]:
    mse, mae = [], []
    with torch.no_grad():
        for start in range(0, test_x.shape[0], cfg.score_batch_size):
            batch = test_x[start : start + cfg.score_batch_size]
            diff = model.reconstruct(batch.to(_device(model))).detach().cpu() - batch
            mse.append(diff.square().flatten(1).mean(1))
            mae.append(diff.abs().flatten(1).mean(1))
    return {"recon_mse": float(torch.cat(mse).mean()), "recon_mae": float(torch.cat(mae).mean())}


def _anomaly(
    model: GenerativeModel, splits: Splits, cfg: EvalConfig, out_dir: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """`detection_metrics` of the model's anomaly score."""

    def score(images: np.ndarray) -> np.ndarray:
        return score_images(model, torch.from_numpy(images), cfg.score_batch_size)

    return detection_metrics(score, splits, cfg, out_dir)


def detection_metrics(
    score: Callable[[np.ndarray], np.ndarray], splits: Splits, cfg: EvalConfig, out_dir: Path
) -> tuple[dict[str, float], dict[str, Any]]:
    """Calibration on val normals, detection metrics on the tuned suite and the held-out
    benchmark, all ranked by the calibrated atypicality; the atypicalities for plots/evidence.

    `score` maps (N, 1, 28, 28) float32 images in [0, 1] to N raw anomaly scores: a family's
    `anomaly_score`, or a reference detector's (research.reference_detectors), measured alike.
    Writes calibration.json and test_scores.npy to `out_dir`.
    """
    test_x, val_x = splits["test"][0].numpy(), splits["val"][0].numpy()
    t0 = time.perf_counter()
    test_scores = score(test_x)
    score_ms = 1000.0 * (time.perf_counter() - t0) / max(test_x.shape[0], 1)
    val_scores = score(val_x)
    calibration = Calibration.fit(
        val_scores, cfg.target_fpr, cfg.anomaly_low_fpr, val_x, cfg.anomaly_energy_fpr
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    calibration.save(out_dir)
    buf = io.BytesIO()
    np.save(buf, test_scores)
    atomic_write_bytes(Path(out_dir) / "test_scores.npy", buf.getvalue())

    def scored(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = score(images)
        return scores, calibration.statistic(scores, images)

    suite, kinds = build_anomaly_suite(
        test_x, splits["test"][1].numpy(), n_per_kind=cfg.anomaly_per_kind, seed=cfg.anomaly_seed
    )
    per_kind = cfg.heldout_per_kind or cfg.anomaly_per_kind
    heldout, heldout_kinds = build_heldout_benchmark(
        test_x, n_per_kind=per_kind, seed=cfg.heldout_seed
    )
    normal = calibration.statistic(test_scores, test_x)
    val_t = calibration.statistic(val_scores, val_x)
    (suite_s, suite_t), (heldout_s, heldout_t) = scored(suite), scored(heldout)
    by_kind, heldout_by_kind = _by_kind(suite_t, kinds), _by_kind(heldout_t, heldout_kinds)
    out = _kind_metrics("anomaly", normal, by_kind)
    out |= _kind_metrics("heldout", normal, heldout_by_kind)
    out |= _summary(out, list(by_kind), list(heldout_by_kind))
    out |= {
        "anomaly_auroc_pooled": M.auroc(normal, suite_t),
        "anomaly_tpr_at_threshold": float(np.mean(suite_t > 1.0)),
        **_thresholds(calibration),
        "val_fpr": float(np.mean(val_t > 1.0)),
        "test_fpr": float(np.mean(normal > 1.0)),
        "test_fpr_score_only": float(np.mean(calibration.statistic(test_scores) > 1.0)),
        "score_ms_per_image": score_ms,
    }
    raw = {
        "test": normal,
        "by_kind": by_kind | {HELDOUT_PREFIX + k: v for k, v in heldout_by_kind.items()},
        "threshold": 1.0,  # the verdict's threshold on the atypicality
        "suite": np.concatenate([suite_t, heldout_t]),
        "kinds": np.concatenate([kinds, np.char.add(HELDOUT_PREFIX, heldout_kinds)]).astype(str),
        "val": val_t,
        "scores": {"val": val_scores, "test": test_scores, "suite": np.r_[suite_s, heldout_s]},
    }
    return out, raw


def _by_kind(values: np.ndarray, kinds: np.ndarray) -> dict[str, np.ndarray]:
    return {str(k): values[kinds == k] for k in dict.fromkeys(kinds.tolist())}


def _kind_metrics(prefix: str, normal: np.ndarray, by_kind: dict[str, np.ndarray]) -> dict:
    """AUROC (AUPR for the tuned suite) and share flagged (atypicality > 1) of each kind."""
    out: dict[str, float] = {}
    for kind, values in by_kind.items():
        out[f"{prefix}_auroc/{kind}"] = M.auroc(normal, values)
        if prefix == "anomaly":
            out[f"{prefix}_aupr/{kind}"] = M.aupr(normal, values)
        out[f"{prefix}_tpr/{kind}"] = float(np.mean(values > 1.0))
    return out


def _summary(out: dict[str, float], tuned: list[str], heldout: list[str]) -> dict[str, float]:
    """The means over kinds, and the task's metric over both sets."""
    held = {k: out[f"heldout_auroc/{k}"] for k in heldout}
    real, degenerate = (
        [k for k in REAL_KINDS if k in held],
        [k for k in DEGENERATE_KINDS if k in held],
    )
    aurocs = {k: out[f"anomaly_auroc/{k}"] for k in tuned}
    aurocs |= {HELDOUT_PREFIX + k: v for k, v in held.items()}
    summary = {
        "anomaly_auroc_mean": anomaly_task_metric(aurocs),
        "suite_auroc_mean": float(np.mean([out[f"anomaly_auroc/{k}"] for k in tuned])),
        "anomaly_aupr_mean": float(np.mean([out[f"anomaly_aupr/{k}"] for k in tuned])),
        "heldout_auroc_mean": float(np.mean(list(held.values()))),
        "heldout_auroc_min": float(min(held.values())),
    }
    if real:
        summary["heldout_auroc_real_mean"] = float(np.mean([held[k] for k in real]))
    if degenerate:
        summary["degenerate_flagged_min"] = min(out[f"heldout_tpr/{k}"] for k in degenerate)
    return summary


def _thresholds(calibration: Calibration) -> dict[str, float]:
    names = ("threshold", "low_threshold", "energy_low", "energy_high", "target_fpr")
    return {k: float(getattr(calibration, k)) for k in names if getattr(calibration, k) is not None}


# ---- plots ----------------------------------------------------------------------------------
def _first_tensor(value: Any) -> Tensor:
    """encode() may return a tensor, a (mu, logvar) tuple or an object with `.mean`/`.mu`."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], Tensor):
        return value[0]
    for name in ("mean", "mu", "z", "loc"):
        if isinstance(getattr(value, name, None), Tensor):
            return getattr(value, name)
    raise TypeError(f"cannot read latents from {type(value).__name__}")


def _interpolate(model: GenerativeModel, a: Tensor, b: Tensor) -> Tensor:
    """The contract's `interpolate(a, b)` between two single images."""
    return model.interpolate(a, b)


def _plots(
    model: GenerativeModel,
    splits: Splits,
    samples: Tensor,
    labels: Tensor | None,
    raw: Mapping[str, Any],
    cfg: EvalConfig,
    plot_dir: Path,
    denoised: Denoised | None = None,
) -> list[str]:
    """Write the figures; optional extras that fail are logged and listed, not fatal."""
    test_x, test_y = splits["test"]
    written = [plots.sample_grid(samples[: cfg.n_plot], plot_dir / "samples.png")]
    if labels is not None:
        by_label = {d: samples[labels == d][:10] for d in range(10)}
        written.append(plots.class_grid(by_label, plot_dir / "class_grid.png"))
    device, failed = _device(model), []
    with torch.no_grad():
        if model.has_reconstruction:
            recon = model.reconstruct(test_x[:16].to(device)).cpu()
            path = plot_dir / "reconstructions.png"
            written.append(plots.reconstructions(test_x[:16], recon, path))
        if denoised is not None:
            written.append(write_figure(model, denoised, plot_dir / "denoising.png"))
        extras = {
            "encode": lambda: plots.latent_scatter(
                _first_tensor(model.encode(test_x[:1000].to(device))).cpu().numpy(),
                test_y[:1000].numpy(), plot_dir / "latent_scatter.png"),
            "interpolate": lambda: plots.interpolation_strip(
                _interpolate(model, test_x[:1].to(device), test_x[1:2].to(device)).cpu(),
                plot_dir / "interpolation.png"),
        }  # fmt: skip
        caps = model.capabilities
        declared = {"encode": caps.encoder, "interpolate": caps.interpolation}
        for name, make in extras.items():
            if declared[name]:
                try:
                    written.append(make())
                except (TypeError, ValueError, RuntimeError, NotImplementedError) as err:
                    log.warning("%s: optional %s plot skipped: %s", model.family, name, err)
                    failed.append(name)
    written.append(plots.roc_curves(raw["test"], raw["by_kind"], plot_dir / "roc.png"))
    written.append(plots.score_histograms(raw["test"], raw["by_kind"], raw["threshold"],
                                          plot_dir / "score_histograms.png"))  # fmt: skip
    return [p.name for p in written] + [f"skipped:{n}" for n in failed]


# ---- entry point ----------------------------------------------------------------------------
def evaluate_model(
    model: GenerativeModel,
    judge: JudgeNet,
    splits: Splits,
    cfg: EvalConfig,
    out_dir: Path,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on quality, likelihood, reconstruction, anomaly detection and cost.

    `splits` maps "train"/"val"/"test" to (images float32 (N,1,28,28) in [0,1], labels int64).
    `reference` is a (cached) `real_reference(...)`; computed here when omitted.
    """
    missing = sorted({"train", "val", "test"} - set(splits))
    if missing:
        raise ValueError(f"splits lacks {missing}; needs train, val and test")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = {k: (check_images(torch.as_tensor(x)), torch.as_tensor(y).long())
              for k, (x, y) in splits.items()}  # fmt: skip
    test_x = splits["test"][0]
    scored = scored_normals(splits, cfg)
    if reference is None:
        reference = real_reference(judge, splits["train"][0], test_x, cfg)
    _check_reference(reference, cfg, splits["train"][0].shape[0])
    was_training = model.training
    model.eval()
    try:
        samples, labels, sample_ms = draw_samples(model, cfg)
        result: dict[str, Any] = {
            "family": model.family,
            "conditional": bool(model.conditional),
            "has_reconstruction": bool(model.has_reconstruction),
            "n_samples": cfg.n_samples,
            "n_test": int(test_x.shape[0]),
            "params": int(model.num_parameters()),
            "sample_ms_per_image": sample_ms,
        }
        feats, probs = judge_outputs(judge, samples)
        result |= _quality(feats, probs, labels, reference, cfg.pr_k)
        result |= _likelihood(model, test_x, cfg)
        if model.has_reconstruction:
            result |= _reconstruction(model, scored["test"][0], cfg)
        anomaly, raw = _anomaly(model, scored, cfg, out_dir)
        result["n_test_scored"], result["n_val_scored"] = (
            len(scored["test"][0]),
            len(scored["val"][0]),
        )
        result |= anomaly
        denoised = None
        if model.has_reconstruction or model.capabilities.denoising:
            denoised = run_denoising(model, test_x, splits["test"][1])
            result |= denoised.metrics()
        Evidence(  # what a paired comparison with another model needs (the promotion gate)
            sample_features=np.asarray(feats, dtype=np.float32),
            reference_features=np.asarray(reference["test_features"], dtype=np.float32),
            test_scores=raw["test"],
            suite_scores=raw["suite"],
            suite_kinds=raw["kinds"],
        ).save(out_dir)
        result["plots"] = _plots(
            model, splits, samples, labels, raw, cfg, out_dir / "plots", denoised
        )
    finally:
        model.train(was_training)
    result["eval_seconds"] = time.perf_counter() - t_start
    atomic_write_json(out_dir / "metrics.json", result)
    return result


def numeric_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of an `evaluate_model` result (for MLflow `log_metrics`)."""
    return {k: float(v) for k, v in result.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


__all__ = [
    "EvalConfig",
    "draw_samples",
    "evaluate_model",
    "load_reference",
    "numeric_metrics",
    "real_reference",
    "save_reference",
    "score_images",
]
