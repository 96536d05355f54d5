"""MLflow model registry: candidates, the `champion` alias per task, the promotion gate, rollback.

Registered models (names in models.spec):
    genops-generation   task "generation", primary metric fd_judge (lower is better)
    genops-anomaly      task "anomaly", primary metric anomaly_auroc_mean (higher is better)
    genops-<family>     every evaluated candidate of that family (any family by name)

A candidate takes `champion` only if it beats the current champion by more than `margin`. With
a `compare` function (the pipeline always passes one) the champion is measured on the current
data with the current judge, and the decision rests on a paired bootstrap confidence interval
of the improvement: the candidate is promoted only when the interval's lower end clears the
margin. Every decision is tagged on the candidate version (numbers, interval, both data
versions, judge version) and returned for the report; `history()` reads them all back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from models.spec import ALIAS, TASKS, Tag, Task, family_model_name, metric_tag  # noqa: F401
from pipelines import tracking

log = logging.getLogger(__name__)
P = Tag.PROMOTION_PREFIX
ROLLBACK_PREFIX = "rollback."
# what a decision records of its interval: both gates' CI, the sequential gate's cost and rounds
INTERVAL_TAGS = ("improvement", "ci_low", "ci_high", "rounds", "n_per_model", "p_value",
                 "seconds", "candidate", "champion")  # fmt: skip


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
    method: str = "point-estimate"  # "first", "same-version", "paired-bootstrap", ...
    data_version: str = ""
    champion_family: str | None = None
    champion_data_version: str | None = None  # where the champion was first measured
    champion_evidence: str | None = None  # "logged" or "re-measured" (paired bootstrap)
    judge_version: str | None = None
    interval: dict[str, Any] | None = None  # PairedInterval / SequentialResult .to_dict()
    overlap: dict[str, Any] | None = None  # what of the current test/val the champion saw
    decided_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# compare(champion ModelVersion) -> (comparison, how the champion was measured[, overlap dict]);
# a comparison has .method, .metric, .champion, .clears(margin), .summary(margin), .to_dict()
Compare = Callable[[Any], tuple[Any, str]]


def _client():
    from models.spec import mlflow_client

    tracking.setup()
    return mlflow_client()


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
    compare: Compare | None = None,
    judge_version: str | None = None,
) -> Decision:
    """Move the champion alias to the candidate only if it beats the champion by `margin`.

    A copy of the champion's weights is never promoted. With `compare`, the decision is the
    comparison's own (`clears(margin)`): the sequential KID test on fresh samples for generation
    (pipelines.evaluation.sequential), the paired bootstrap interval's lower end > margin for the
    anomaly task (pipelines.evaluation.paired). Without
    it, the recorded point estimates are compared, and only on the same data version (a
    champion measured on other data is kept and the candidate rejected as not comparable).
    """
    client = _client()
    value = float(candidate_metrics[task.metric])
    current = champion(task)
    d = Decision(task.name, candidate_family, str(candidate_version), value, None, None,
                 margin, False, "", data_version=data_version, judge_version=judge_version,
                 decided_at=time.time())  # fmt: skip
    direction = "higher" if task.higher_is_better else "lower"
    if current is None:
        d.promoted, d.reason, d.method = True, "no champion yet", "first"
    else:
        tags = dict(current.tags or {})
        d.champion_version = str(current.version)
        d.champion_family = tags.get(Tag.FAMILY)
        d.champion_data_version = tags.get(Tag.DATA_VERSION)
        mine = client.get_model_version(task.registered_model, str(candidate_version))
        same_weights = (mine.tags or {}).get(Tag.WEIGHTS_SHA256)
        if d.champion_version == str(candidate_version):
            d.reason, d.method = "candidate is already the champion", "same-version"
        elif same_weights and same_weights == tags.get(Tag.WEIGHTS_SHA256):
            d.method = "same-weights"
            d.reason = "the candidate has the champion's very weights (a copy): nothing to gain"
        elif compare is not None:
            interval, d.champion_evidence, *rest = compare(current)
            d.overlap = rest[0] if rest else None
            d.method, d.interval = interval.method, interval.to_dict()
            if interval.metric == task.metric:  # the sequential test's values are KIDs
                d.champion_metric = float(interval.champion)
            d.promoted = interval.clears(margin)
            d.reason = f"({direction} is better, on data {data_version}) " + interval.summary(
                margin
            )
        elif d.champion_data_version == data_version:
            d.champion_metric = float(tags[metric_tag(task.metric)])
            gain = task.improvement(value, d.champion_metric)
            d.promoted = gain > margin
            d.reason = (
                f"{task.metric} {value:.4g} vs champion {d.champion_metric:.4g} "
                f"({direction} is better): improvement {gain:+.4g} "
                f"{'>' if d.promoted else '<='} margin {margin:g}"
            )
        else:
            d.method = "not-comparable"
            d.reason = "champion was evaluated on another data version and was not re-evaluated"
    if d.method != "same-version":  # a rerun must not overwrite the decision already recorded
        _record(client, task, d)
    log.info("%s: %s v%s %s (%s)", task.name, candidate_family, candidate_version,
             "PROMOTED" if d.promoted else "kept champion", d.reason)  # fmt: skip
    return d


def _record(client: Any, task: Task, d: Decision) -> None:
    """Move the alias (when promoted) and tag the decision on the candidate, in one lock."""
    interval = d.interval or {}
    tags = {
        "decision": "promoted" if d.promoted else "rejected",
        "reason": d.reason,
        "method": d.method,
        "champion_version": d.champion_version or "none",
        "champion_metric": "none" if d.champion_metric is None else f"{d.champion_metric:.6g}",
        "champion_data_version": d.champion_data_version or "none",
        "champion_evidence": d.champion_evidence or "none",
        "candidate_metric": f"{d.candidate_metric:.6g}",
        "data_version": d.data_version,
        "judge_version": d.judge_version or "none",
        "margin": f"{d.margin:g}",
        "decided_at": f"{d.decided_at:.3f}",
        **{k: f"{interval[k]:.6g}" for k in INTERVAL_TAGS if k in interval},
        **({"confidence": f"{interval['confidence']:g}"} if "confidence" in interval else {}),
        **({"interval_metric": str(interval["metric"])} if interval else {}),
        **({"stop": str(interval["decision"])} if "decision" in interval else {}),
        **{f"overlap_{k}": str(v) for k, v in (d.overlap or {}).items()},
    }
    with tracking.write_lock():
        if d.promoted:
            client.set_registered_model_alias(task.registered_model, ALIAS, d.candidate_version)
        for key, val in tags.items():
            client.set_model_version_tag(task.registered_model, d.candidate_version, P + key, val)


def rollback(task_name: str, version: str) -> str:
    """Point the task's champion alias at an earlier `version`; return the previous holder."""
    task = TASKS[task_name]
    client = _client()
    target = client.get_model_version(task.registered_model, str(version))  # raises if missing
    previous = champion(task)
    before = "none" if previous is None else str(previous.version)
    with tracking.write_lock():
        client.set_registered_model_alias(task.registered_model, ALIAS, str(target.version))
        client.set_model_version_tag(
            task.registered_model,
            str(target.version),
            f"{ROLLBACK_PREFIX}{time.time():.3f}",
            f"rolled back to from v{before}",
        )
    return before


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
                "family": current.tags.get(Tag.FAMILY),
                task.metric: current.tags.get(metric_tag(task.metric)),
                "data_version": current.tags.get(Tag.DATA_VERSION),
            }
        )
    return state


def register_candidate(name: str, run: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Register an evaluate run's bundle under `name` with its lineage and metric tags, unless
    the same weights on the same data (and judge) are registered there already."""
    from models.spec import REGISTERED_ARTIFACT_PATH

    key = (Tag.WEIGHTS_SHA256, Tag.DATA_VERSION, Tag.JUDGE_VERSION)
    for mv in _client().search_model_versions(f"name='{name}'"):
        if all(mv.tags.get(k) == run.get(k) for k in key):
            return str(mv.version)
    tags = {k: run[k] for k in Tag.LINEAGE if k in run}
    tags |= {metric_tag(k): v for k, v in metrics.items() if isinstance(v, int | float)}
    description = "genops candidate (weights + config + calibration)"
    return register_version(name, run["run_id"], REGISTERED_ARTIFACT_PATH, tags, description)


def history() -> list[dict[str, Any]]:
    """Every gate decision and rollback recorded in the registry, oldest first."""
    client, events = _client(), []
    for task in TASKS.values():
        try:
            versions = client.search_model_versions(f"name='{task.registered_model}'")
        except Exception:
            versions = []
        for mv in versions:
            tags = dict(mv.tags or {})
            base = {"task": task.name, "version": str(mv.version), "family": tags.get(Tag.FAMILY)}
            if P + "decision" in tags:
                fields = {k.removeprefix(P): v for k, v in tags.items() if k.startswith(P)}
                at = float(fields.get("decided_at") or mv.creation_timestamp / 1000)
                events.append({**base, "at": at, "event": fields["decision"], **fields})
            for key, value in tags.items():
                if key.startswith(ROLLBACK_PREFIX):
                    at = float(key.removeprefix(ROLLBACK_PREFIX))
                    events.append({**base, "at": at, "event": "rollback", "reason": value,
                                   "data_version": tags.get(Tag.DATA_VERSION)})  # fmt: skip
    return sorted(events, key=lambda e: (e["at"], e["task"]))
