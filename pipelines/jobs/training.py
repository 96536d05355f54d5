"""The training steps: one family (`genops train`) and the judge (`genops train-judge`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from models.spec import Tag
from pipelines import tracking
from pipelines.data import load_tensors
from pipelines.dvc_ops import data_version
from pipelines.params import section
from pipelines.train import TrainConfig, save_trained, train

log = logging.getLogger(__name__)


def family_params(params: dict[str, Any], family: str) -> tuple[dict, TrainConfig]:
    """(model config dict, TrainConfig) of a family: `train` defaults + `<family>.train`."""
    fam = section(params, family)
    unknown = sorted(set(fam) - {"model", "train"})
    if unknown:
        raise ValueError(f"params section {family!r}: unknown key(s) {unknown}; use model/train")
    train_values = {**section(params, "train"), **(fam.get("train") or {})}
    return dict(fam.get("model") or {}), TrainConfig.from_dict(train_values)


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
    """Train one family on data/ and write its model folder; log the run to MLflow."""
    model_cfg, cfg = family_params(params, family)
    if overrides:
        cfg = TrainConfig.from_dict({**cfg.__dict__, **overrides})
    if fresh:
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
    )
    sha = save_trained(result, out_dir, extra={"data_version": version})
    summary = {
        "family": family,
        "steps": result.steps_done,
        "weights_sha256": sha,
        "train_wall_time_s": round(result.wall_time_s, 1),
        "train_images_per_s": round(result.images_per_s, 1),
        "best_val_loss": result.best_val_loss,
        "resumed_from": result.resumed_from,
    }
    if log_mlflow:
        summary["mlflow_run_id"] = tracking.log_run(
            f"train-{family}",
            params={
                "family": family,
                "model": result.model.config.to_dict(),
                "train": cfg.__dict__,
            },
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


# ---- judge ---------------------------------------------------------------------------------
def train_judge_job(
    params: dict[str, Any],
    data_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Train the digit-classifier judge, cache the real-data reference, report test accuracy."""
    import torch

    from models.io import atomic_write_json
    from pipelines.evaluation.evaluate import EvalConfig, real_reference, save_reference
    from pipelines.evaluation.judge import judge_accuracy, save_judge, train_judge
    from pipelines.train import available_cores

    torch.set_num_threads(available_cores())
    cfg = dict(section(params, "judge"))
    (tx, ty), (vx, vy), (ex, ey) = (load_tensors(data_dir, s) for s in ("train", "val", "test"))
    net, history = train_judge(tx, ty, vx, vy, **cfg)
    version = data_version(data_dir=data_dir)
    save_judge(net, out_dir, extra={"data_version": version})
    eval_cfg = EvalConfig.from_dict(section(params, "evaluate"))
    save_reference(real_reference(net, tx, ex, eval_cfg), Path(out_dir) / "reference.npz")
    metrics = {
        "test_accuracy": judge_accuracy(net, ex, ey),
        "val_accuracy": history[-1]["val_acc"],
        "train_seconds": history[-1]["seconds"],
    }
    atomic_write_json(metrics_path, metrics)
    if log_mlflow:
        tracking.log_run(
            "judge",
            params={"judge": cfg},
            history=history,
            metrics=metrics,
            tags={
                "stage": "judge",
                Tag.DATA_VERSION: version,
                Tag.GIT_COMMIT: tracking.git_commit(),
            },
            artifacts={"judge": out_dir},
        )
    return metrics
