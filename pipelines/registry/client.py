"""MLflow model registry: candidates, the `champion` alias per task, the promotion gate, rollback,
and the `challenger` alias a task may hold beside its champion (served beside it, issue 22).

Registered models (names in models.spec):
    genops-generation   task "generation", primary metric fd_judge (lower is better)
    genops-anomaly      task "anomaly", primary metric anomaly_auroc_mean (higher is better)
    genops-<family>     every evaluated candidate of that family (any family by name)

A candidate takes `champion` only if it beats the current champion by more than `margin`. With
a `compare` function (the pipeline always passes one) the champion is measured on the current
data with the current judge, and the decision rests on a paired bootstrap confidence interval
of the improvement: the candidate is promoted only when the interval's lower end clears the
margin. A candidate that is the champion's learned state, config and data saved in another
format (e.g. with a neighbour search's index the champion derives at load) takes the alias
without a test (`format_upgrade`); a copy of the champion's very weights never does. Every
decision is tagged on the candidate version (numbers, interval, both data
versions, judge version) and returned for the report; `history()` reads them all back.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.canary import CANARY_TAG, Canary
from models.spec import (  # noqa: F401
    ALIAS,
    CHALLENGER,
    TASKS,
    Tag,
    Task,
    family_model_name,
    metric_tag,
)
from pipelines import tracking

log = logging.getLogger(__name__)
P = Tag.PROMOTION_PREFIX
ROLLBACK_PREFIX = "rollback."
CHALLENGE_PREFIX = "challenge."  # tag key prefix of a challenger alias move, by its time
CANARY_PREFIX = "canary."  # tag key prefix of a canary event (JSON: event, reason, figures)
LIVE_PREFIX = "live."  # the challenger's last live evidence, one tag per figure
# the gate's method for a candidate that is the champion saved in a newer format (format_upgrade)
FORMAT_UPGRADE = "format-upgrade"
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
    challenged: bool = False  # passed, and made challenger (promote_to="challenger")

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


def champion(task: Task, alias: str = ALIAS) -> Any | None:
    """The ModelVersion holding the task's champion alias (or `alias`), or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(task.registered_model, alias)
    except MlflowException:
        return None


def challenger(task: Task) -> Any | None:
    """The ModelVersion holding the task's challenger alias, or None."""
    return champion(task, CHALLENGER)


def set_challenger(task_name: str, version: str | None, reason: str = "by hand") -> str:
    """Point the task's challenger alias at `version` (None: remove it); return the previous
    holder ("none" when there was none). The champion's own version is refused: a challenger
    is compared with the champion, and a version cannot challenge itself."""
    task = TASKS[task_name]
    client = _client()
    previous = challenger(task)
    before = "none" if previous is None else str(previous.version)
    if version is None:
        if previous is not None:
            with tracking.write_lock():
                client.delete_registered_model_alias(task.registered_model, CHALLENGER)
                client.set_model_version_tag(
                    task.registered_model, before, f"{CHALLENGE_PREFIX}{time.time():.3f}",
                    f"challenger cleared ({reason})",
                )  # fmt: skip
        return before
    target = client.get_model_version(task.registered_model, str(version))  # raises if missing
    current = champion(task)
    if current is not None and str(current.version) == str(target.version):
        raise ValueError(f"{task.registered_model} v{version} is the champion: it cannot challenge")
    holder = "none" if current is None else str(current.version)
    with tracking.write_lock():
        client.set_registered_model_alias(task.registered_model, CHALLENGER, str(target.version))
        client.set_model_version_tag(
            task.registered_model, str(target.version), f"{CHALLENGE_PREFIX}{time.time():.3f}",
            f"made challenger ({reason}); champion v{holder}",
        )  # fmt: skip
    return before


def _drop_challenger(client: Any, task: Task, held: Any | None, champion_version: str) -> None:
    """A version that becomes champion stops being the challenger. `held` is the challenger
    read before the write lock was taken (reading opens the store: not inside the lock)."""
    if held is not None and str(held.version) == str(champion_version):
        client.delete_registered_model_alias(task.registered_model, CHALLENGER)


def gate(
    task: Task,
    candidate_version: str,
    candidate_family: str,
    candidate_metrics: dict[str, float],
    data_version: str,
    margin: float,
    compare: Compare | None = None,
    judge_version: str | None = None,
    promote_to: str = ALIAS,
) -> Decision:
    """Move the champion alias to the candidate only if it beats the champion by `margin`.

    `promote_to="challenger"` (params.yaml registry.promote_to): a candidate that passes
    becomes the task's challenger instead, and live traffic decides (`genops canary`); the
    first champion of a task is still made champion (there is nothing to challenge).

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
        elif (
            same_weights
            and same_weights == tags.get(Tag.WEIGHTS_SHA256)
            and config_sha256(mine) == config_sha256(current)  # read only when weights match
        ):
            d.method = "same-weights"
            d.reason = "the candidate has the champion's very weights (a copy): nothing to gain"
        elif format_upgrade(mine, current):
            d.promoted, d.method = True, FORMAT_UPGRADE
            d.reason = (
                "the champion's learned state, config and data, saved with derived state it "
                "lacks or another copy of it (e.g. a neighbour search's index): the same model "
                "in a newer format, nothing to test; the alias moves to it"
            )
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
    if promote_to not in (ALIAS, CHALLENGER):
        raise ValueError(f"promote_to must be {ALIAS!r} or {CHALLENGER!r}, got {promote_to!r}")
    if (
        d.promoted
        and promote_to == CHALLENGER
        and current is not None
        and d.method != FORMAT_UPGRADE
    ):
        d.promoted, d.challenged = False, True
        d.reason += "; made challenger: live traffic decides (genops canary)"
    if d.method != "same-version":  # a rerun must not overwrite the decision already recorded
        _record(client, task, d)
    outcome = "PROMOTED" if d.promoted else "CHALLENGER" if d.challenged else "kept champion"
    log.info("%s: %s v%s %s (%s)", task.name, candidate_family, candidate_version, outcome,
             d.reason)  # fmt: skip
    return d


def _record(client: Any, task: Task, d: Decision) -> None:
    """Move the alias (when promoted) and tag the decision on the candidate, in one lock."""
    interval = d.interval or {}
    tags = {
        "decision": "promoted" if d.promoted else CHALLENGER if d.challenged else "rejected",
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
    held = challenger(task) if d.promoted else None
    with tracking.write_lock():
        if d.promoted:
            client.set_registered_model_alias(task.registered_model, ALIAS, d.candidate_version)
            _drop_challenger(client, task, held, d.candidate_version)
        elif d.challenged:
            client.set_registered_model_alias(task.registered_model, CHALLENGER,
                                              d.candidate_version)  # fmt: skip
        for key, val in tags.items():
            client.set_model_version_tag(task.registered_model, d.candidate_version, P + key, val)


def rollback(task_name: str, version: str) -> str:
    """Point the task's champion alias at an earlier `version`; return the previous holder."""
    task = TASKS[task_name]
    client = _client()
    target = client.get_model_version(task.registered_model, str(version))  # raises if missing
    previous = champion(task)
    before = "none" if previous is None else str(previous.version)
    held = challenger(task)
    with tracking.write_lock():
        client.set_registered_model_alias(task.registered_model, ALIAS, str(target.version))
        _drop_challenger(client, task, held, str(target.version))
        client.set_model_version_tag(
            task.registered_model,
            str(target.version),
            f"{ROLLBACK_PREFIX}{time.time():.3f}",
            f"rolled back to from v{before}",
        )
    return before


def canary(task: Task) -> Canary | None:
    """The task's canary record (models.canary), or None."""
    from mlflow.exceptions import MlflowException

    try:
        text = (_client().get_registered_model(task.registered_model).tags or {}).get(CANARY_TAG)
    except MlflowException:
        return None
    return Canary.loads(task.name, text) if text else None


def _canary_event(
    client: Any, task: Task, version: str, event: str, reason: str, figures: dict[str, Any]
) -> None:
    """Record a canary event on `version` (history) and its figures as `live.*` tags."""
    record = {"event": event, "reason": reason, **figures}
    client.set_model_version_tag(
        task.registered_model, version, f"{CANARY_PREFIX}{time.time():.3f}", json.dumps(record)
    )
    for key, value in figures.items():
        if isinstance(value, int | float):
            client.set_model_version_tag(task.registered_model, version, LIVE_PREFIX + key,
                                         f"{value:.6g}")  # fmt: skip


def start_canary(task_name: str, share: float, reason: str, figures: dict[str, Any]) -> Canary:
    """Send `share` of the task's champion traffic to its challenger (a registered-model tag
    every serving worker follows); ValueError when the task has no challenger."""
    task = TASKS[task_name]
    held = challenger(task)
    if held is None:
        raise ValueError(f"{task.registered_model} has no challenger: set one first "
                         "(`genops challenge --task ... --version N`)")  # fmt: skip
    record = Canary(task.name, str(held.version), share, time.time())
    client = _client()
    with tracking.write_lock():
        client.set_registered_model_tag(task.registered_model, CANARY_TAG, record.dumps())
        _canary_event(client, task, record.version, "started", reason,
                      {"share": share, **figures})  # fmt: skip
    return record


def end_canary(
    task_name: str,
    version: str,
    event: str,
    reason: str,
    figures: dict[str, Any],
    promote: bool = False,
    drop_challenger: bool = False,
) -> None:
    """End the task's canary of `version`, recording `event` with its reason and figures.

    `promote`: the challenger takes the champion alias (and stops being the challenger);
    `drop_challenger`: the challenger alias is removed (a rollback). A canary record of
    another version (someone moved on) is left alone.
    """
    task = TASKS[task_name]
    client = _client()
    live, held = canary(task), challenger(task)
    with tracking.write_lock():
        if live is not None and live.version == str(version):
            client.delete_registered_model_tag(task.registered_model, CANARY_TAG)
        if promote:
            client.set_registered_model_alias(task.registered_model, ALIAS, str(version))
        if promote or drop_challenger:
            _drop_challenger(client, task, held, str(version))
        _canary_event(client, task, str(version), event, reason, figures)


def registry_state() -> dict[str, Any]:
    """Champion of each task with its family and primary metric (for reports and the README)."""
    state = {}
    for task in TASKS.values():

        def describe(mv: Any, task: Task = task) -> dict[str, Any] | None:
            return None if mv is None else {
                "version": str(mv.version),
                "family": mv.tags.get(Tag.FAMILY),
                task.metric: mv.tags.get(metric_tag(task.metric)),
                "data_version": mv.tags.get(Tag.DATA_VERSION),
            }  # fmt: skip

        state[task.name] = describe(champion(task))
        if state[task.name] is not None:
            state[task.name]["challenger"] = describe(challenger(task))
            live = canary(task)
            state[task.name]["canary"] = None if live is None else {
                "version": live.version, "share": live.share, "started_at": live.started_at
            }  # fmt: skip
    return state


def format_upgrade(candidate: Any, champion: Any) -> bool:
    """Whether `candidate` is `champion` saved in another format: other weights files, the same
    learned state (`state_sha256`: the weights less derived state), config and data version.
    Both model versions' tags are read; the state of one registered before the tag existed is
    computed from its registered weights (then kept as its tag)."""
    mine, theirs = candidate.tags or {}, champion.tags or {}
    if mine.get(Tag.WEIGHTS_SHA256) == theirs.get(Tag.WEIGHTS_SHA256):
        return False  # the very weights: a copy, not an upgrade
    if not mine.get(Tag.DATA_VERSION) or mine.get(Tag.DATA_VERSION) != theirs.get(Tag.DATA_VERSION):
        return False
    if config_sha256(candidate) is None or config_sha256(candidate) != config_sha256(champion):
        return False
    state = state_sha256_of(candidate)
    return state is not None and state == state_sha256_of(champion)


def state_sha256_of(model_version: Any) -> str | None:
    """The version's `state_sha256` tag; for a version registered before the tag existed, the
    `models.io.state_sha256` of its registered weights (downloaded once, then kept as the tag),
    or None when they cannot be read."""
    from models.io import state_sha256
    from models.spec import WEIGHTS_FILE

    return _tag_or_digest(model_version, Tag.STATE_SHA256, WEIGHTS_FILE, state_sha256)


def config_sha256(model_version: Any) -> str | None:
    """The version's `config_sha256` tag; for a version registered before the tag existed, the
    sha256 of its registered config.json (downloaded once, then kept as the tag), or None when
    that cannot be read (the version is then told apart from every tagged one)."""
    from models.io import sha256_file
    from models.spec import CONFIG_FILE

    return _tag_or_digest(model_version, Tag.CONFIG_SHA256, CONFIG_FILE, sha256_file)


def _tag_or_digest(
    model_version: Any, tag: str, filename: str, digest: Callable[[Path], str]
) -> str | None:
    """`tag` of the version, else `digest` of its registered `filename`, then kept as the tag;
    None when the file cannot be read (an unreadable legacy version: never the same model)."""
    import tempfile

    import mlflow

    tags = model_version.tags or {}
    if tags.get(tag):
        return tags[tag]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_version.source}/{filename}",
                dst_path=tmp,
                tracking_uri=tracking.tracking_uri(),
            )
            sha = digest(Path(path))
    except Exception as exc:
        log.warning("%s v%s: no readable %s (%s)", model_version.name, model_version.version,
                    filename, exc)  # fmt: skip
        return None
    client = _client()  # before the lock: the client's setup takes it too
    with tracking.write_lock():
        client.set_model_version_tag(model_version.name, str(model_version.version), tag, sha)
    return sha


def register_candidate(name: str, run: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Register an evaluate run's bundle under `name` with its lineage and metric tags, unless
    the same model (weights and config) on the same data (and judge) is registered there
    already. The config counts: an ensemble with a new view or combination keeps its members'
    weights, and must not be mistaken for the version registered before it."""
    from models.spec import REGISTERED_ARTIFACT_PATH

    key = (Tag.WEIGHTS_SHA256, Tag.DATA_VERSION, Tag.JUDGE_VERSION)
    for mv in _client().search_model_versions(f"name='{name}'"):
        if all(mv.tags.get(k) == run.get(k) for k in key) and (
            run.get(Tag.CONFIG_SHA256) is None or config_sha256(mv) == run[Tag.CONFIG_SHA256]
        ):
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
                if key.startswith(CANARY_PREFIX):
                    record = json.loads(value)
                    at = float(key.removeprefix(CANARY_PREFIX))
                    events.append({**base, **record, "at": at,
                                   "event": f"canary {record['event']}",
                                   "data_version": tags.get(Tag.DATA_VERSION)})  # fmt: skip
                for prefix, event in (
                    (ROLLBACK_PREFIX, "rollback"),
                    (CHALLENGE_PREFIX, "challenge"),
                ):
                    if key.startswith(prefix):
                        at = float(key.removeprefix(prefix))
                        events.append({**base, "at": at, "event": event, "reason": value,
                                       "data_version": tags.get(Tag.DATA_VERSION)})  # fmt: skip
    return sorted(events, key=lambda e: (e["at"], e["task"]))
