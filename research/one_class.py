"""The literature's one-class MNIST protocol (a benchmark, not part of `dvc repro`).

For each digit d: fit a scorer on the training images of d only, score the whole test split,
and report the AUROC of d (normal) against all other digits (anomalies); then the mean over
the ten digits. Published means: conv AE ~0.90, Deep SVDD 0.948, OCGAN 0.975, GeoTrans 0.980,
AGAD 0.991 (on full MNIST, 6k training images per digit; the default data here has 400).

Scorers: any registered family (trained per digit, scored by its `anomaly_score`), `knn`
(`research.one_class_knn`, no training) and `autoencoder-eknn` (the anomaly champion's encoder
view, `models.ensemble` `encoder_knn`: kNN in the encoder trunk of the autoencoder trained on
the digit). `ensemble` averages the scorers' scores after standardising each on the digit's
*validation* normals (mean and std of their scores), so no anomaly and no test image is ever
used to fit anything. With `combine="max"` it is the served anomaly champion's rule instead
(`models.ensemble`, `combine: max`): each scorer's atypicality from a `Calibration` fitted on
the digit's validation normals (evaluation's two-sided split, MAX_TARGET_FPR and MAX_LOW_FPR;
no energy test and no floor, which only matter for degenerate inputs), and their maximum.
`ensemble_of` picks which scorers it combines (default: all). Every result also carries the
validation-split AUROC (same protocol on the val split), the number to select settings on; the
test AUROC is for reporting only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.io import family_class
from pipelines.data.dataset import load_tensors
from pipelines.evaluation.evaluator import score_images
from pipelines.evaluation.metrics import auroc
from pipelines.training.loop import TrainConfig, train
from research.one_class_knn import KnnConfig, KnnScorer, translations

PUBLISHED = {
    "conv AE": 0.90,
    "Deep SVDD": 0.948,
    "OCGAN": 0.975,
    "GeoTrans": 0.980,
    "AGAD": 0.991,
}
ENSEMBLE = "ensemble"
COMBINES = ("mean", "max")
MAX_TARGET_FPR = 0.05  # params.yaml evaluate.target_fpr
MAX_LOW_FPR = 0.01  # params.yaml evaluate.anomaly_low_fpr

# (digit, normal training images, normal validation images) -> a batch scorer
Fitter = Callable[[int, Tensor, Tensor], Callable[[Tensor], np.ndarray]]


def knn_fitter(config: KnnConfig) -> Fitter:
    """The nearest-neighbour scorer, fitted on the digit's training images."""

    def fit(digit: int, normals: Tensor, val_normals: Tensor) -> Callable[[Tensor], np.ndarray]:
        return KnnScorer(config).fit(normals).score

    return fit


def _trained(
    family: str,
    model_cfg: dict[str, Any],
    cfg: TrainConfig,
    work_dir: Path,
    digit: int,
    normals: Tensor,
    val_normals: Tensor,
) -> Any:
    """The family trained on the digit's training images (its val normals feed the trainer's
    validation loss only); a finished run in the same place resumes instead of retraining."""
    labels = torch.full((len(normals),), digit, dtype=torch.long)
    val_labels = torch.full((len(val_normals),), digit, dtype=torch.long)
    result = train(
        family,
        model_cfg,
        cfg,
        (normals, labels),
        (val_normals, val_labels),
        Path(work_dir) / family / f"seed{cfg.seed}" / str(digit),
        # a checkpoint resumes only on the same normals (e.g. not after a new import)
        data_version=hashlib.sha256(normals.numpy().tobytes()).hexdigest()[:16],
    )
    return result.model


def family_fitter(
    family: str, model_cfg: dict[str, Any], cfg: TrainConfig, work_dir: Path
) -> Fitter:
    """A registered family trained on the digit's training images, scored by its own
    `anomaly_score`."""

    def fit(digit: int, normals: Tensor, val_normals: Tensor) -> Callable[[Tensor], np.ndarray]:
        model = _trained(family, model_cfg, cfg, work_dir, digit, normals, val_normals)
        return lambda images: score_images(model, images, 256)

    return fit


ENCODER_KNN = "autoencoder-eknn"


def encoder_knn_fitter(
    model_cfg: dict[str, Any], cfg: TrainConfig, work_dir: Path, k: int = 10, shift: int = 0
) -> Fitter:
    """The anomaly champion's encoder-kNN view (models.ensemble `encoder_knn`) on one digit:
    the mean cosine distance to the `k` nearest of the digit's training images in the encoder
    trunk of the autoencoder trained on them (the same run as the `autoencoder` scorer's when
    both are asked for: its finished checkpoint resumes). Exhaustive fp32 search: a digit's
    bank is small. `shift` = s > 0: the minimum of that over the (2s+1)^2 whole-pixel
    translations of the query (the pixel kNN's shift tolerance, in the encoder's space; costs
    (2s+1)^2 encoder passes per image)."""
    from models.ensemble.model import encoder_features

    if not 0 <= shift <= 4:
        raise ValueError(f"shift must be in 0..4 pixels, got {shift!r}")

    def fit(digit: int, normals: Tensor, val_normals: Tensor) -> Callable[[Tensor], np.ndarray]:
        model = _trained("autoencoder", model_cfg, cfg, work_dir, digit, normals, val_normals)
        model.eval()
        with torch.no_grad():
            bank = torch.cat([encoder_features(model, normals[i : i + 256])
                              for i in range(0, len(normals), 256)])  # fmt: skip
        top = min(k, len(bank))

        def distance(batch: Tensor) -> Tensor:
            sims = encoder_features(model, batch) @ bank.T
            return (1.0 - sims.topk(top, dim=1).values).mean(1)

        def score(images: Tensor) -> np.ndarray:
            out = []
            with torch.no_grad():
                for i in range(0, len(images), 256):
                    batch = images[i : i + 256]
                    moved = translations(batch, shift) if shift else batch[None]
                    out.append(torch.stack([distance(m) for m in moved]).min(0).values)
            return torch.cat(out).double().numpy()

        return score

    return fit


def standardise(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(scores - mean) / std of the reference (validation-normal) scores."""
    ref = np.asarray(reference, dtype=np.float64)
    return (np.asarray(scores, dtype=np.float64) - ref.mean()) / max(float(ref.std()), 1e-12)


def _auroc_of(scores: np.ndarray, labels: Tensor, digit: int) -> float:
    normal = (labels == digit).numpy()
    return float(auroc(scores[normal], scores[~normal]))


def ensemble_name(combine: str) -> str:
    """The ensemble's method name: `ensemble` for the mean (as before), `ensemble-max`."""
    return ENSEMBLE if combine == "mean" else f"{ENSEMBLE}-{combine}"


def _combined(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], combine: str
) -> tuple[np.ndarray, np.ndarray]:
    """Each part's (validation scores, test scores, its validation normals' scores) -> the
    ensemble's (validation, test) scores: the mean of standardised scores, or the maximum of
    calibrated atypicalities (module doc)."""
    from models.calibration import Calibration

    if combine == "mean":
        val = np.mean([standardise(v, ref) for v, _, ref in parts], 0)
        return val, np.mean([standardise(e, ref) for _, e, ref in parts], 0)
    calibrations = [Calibration.fit(ref, MAX_TARGET_FPR, MAX_LOW_FPR) for _, _, ref in parts]
    val = np.max([c.statistic(v) for c, (v, _, _) in zip(calibrations, parts, strict=True)], 0)
    test = np.max([c.statistic(e) for c, (_, e, _) in zip(calibrations, parts, strict=True)], 0)
    return val, test


def one_class_run(
    fitters: dict[str, Fitter],
    data_dir: Path,
    digits: Sequence[int] = tuple(range(10)),
    ensemble: bool = False,
    seed: int = 0,
    combine: str = "mean",
    ensemble_of: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One seed of the protocol for every scorer in `fitters` (plus their ensemble of
    `ensemble_of`, default all, combined by `combine`): one result dict per scorer with
    per-digit test and validation AUROC, means and seconds."""
    if not fitters:
        raise ValueError("give at least one scorer")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    unknown = sorted(set(ensemble_of) - set(fitters))
    if unknown:
        raise ValueError(f"ensemble_of names no scorer: {unknown} (scorers: {sorted(fitters)})")
    tx, ty = load_tensors(data_dir, "train")
    vx, vy = load_tensors(data_dir, "val")
    ex, ey = load_tensors(data_dir, "test")
    combined = list(ensemble_of) or list(fitters)
    names = [*fitters, ENSEMBLE] if ensemble and len(combined) > 1 else list(fitters)
    test = {n: {} for n in names}
    val = {n: {} for n in names}
    seconds = dict.fromkeys(names, 0.0)
    for digit in digits:
        normals, val_normals = tx[ty == digit], vx[vy == digit]
        if len(normals) == 0 or len(val_normals) < 2:
            raise ValueError(f"digit {digit}: needs training and >= 2 validation images")
        parts = {}
        for name, fitter in fitters.items():
            started = time.perf_counter()
            score = fitter(digit, normals, val_normals)
            v, e = score(vx), score(ex)
            seconds[name] += time.perf_counter() - started
            val[name][str(digit)] = _auroc_of(v, vy, digit)
            test[name][str(digit)] = _auroc_of(e, ey, digit)
            parts[name] = (v, e, v[(vy == digit).numpy()])
            print(
                f"seed {seed} {name} digit {digit}: AUROC {test[name][str(digit)]:.4f}", flush=True
            )
        if ENSEMBLE in names:
            v, e = _combined([parts[n] for n in combined], combine)
            val[ENSEMBLE][str(digit)] = _auroc_of(v, vy, digit)
            test[ENSEMBLE][str(digit)] = _auroc_of(e, ey, digit)
            seconds[ENSEMBLE] = sum(seconds[n] for n in combined)
    return [
        {
            "method": name
            if name != ENSEMBLE
            else f"{ensemble_name(combine)}({'+'.join(combined)})",
            "seed": seed,
            "per_digit_auroc": test[name],
            "mean_auroc": float(np.mean(list(test[name].values()))),
            "val_per_digit_auroc": val[name],
            "val_mean_auroc": float(np.mean(list(val[name].values()))),
            "train_images_per_digit": {str(d): int((ty == d).sum()) for d in digits},
            "test_images": len(ey),
            "seconds": seconds[name],
            "threads": torch.get_num_threads(),
        }
        for name in names
    ]


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method over seeds: per-digit mean, mean AUROC mean and std, seconds per seed."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    out = []
    for method, runs in by_method.items():
        means = np.array([r["mean_auroc"] for r in runs])
        digits = runs[0]["per_digit_auroc"]
        out.append(
            {
                "method": method,
                "seeds": [r["seed"] for r in runs],
                "per_digit_auroc": {
                    d: float(np.mean([r["per_digit_auroc"][d] for r in runs])) for d in digits
                },
                "mean_auroc": float(means.mean()),
                "std_auroc": float(means.std()),
                "val_mean_auroc": float(np.mean([r["val_mean_auroc"] for r in runs])),
                "seconds_per_seed": float(np.mean([r["seconds"] for r in runs])),
            }
        )
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    """The per-digit table (test AUROC averaged over seeds) with mean ± std over seeds."""
    head = (
        "| method | "
        + " | ".join(str(d) for d in range(10))
        + " | mean ± std | val mean | s/seed |"
    )
    lines = [head, "|---" * 14 + "|"]
    for r in summary:
        cells = [f"{r['per_digit_auroc'].get(str(d), float('nan')):.3f}" for d in range(10)]
        lines.append(
            f"| {r['method']} | "
            + " | ".join(cells)
            + f" | **{r['mean_auroc']:.3f}** ± {r['std_auroc']:.3f} | {r['val_mean_auroc']:.3f}"
            + f" | {r['seconds_per_seed']:.0f} |"
        )
    seeds = sorted({s for r in summary for s in r["seeds"]})
    lines.append("")
    lines.append(
        f"Seeds: {seeds}. Published means (full MNIST): "
        + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED.items())
    )
    return "\n".join(lines) + "\n"


# config keys that name a training step: a phase that starts there (the GAN's encoder phase)
PHASE_STEP_KEYS = ("encoder_start_step",)


def phases_within(
    family: str, model_cfg: dict[str, Any], configured_steps: int, steps: int
) -> dict[str, Any]:
    """`model_cfg` with every phase start moved to the same share of `steps` as it has of the
    configured training steps: the GAN's encoder starts at 1,500 of 1,800 steps, so at 500 of
    600 here. Without it, a 600-step GAN never trains its encoder and scores at random."""
    defaults = {f.name: f.default for f in dataclasses.fields(family_class(family).config_cls)}
    out = dict(model_cfg)
    if configured_steps <= 0:
        return out
    for key in PHASE_STEP_KEYS:
        if key in out or key in defaults:
            start = int(out.get(key, defaults.get(key)))
            out[key] = min(steps, round(start * steps / configured_steps))
    return out


def run_protocol(
    base: dict[str, tuple[Any, Any]],
    knn_cfg: KnnConfig | None,
    ensemble: bool,
    steps: int,
    threads: int | None,
    seeds: list[int],
    digits: Sequence[int] | None,
    data_dir: Path,
    work: Path = Path(".genops") / "one_class",
    encoder_knn: int = 0,
    combine: str = "mean",
    ensemble_of: Sequence[str] = (),
    encoder_knn_shift: int = 0,
) -> list[dict[str, Any]]:
    """The protocol for every seed: `base` maps a family to its (model config, train config),
    trained `steps` steps per digit; the kNN scorer (deterministic) runs once unless the
    ensemble needs it per seed. Seeds default to the first family's configured seed. With
    `encoder_knn` = k > 0 (needs the autoencoder in `base`), the `autoencoder-eknn` scorer too
    (query translations of up to `encoder_knn_shift` px: encoder_knn_fitter).
    `combine` and `ensemble_of`: one_class_run's."""
    if encoder_knn and "autoencoder" not in base:
        raise ValueError("encoder_knn reads the autoencoder's encoder: add the autoencoder family")
    seeds = seeds or [next(iter(base.values()))[1].seed if base else 0]
    results: list[dict[str, Any]] = []
    for i, seed in enumerate(seeds):
        knn_joins = ensemble and (not ensemble_of or "knn" in ensemble_of)
        fitters = {"knn": knn_fitter(knn_cfg)} if knn_cfg and (i == 0 or knn_joins) else {}
        for family, (configured, cfg) in base.items():
            model_cfg = phases_within(family, configured, cfg.steps, steps)
            run_cfg = cfg.__class__.from_dict(
                {
                    **cfg.__dict__,
                    "steps": steps,
                    "seed": seed,
                    "num_threads": threads,
                    "progress": False,
                    "checkpoint_every": steps,
                    "val_every": steps,
                }
            )
            fitters[family] = family_fitter(family, model_cfg, run_cfg, work)
            if family == "autoencoder" and encoder_knn:
                fitters[ENCODER_KNN] = encoder_knn_fitter(
                    model_cfg, run_cfg, work, encoder_knn, encoder_knn_shift
                )
        if fitters:
            results.extend(
                one_class_run(
                    fitters, data_dir, digits or range(10), ensemble, seed, combine, ensemble_of
                )
            )
    return results
