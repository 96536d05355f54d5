"""The evaluation step (`genops evaluate`) and the re-measurement of a registered version.

Both measure a model with the same code on the current data and the current judge. Measuring
needs only what a registered version carries: weights, config and calibration (the bundle,
`models.bundle`); training metadata such as wall time is added when it is there.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from models.bundle import check_model_files, write_model_files
from models.io import atomic_write_json, load_model, sha256_file, state_sha256
from models.spec import CONFIG_FILE, REGISTERED_ARTIFACT_PATH, WEIGHTS_FILE, Tag
from pipelines import tracking
from pipelines.data.dataset import SPLITS, load_tensors
from pipelines.data.versioning import data_version
from pipelines.evaluation.paired import EVIDENCE_FILE, Evidence
from pipelines.settings import section

log = logging.getLogger(__name__)
RUN_INFO = "run.json"
EVIDENCE_ARTIFACT = "evidence"
TRAIN_METRICS = ("train_wall_time_s", "train_images_per_s", "steps")


def judge_version(judge_dir: Path) -> str:
    """The judge's identity: the first 16 hex digits of its weights' sha256."""
    from pipelines.evaluation.judge import JUDGE_WEIGHTS

    return sha256_file(Path(judge_dir) / JUDGE_WEIGHTS)[:16]


def _signature_files(model, bundle: Path) -> None:
    """MLflow-style signature + input example for the bundle (JSON, no pickle)."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.zeros((1, 1, 28, 28), dtype=np.float32)
    with torch.no_grad():
        scores = model.anomaly_score(torch.from_numpy(example)).cpu().numpy()
    atomic_write_json(bundle / "signature.json", infer_signature(example, scores).to_dict())
    atomic_write_json(bundle / "input_example.json", {"images": example.tolist()})


def measure(
    params: dict[str, Any], model: Any, data_dir: Path, judge_dir: Path, out_dir: Path
) -> dict[str, Any]:
    """Evaluate a loaded model on the data in `data_dir`; evidence goes to `out_dir`."""
    import torch

    from pipelines.evaluation.evaluator import EvalConfig, evaluate_model, load_reference
    from pipelines.evaluation.judge import load_judge
    from pipelines.training.resources import available_cores

    torch.set_num_threads(available_cores())  # per thread: flows run tasks in worker threads
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    splits = {s: load_tensors(data_dir, s) for s in SPLITS}
    reference = load_reference(Path(judge_dir) / "reference.npz")
    return evaluate_model(model, load_judge(judge_dir), splits, cfg, Path(out_dir), reference)


def training_warnings(history: list[dict[str, Any]]) -> dict[str, float]:
    """How often a family's failure monitors (`warn_<name>` logs) fired while it trained.

    Per monitor, the logging windows in which it fired (`train_warn_<name>_windows`), and any
    (`train_warning_windows`) out of `train_log_windows`; {} for a family without monitors.
    """
    rows = [row for row in history if any(k.startswith("warn_") for k in row)]
    keys = sorted({k for row in rows for k in row if k.startswith("warn_")})
    if not keys:
        return {}
    out = {f"train_{k}_windows": float(sum(row.get(k, 0) > 0 for row in rows)) for k in keys}
    out["train_warning_windows"] = float(sum(any(row.get(k, 0) > 0 for k in keys) for row in rows))
    out["train_log_windows"] = float(len(rows))
    return out


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
    """Evaluate one trained family on the shared metrics; build its registrable bundle."""
    from pipelines.evaluation.evaluator import numeric_metrics

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_model(model_dir)
    result = measure(params, model, data_dir, judge_dir, out_dir)
    train_metrics_file = model_dir / "train_metrics.json"
    if train_metrics_file.is_file():
        train_metrics = json.loads(train_metrics_file.read_text())
        result |= {k: train_metrics[k] for k in TRAIN_METRICS if k in train_metrics}
    history_file = model_dir / "history.json"
    if history_file.is_file():
        result |= training_warnings(json.loads(history_file.read_text()))
    metrics = numeric_metrics(result)
    if metrics.get("score_ms_per_image", 0) > 0:  # the cost beside the AUROC, as a rate too
        metrics["score_images_per_s"] = 1000.0 / metrics["score_ms_per_image"]
    atomic_write_json(metrics_path, {"family": family, **metrics})

    bundle = out_dir / "bundle"
    sha = write_model_files(bundle, model_dir, out_dir)
    _signature_files(model, bundle)  # the bundle holds a copy of these very weights
    info = {
        Tag.FAMILY: family,
        Tag.DATA_VERSION: data_version(data_dir=data_dir),
        Tag.WEIGHTS_SHA256: sha,
        Tag.CONFIG_SHA256: sha256_file(bundle / CONFIG_FILE),
        Tag.STATE_SHA256: state_sha256(bundle / WEIGHTS_FILE),
        Tag.PARAMS_HASH: tracking.params_hash(section(params, family)),
        Tag.GIT_COMMIT: tracking.git_commit(),
        Tag.JUDGE_VERSION: judge_version(judge_dir),
    }
    if log_mlflow:
        history = model_dir / "history.json"
        info["run_id"] = tracking.log_run(
            f"evaluate-{family}",
            params={"family": family, "evaluate": section(params, "evaluate")},
            tags={"stage": "evaluate", **info},
            metrics=metrics,
            history=json.loads(history.read_text()) if history.is_file() else None,
            artifacts={
                REGISTERED_ARTIFACT_PATH: bundle,
                "plots": out_dir / "plots",
                EVIDENCE_ARTIFACT: out_dir / EVIDENCE_FILE,
            },
        )
    atomic_write_json(out_dir / RUN_INFO, info)
    return metrics


def download_registered(model_version: Any, dst: Path) -> Any:
    """A registered version's model, downloaded, its files checked and its weights verified."""
    import mlflow

    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=str(model_version.source),
            dst_path=str(dst),
            tracking_uri=tracking.tracking_uri(),
        )
    )
    check_model_files(local, f"{model_version.name} v{model_version.version}")
    tags = dict(model_version.tags or {})
    return load_model(local, expected_sha256=tags.get(Tag.WEIGHTS_SHA256) or None)


def registered_evidence(
    params: dict[str, Any],
    model_version: Any,
    data_dir: Path,
    judge_dir: Path,
    paired_with: Evidence | None = None,
) -> tuple[Evidence, str]:
    """Paired evidence of a registered version on the current data with the current judge.

    When the version was evaluated on this very data version with this very judge, its logged
    evidence is reused (evaluation is deterministic) unless it is not paired with
    `paired_with` (logged by older code on other items: a held-out kind added since); otherwise
    the version is downloaded and measured again. Returns the evidence and how it was obtained
    ("logged" or "re-measured").
    """
    import mlflow

    tags = dict(model_version.tags or {})
    same = tags.get(Tag.DATA_VERSION) == data_version(data_dir=data_dir) and tags.get(
        Tag.JUDGE_VERSION
    ) == judge_version(judge_dir)
    with tempfile.TemporaryDirectory(prefix="genops-champion-") as tmp:
        if same and model_version.run_id:
            try:
                path = mlflow.artifacts.download_artifacts(
                    run_id=model_version.run_id,
                    artifact_path=f"{EVIDENCE_ARTIFACT}/{EVIDENCE_FILE}",
                    dst_path=tmp,
                    tracking_uri=tracking.tracking_uri(),
                )
                logged = Evidence.load(Path(path))
                if paired_with is not None:  # logged by older code, on other items (suites)
                    paired_with.check_paired_with(logged)
                return logged, "logged"
            except Exception as exc:  # an older version without (usable) logged evidence
                log.info("no usable logged evidence for %s v%s (%s): re-measuring",
                         model_version.name, model_version.version, exc)  # fmt: skip
        model = download_registered(model_version, Path(tmp) / "model")
        measure(params, model, data_dir, judge_dir, Path(tmp) / "eval")  # verified, loaded once
        return Evidence.load(Path(tmp) / "eval"), "re-measured"
