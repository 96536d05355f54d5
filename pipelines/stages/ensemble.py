"""The ensemble step (`genops build-ensemble`): the trained families combined into one candidate.

A separate module from the evaluation step so that evaluating a family does not depend on the
ensemble's code (dvc.yaml deps follow imports). The ensemble is then evaluated, registered and
gated by the same code as every family (`genops evaluate --family ensemble`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import Config, require
from models.io import load_model, save_model, sha256_file
from models.spec import FAMILIES, WEIGHTS_FILE
from pipelines.data.dataset import load_tensors
from pipelines.settings import section

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnsembleParams(Config):
    """params.yaml `ensemble`: which trained families it combines, how, and who samples;
    `encoder_knn` k > 0 adds the kNN view in the autoencoder's encoder (models.ensemble);
    `view_only` members serve that view only (their own scores are not combined);
    `format_test` adds the format view (distance from MNIST's format, models.digit_format),
    calibrated at `format_share` of the false-positive budget; `class_entropy` adds the
    class-entropy view (the conditional GAN's encoder), at `entropy_share` of it;
    `label_surprise` the label-surprise view (the encoder against the labels of the GAN's
    nearest training digits), at `surprise_share` of it."""

    members: tuple[str, ...] = FAMILIES
    combine: str = "mean"
    sampler: str = "gan"
    encoder_knn: int = 0
    view_only: tuple[str, ...] = ()
    format_test: bool = False
    format_share: float = 1.0
    class_entropy: bool = False
    entropy_share: float = 1.0
    label_surprise: bool = False
    surprise_share: float = 1.0

    def validate(self) -> None:
        unknown = sorted(set(self.members) - set(FAMILIES))
        require(
            bool(self.members) and not unknown,
            f"ensemble.members must be families of {list(FAMILIES)}, got {self.members}",
        )
        require(self.sampler in self.members, f"ensemble.sampler {self.sampler!r} is not a member")
        require(
            isinstance(self.encoder_knn, int) and self.encoder_knn >= 0,
            f"ensemble.encoder_knn must be an int >= 0, got {self.encoder_knn!r}",
        )
        require(
            not self.encoder_knn or "autoencoder" in self.members,
            "ensemble.encoder_knn reads the autoencoder's encoder: add it to ensemble.members",
        )
        require(
            set(self.view_only) <= ({"autoencoder"} if self.encoder_knn else set())
            and set(self.view_only) <= set(self.members),
            f"ensemble.view_only {list(self.view_only)}: only the autoencoder member can be "
            "view-only, and only under encoder_knn > 0 (it serves the encoder-kNN view)",
        )
        require(
            isinstance(self.format_test, bool),
            f"ensemble.format_test must be true or false, got {self.format_test!r}",
        )
        require(
            isinstance(self.class_entropy, bool),
            f"ensemble.class_entropy must be true or false, got {self.class_entropy!r}",
        )
        require(
            not self.class_entropy or "gan" in self.members,
            "ensemble.class_entropy reads the GAN's encoder: add gan to ensemble.members",
        )
        require(
            isinstance(self.label_surprise, bool),
            f"ensemble.label_surprise must be true or false, got {self.label_surprise!r}",
        )
        require(
            not self.label_surprise or "gan" in self.members,
            "ensemble.label_surprise reads the GAN's encoder and bank: add gan to ensemble.members",
        )
        for name in ("format_share", "entropy_share", "surprise_share"):
            value = getattr(self, name)
            require(
                isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1,
                f"ensemble.{name} must be a number in (0, 1], got {value!r}",
            )


def fit_configured(
    settings: EnsembleParams,
    cfg: Any,
    members: dict[str, Any],
    val_images: Any,
    train_images: Any,
    train_labels: Any = None,
) -> Any:
    """The ensemble `settings` describe, of the trained `members`, fitted on `val_images` with
    evaluation's false-positive budget (`cfg`, an EvalConfig); `train_images` (the training
    split, or None when no view reads it) is the views' reference, `train_labels` its labels
    (the label-surprise view's). The one place a params
    section becomes an ensemble: the stage below and the union benchmark both call it."""
    from models.ensemble import fit_ensemble

    return fit_ensemble(
        members,
        val_images,
        cfg.target_fpr,
        cfg.anomaly_low_fpr,
        cfg.anomaly_energy_fpr,
        combine=settings.combine,
        sampler=settings.sampler,
        batch_size=cfg.score_batch_size,
        encoder_knn=settings.encoder_knn,
        train_images=train_images,
        view_only=settings.view_only,
        format_test=settings.format_test,
        format_share=float(settings.format_share),
        class_entropy=settings.class_entropy,
        entropy_share=float(settings.entropy_share),
        label_surprise=settings.label_surprise,
        surprise_share=float(settings.surprise_share),
        train_labels=train_labels,
    )


def build_ensemble(
    params: dict[str, Any], data_dir: Path, models_root: Path, out_dir: Path
) -> dict[str, Any]:
    """Fit the ensemble of the trained families in `models_root/<family>` on the validation
    normals of `data_dir` (nothing else: no test image, no anomaly; the encoder-kNN view's bank
    is the training split, which the autoencoder was trained on) and save it to `out_dir` as
    weights + JSON config, like a trained family. Returns what was built."""
    import time

    from pipelines.evaluation.evaluator import EvalConfig

    settings = EnsembleParams.from_dict(section(params, "ensemble"))
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    started = time.perf_counter()
    members = {f: load_model(Path(models_root) / f) for f in settings.members}
    val_images = load_tensors(data_dir, "val")[0]
    reads_train = bool(settings.encoder_knn) or settings.format_test or settings.label_surprise
    train_images, train_labels = load_tensors(data_dir, "train") if reads_train else (None, None)
    ensemble = fit_configured(settings, cfg, members, val_images, train_images, train_labels)
    lineage = {f: sha256_file(Path(models_root) / f / WEIGHTS_FILE) for f in settings.members}
    sha = save_model(ensemble, out_dir, extra={"member_weights_sha256": lineage})
    info = {
        "members": list(settings.members),
        "combine": settings.combine,
        "sampler": settings.sampler,
        "encoder_knn": settings.encoder_knn,
        "view_only": list(settings.view_only),
        "format_side": ensemble.config.format_side,
        "format_share": settings.format_share if settings.format_test else None,
        "n_val": int(val_images.shape[0]),
        "fit_seconds": time.perf_counter() - started,
        "weights_sha256": sha,
    }
    log.info("ensemble of %s fitted on %d validation normals in %.1f s",
             info["members"], info["n_val"], info["fit_seconds"])  # fmt: skip
    return info
