"""The judge step (`genops train-judge`): the digit classifier whose features the quality
metrics use, and the cached real-data reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.spec import Tag
from pipelines import tracking
from pipelines.data.dataset import load_tensors
from pipelines.data.versioning import data_version
from pipelines.settings import section


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
    from pipelines.evaluation.evaluator import EvalConfig, real_reference, save_reference
    from pipelines.evaluation.judge import judge_accuracy, save_judge, train_judge
    from pipelines.training.resources import available_cores

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
