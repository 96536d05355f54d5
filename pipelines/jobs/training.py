"""The pipeline's steps as plain functions: the CLI (hence `dvc repro`) and the Prefect flow
both call these, so there is one source of truth for what each step does."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

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
                "family": family,
                "data_version": version,
                "git_commit": tracking.git_commit(),
                "params_hash": tracking.params_hash(section(params, family)),
                "weights_sha256": sha,
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
            tags={"stage": "judge", "data_version": version, "git_commit": tracking.git_commit()},
            artifacts={"judge": out_dir},
        )
    return metrics


# ---- evaluation ----------------------------------------------------------------------------
def _signature_files(model, bundle: Path) -> None:
    """MLflow-style signature + input example for the bundle (JSON, no pickle)."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from models.io import atomic_write_json

    example = np.zeros((1, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        scores = model.anomaly_score(torch.from_numpy(example)).numpy()
    atomic_write_json(bundle / "signature.json", infer_signature(example, scores).to_dict())
    atomic_write_json(bundle / "input_example.json", {"images": example.tolist()})


def evaluate_family(
    params: dict[str, Any],
    family: str,
    data_dir: Path,
    model_dir: Path,
    judge_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Evaluate one trained family on the shared metrics; build its servable bundle."""
    import json

    import torch

    from models.calibration import Calibration
    from models.io import CONFIG_FILE, WEIGHTS_FILE, atomic_write_json, load_model, sha256_file
    from pipelines.data import SPLITS
    from pipelines.evaluation.evaluate import (
        EvalConfig,
        evaluate_model,
        load_reference,
        numeric_metrics,
    )
    from pipelines.evaluation.judge import load_judge
    from pipelines.train import available_cores

    torch.set_num_threads(available_cores())  # per thread: flows run tasks in worker threads
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_model(model_dir)
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    splits = {s: load_tensors(data_dir, s) for s in SPLITS}
    reference = load_reference(Path(judge_dir) / "reference.npz")
    result = evaluate_model(model, load_judge(judge_dir), splits, cfg, out_dir, reference)
    train_metrics = json.loads((model_dir / "train_metrics.json").read_text())
    result |= {k: train_metrics[k] for k in ("train_wall_time_s", "train_images_per_s", "steps")}
    metrics = numeric_metrics(result)
    atomic_write_json(metrics_path, {"family": family, **metrics})

    bundle = out_dir / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(model_dir / name, bundle / name)
    Calibration.load(out_dir).save(bundle)
    _signature_files(model, bundle)
    version = data_version(data_dir=data_dir)
    sha = sha256_file(bundle / WEIGHTS_FILE)
    info = {
        "family": family,
        "data_version": version,
        "weights_sha256": sha,
        "params_hash": tracking.params_hash(section(params, family)),
        "git_commit": tracking.git_commit(),
    }
    if log_mlflow:
        info["run_id"] = tracking.log_run(
            f"evaluate-{family}",
            params={"family": family, "evaluate": cfg.to_dict()},
            tags={"stage": "evaluate", **info},
            metrics=metrics,
            history=json.loads((model_dir / "history.json").read_text()),
            artifacts={"model": bundle, "plots": out_dir / "plots"},
        )
    atomic_write_json(out_dir / "run.json", info)
    return metrics


# ---- selection, registration, promotion ------------------------------------------------------
def register_and_promote(
    params: dict[str, Any],
    families: list[str],
    eval_root: Path,
    metrics_root: Path,
    report_dir: Path,
    data_dir: Path = Path("data"),
) -> dict[str, Any]:
    """Leaderboard -> register every candidate -> gate each task's best against its champion."""
    import json

    from models.io import atomic_write_json
    from pipelines import registry
    from pipelines.evaluation.leaderboard import build_leaderboard, render_markdown

    cfg = section(params, "registry")
    margins = cfg.get("margin", {})
    metrics = {f: json.loads((Path(metrics_root) / f"{f}.json").read_text()) for f in families}
    board = build_leaderboard(metrics)
    report_dir = Path(report_dir)
    atomic_write_json(report_dir / "leaderboard.json", board)
    (report_dir / "leaderboard.md").write_text(render_markdown(board))

    runs = {f: json.loads((Path(eval_root) / f / "run.json").read_text()) for f in families}
    version = data_version(data_dir=data_dir)
    for family in families:
        _register_once(registry.family_model_name(family), runs[family], metrics[family])
    decisions = []
    for task in registry.TASKS.values():
        ranked = [f for f in families if task.metric in metrics[f]]
        ranked.sort(key=lambda f: metrics[f][task.metric], reverse=task.higher_is_better)
        if not ranked:
            continue
        best = ranked[0]
        candidate = _register_once(task.registered_model, runs[best], metrics[best])
        decisions.append(
            registry.gate(
                task,
                candidate,
                best,
                metrics[best],
                version,
                float(margins.get(task.name, 0.0)),
                reevaluate=lambda mv: _reevaluate(params, mv, data_dir),
            ).to_dict()
        )
    report = {
        "data_version": version,
        "decisions": decisions,
        "champions": registry.registry_state(),
    }
    atomic_write_json(report_dir / "promotion.json", report)
    (report_dir / "promotion.md").write_text(promotion_markdown(report))
    return report


def _register_once(name: str, run: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Register the run's bundle under `name` unless the same weights+data are already there."""
    from mlflow.tracking import MlflowClient

    from pipelines import registry

    tracking.setup()
    for mv in MlflowClient().search_model_versions(f"name='{name}'"):
        if (mv.tags.get("weights_sha256"), mv.tags.get("data_version")) == (
            run["weights_sha256"],
            run["data_version"],
        ):
            return str(mv.version)
    tags = {
        k: run[k] for k in ("family", "data_version", "weights_sha256", "params_hash", "git_commit")
    }
    tags |= {f"metric.{k}": v for k, v in metrics.items() if isinstance(v, int | float)}
    return registry.register_version(
        name,
        run["run_id"],
        "model",
        tags,
        description="genops candidate (weights + config + calibration)",
    )


def _reevaluate(params: dict[str, Any], model_version: Any, data_dir: Path) -> dict[str, float]:
    """Measure a registered version on the current data (for a fair promotion gate)."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(model_version.source, dst_path=tmp))
        judge_dir = Path("artifacts") / "judge"
        return evaluate_family(
            params,
            model_version.tags.get("family", "?"),
            data_dir,
            local,
            judge_dir,
            Path(tmp) / "eval",
            Path(tmp) / "m.json",
            log_mlflow=False,
        )


def promotion_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Promotion decisions (data {report['data_version']})",
        "",
        "| task | candidate | metric | champion before | decision | reason |",
        "|---|---|---|---|---|---|",
    ]
    for d in report["decisions"]:
        champ = (
            "none"
            if d["champion_version"] is None
            else (
                f"v{d['champion_version']} ({d['champion_metric']:.4g})"
                if d["champion_metric"] is not None
                else f"v{d['champion_version']}"
            )
        )
        lines.append(
            f"| {d['task']} | {d['candidate_family']} v{d['candidate_version']} | "
            f"{d['candidate_metric']:.4g} | {champ} | "
            f"{'promoted' if d['promoted'] else 'kept champion'} | {d['reason']} |"
        )
    lines += ["", "Champions now:", ""]
    for task, state in report["champions"].items():
        lines.append(
            f"- {task}: " + ("none" if state is None else f"{state['family']} v{state['version']}")
        )
    return "\n".join(lines) + "\n"
