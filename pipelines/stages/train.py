"""The training step of one family (`genops train`)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import Config
from models.spec import Tag
from pipelines import tracking
from pipelines.data.dataset import load_tensors
from pipelines.data.versioning import data_version
from pipelines.settings import section
from pipelines.training.distributed import Cluster
from pipelines.training.loop import TrainConfig, save_trained, train

log = logging.getLogger(__name__)


def family_params(params: dict[str, Any], family: str) -> tuple[dict, TrainConfig]:
    """(model config dict, TrainConfig) of a family: `train` defaults + `<family>.train`."""
    fam = FamilySection.from_dict(section(params, family))
    train_values = {**section(params, "train"), **(fam.train or {})}
    return dict(fam.model or {}), TrainConfig.from_dict(train_values)


@dataclass(frozen=True)
class FamilySection(Config):
    """A family's params.yaml section: its model config and its trainer overrides."""

    model: dict[str, Any] | None = None
    train: dict[str, Any] | None = None


def train_family(
    params: dict[str, Any],
    family: str,
    data_dir: Path,
    out_dir: Path,
    checkpoint_dir: Path,
    *,
    overrides: dict[str, Any] | None = None,
    fresh: bool = False,
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Train one family on data/ and write its model folder; log the run to MLflow.

    Under torchrun every process trains; only rank 0 writes the model and logs the run (the
    other ranks return a short summary with their "rank").
    """
    model_cfg, cfg = family_params(params, family)
    if overrides:
        cfg = TrainConfig.from_dict({**cfg.__dict__, **overrides})
    cluster = Cluster.from_env()
    if fresh and cluster.is_main:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    version = data_version(data_dir=data_dir)
    result = train(
        family,
        model_cfg,
        cfg,
        load_tensors(data_dir, "train"),
        load_tensors(data_dir, "val"),
        checkpoint_dir,
        data_version=version,
        cluster=cluster,
    )
    if not cluster.is_main:
        return {"family": family, "rank": cluster.rank, "steps": result.steps_done}
    sha = save_trained(result, out_dir, extra={"data_version": version})
    precision = result.model.training_precision  # "bf16" or "fp32": what the steps ran in
    summary = {
        "family": family,
        "steps": result.steps_done,
        "weights_sha256": sha,
        "train_wall_time_s": round(result.wall_time_s, 1),
        "train_images_per_s": round(result.images_per_s, 1),
        "train_precision": precision,
        "best_val_loss": result.best_val_loss,
        "resumed_from": result.resumed_from,
    }
    if cluster.active:
        summary["processes"] = cluster.world_size
    if log_mlflow:
        summary["mlflow_run_id"] = tracking.log_run(
            f"train-{family}",
            params={
                "family": family,
                "model": result.model.config.to_dict(),
                "train": cfg.__dict__,
                "train_precision": precision,
            }
            | ({"processes": cluster.world_size} if cluster.active else {}),
            tags={
                "stage": "train",
                Tag.FAMILY: family,
                Tag.DATA_VERSION: version,
                Tag.GIT_COMMIT: tracking.git_commit(),
                Tag.PARAMS_HASH: tracking.params_hash(section(params, family)),
                Tag.WEIGHTS_SHA256: sha,
            },
            history=result.history,
            metrics={
                "train_wall_time_s": result.wall_time_s,
                "train_images_per_s": result.images_per_s,
                "params": result.model.num_parameters(),
            },
            artifacts={"model": out_dir},
        )
    return summary
