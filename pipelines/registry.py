"""MLflow model registry: candidates, the `champion` alias per task, the promotion gate, rollback.

Registered models:
    genops-generation   task "generation", primary metric fd_judge (lower is better)
    genops-anomaly      task "anomaly", primary metric anomaly_auroc_mean (higher is better)
    genops-<family>     every evaluated candidate of that family (any family by name)

A candidate takes `champion` only if it beats the current champion on the task's primary
metric by `margin`, both measured on the same data version; otherwise the champion stays.
Every decision is tagged on the candidate version and returned for the report file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pipelines import tracking

log = logging.getLogger(__name__)
ALIAS = "champion"


@dataclass(frozen=True)
class Task:
    name: str
    registered_model: str
    metric: str
    higher_is_better: bool

    def improvement(self, candidate: float, champion: float) -> float:
        """How much better the candidate is (positive = better), in metric units."""
        return candidate - champion if self.higher_is_better else champion - candidate


TASKS = {
    "generation": Task("generation", "genops-generation", "fd_judge", False),
    "anomaly": Task("anomaly", "genops-anomaly", "anomaly_auroc_mean", True),
}


def family_model_name(family: str) -> str:
    return f"genops-{family}"


@dataclass
class Decision:
    task: str
    candidate_family: str
    candidate_version: str
    candidate_metric: float
    champion_version: str | None
    champion_metric: float | None
    margin: float
    promoted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _client():
    from mlflow.tracking import MlflowClient

    tracking.setup()
    return MlflowClient()


def _ensure_registered_model(client, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)


def register_version(
    name: str, run_id: str, artifact_path: str, tags: dict[str, Any], description: str = ""
) -> str:
    """Register `runs:/<run_id>/<artifact_path>` as a new version of `name`; return the version."""
    client = _client()
    with tracking.write_lock():
        _ensure_registered_model(client, name, description)
        source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = client.create_model_version(
            name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}
        )
    return str(version.version)


def champion(task: Task) -> Any | None:
    """The ModelVersion holding the task's champion alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(task.registered_model, ALIAS)
    except MlflowException:
        return None


def gate(
    task: Task,
    candidate_version: str,
    candidate_family: str,
    candidate_metrics: dict[str, float],
    data_version: str,
    margin: float,
    reevaluate: Callable[[Any], dict[str, float]] | None = None,
) -> Decision:
    """Move the champion alias to the candidate only if it beats the champion by `margin`.

    The champion's number must come from the same data version: when its recorded data version
    differs, `reevaluate(model_version)` measures it on the current data (without it, the
    champion is kept and the candidate is rejected as not comparable).
    """
    client = _client()
    value = float(candidate_metrics[task.metric])
    current = champion(task)
    champ_value: float | None = None
    if current is None:
        promoted, reason = True, "no champion yet"
    elif str(current.version) == str(candidate_version):
        promoted, reason = False, "candidate is already the champion"
    else:
        if current.tags.get("data_version") == data_version:
            champ_value = float(current.tags[f"metric.{task.metric}"])
        elif reevaluate is not None:
            champ_value = float(reevaluate(current)[task.metric])
        if champ_value is None:
            promoted = False
            reason = "champion was evaluated on another data version and was not re-evaluated"
        else:
            gain = task.improvement(value, champ_value)
            promoted = gain > margin
            direction = "higher" if task.higher_is_better else "lower"
            reason = (
                f"{task.metric} {value:.4g} vs champion {champ_value:.4g} ({direction} is better): "
                f"improvement {gain:+.4g} {'>' if promoted else '<='} margin {margin:g}"
            )
    decision = Decision(
        task.name,
        candidate_family,
        candidate_version,
        value,
        None if current is None else str(current.version),
        champ_value,
        margin,
        promoted,
        reason,
    )
    with tracking.write_lock():
        if promoted:
            client.set_registered_model_alias(task.registered_model, ALIAS, candidate_version)
        for key, val in {
            "promotion.decision": "promoted" if promoted else "rejected",
            "promotion.reason": reason,
            "promotion.champion_version": decision.champion_version or "none",
            "promotion.champion_metric": "none" if champ_value is None else f"{champ_value:.6g}",
            "promotion.candidate_metric": f"{value:.6g}",
        }.items():
            client.set_model_version_tag(task.registered_model, candidate_version, key, val)
    log.info(
        "%s: %s v%s %s (%s)",
        task.name,
        candidate_family,
        candidate_version,
        "PROMOTED" if promoted else "kept champion",
        reason,
    )
    return decision


def rollback(task_name: str, version: str) -> str:
    """Point the task's champion alias at an earlier `version`; return the previous holder."""
    task = TASKS[task_name]
    client = _client()
    target = client.get_model_version(task.registered_model, str(version))  # raises if missing
    previous = champion(task)
    with tracking.write_lock():
        client.set_registered_model_alias(task.registered_model, ALIAS, str(target.version))
        client.set_model_version_tag(
            task.registered_model, str(target.version), "promotion.decision", "rolled back to"
        )
    return "none" if previous is None else str(previous.version)


def registry_state() -> dict[str, Any]:
    """Champion of each task with its family and primary metric (for reports and the README)."""
    state = {}
    for task in TASKS.values():
        current = champion(task)
        state[task.name] = (
            None
            if current is None
            else {
                "version": str(current.version),
                "family": current.tags.get("family"),
                task.metric: current.tags.get(f"metric.{task.metric}"),
                "data_version": current.tags.get("data_version"),
            }
        )
    return state
