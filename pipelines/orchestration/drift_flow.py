"""Drift watch as a scheduled Prefect flow: live served scores vs the champion's calibration.

Each run reads the service's `/metrics` (the served-score histogram and the anomaly counter of
the anomaly champion's family/version), compares it with the champion's `calibration.json`
(pipelines.monitoring.drift: PSI, KS, Wasserstein-1, flagged rate), writes a report (Markdown +
PNG) to `reports/drift/`, to MLflow (a run tagged stage=drift) and as a Prefect artifact, and
past the alarm levels in params.yaml `drift:` asks for the nightly retrain deployment to run now.

Prometheus counters grow from the service's start, so each judged run stores what it saw in
`.genops/drift/last_window.json` and the next run looks only at the scores served since then
(a service restart starts the window over). A run with fewer than `min_count` scores reports
"insufficient data" and keeps the old snapshot, so a quiet service's window grows until it can
be judged.

    genops drift run --service-url http://127.0.0.1:3000 [--bundle DIR] [--no-trigger]
    genops drift serve                 # the hourly deployment, served

The statistics are pipelines.monitoring.drift (pure), the report files
pipelines.monitoring.report, the command line pipelines/cli/drift.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from models.bundle import BundleMeta, read_meta
from models.calibration import Calibration
from models.spec import ALIAS, ANOMALY, CALIBRATION_FILE, META_FILE, ROOT_ENV, TASKS
from pipelines.errors import ChampionMissing, RetrainRequestFailed, ServiceUnreachable
from pipelines.monitoring.drift import (
    INSUFFICIENT,
    DriftReport,
    DriftThresholds,
    LiveScores,
    assess,
    parse_live_scores,
    report_markdown,
)
from pipelines.monitoring.report import REPORT_DIR, write_report_files
from pipelines.orchestration.deployments import (
    DEFAULT_SERVICE_URL,
    DRIFT_DEPLOYMENT,
    DRIFT_FLOW,
    HOURLY_CRON,
    retrain_deployment,
)
from pipelines.orchestration.retry import TRANSIENT, retry_transient
from pipelines.settings import load_params

STATE_FILE = Path(".genops") / "drift" / "last_window.json"
CHAMPION_CACHE = Path(".genops") / "drift" / "champion"


# ---- the champion ------------------------------------------------------------------------
def champion_bundle(bundle: str | None, root: Path, tracking_uri: str | None = None) -> Path:
    """The anomaly champion's bundle folder: `bundle` (a served bundle, or a folder holding
    `anomaly/`), else `genops-anomaly@champion` from the registry, downloaded once and verified.
    """
    if bundle:
        path = Path(bundle).expanduser()
        for candidate in (path, path / ANOMALY):
            if (candidate / CALIBRATION_FILE).is_file() and (candidate / META_FILE).is_file():
                return candidate
        raise ChampionMissing(
            f"{path} is not a served bundle: it needs {CALIBRATION_FILE} and {META_FILE} "
            f"(itself or in {ANOMALY}/)"
        )
    from mlflow.exceptions import MlflowException

    from models.registry_copy import cache_problem, materialize_version, meta_from_version
    from models.spec import mlflow_client, redact_uri
    from models.spec import tracking_uri as default_uri

    uri = tracking_uri or default_uri(root)
    name = TASKS[ANOMALY].registered_model
    try:
        mv = mlflow_client(uri).get_model_version_by_alias(name, ALIAS)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ChampionMissing(f"no {name}@{ALIAS} in the registry {redact_uri(uri)}") from None
    expected = meta_from_version(mv, ANOMALY)
    dst = root / CHAMPION_CACHE / mv.name / str(mv.version)
    if not dst.exists() or cache_problem(dst, expected) is not None:
        materialize_version(mv, ANOMALY, dst, uri, verify=True)
    return dst


# ---- the service -------------------------------------------------------------------------
def score_metric_names() -> tuple[str, str]:
    """The served-score histogram's and the anomaly counter's names (models/spec.py, the one
    definition serving's /metrics uses too)."""
    from models.spec import ANOMALY_COUNTER, SCORE_HISTOGRAM

    return SCORE_HISTOGRAM, ANOMALY_COUNTER


def fetch_metrics(service_url: str, timeout_s: float = 10.0) -> str:
    """GET `<service_url>/metrics`; ServiceUnreachable on connection errors, timeouts and 5xx."""
    import httpx

    from models.spec import redact_uri

    url = f"{service_url.rstrip('/')}/metrics"
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.TransportError as exc:
        raise ServiceUnreachable(f"cannot read {redact_uri(url)}: {exc!r}") from exc
    if response.status_code >= 500:
        raise ServiceUnreachable(f"{redact_uri(url)} answered {response.status_code}")
    if response.status_code != 200:  # 4xx: wrong URL or not our service, not transient
        raise ValueError(
            f"{redact_uri(url)} answered {response.status_code}: {response.text[:200]}"
        )
    return response.text


@task(name="read-live-scores", retry_condition_fn=retry_transient)
def read_metrics(service_url: str) -> str:
    return fetch_metrics(service_url)


# ---- the window since the last judged run ------------------------------------------------
def load_window_state(path: Path, service_url: str) -> tuple[LiveScores | None, str]:
    """The snapshot the last judged run stored for this service, and when it was taken."""
    try:
        state = json.loads(path.read_text())
        if state.get("service_url") != service_url:
            return None, ""
        return LiveScores.from_dict(state["live"]), str(state.get("at", "?"))
    except (OSError, ValueError, KeyError, TypeError):
        return None, ""


def save_window_state(path: Path, service_url: str, live: LiveScores, at: str) -> None:
    from models.io import atomic_write_json

    atomic_write_json(path, {"service_url": service_url, "at": at, "live": live.to_dict()})


def select_window(
    current: LiveScores, earlier: LiveScores | None, earlier_at: str
) -> tuple[LiveScores, str]:
    """The scores to judge and a phrase saying which ones they are."""
    window, subtracted = current.since(earlier)
    if subtracted:
        return window, f"served since the last judged check at {earlier_at}"
    if earlier is not None and (earlier.family, earlier.version) == (
        current.family,
        current.version,
    ):
        return current, "served since the service (re)started: its counters went back"
    return current, "served since the service started"


# ---- retraining --------------------------------------------------------------------------
@dataclass(frozen=True)
class RetrainRequest:
    """What a drift alarm asks Prefect to run; at most one per champion version a day."""

    deployment: str
    idempotency_key: str
    tags: tuple[str, ...] = ("genops", "drift")
    timeout: float = 0  # return once the run is created; never wait for the retrain


def retrain_request(report: DriftReport, champion: BundleMeta, day: str) -> RetrainRequest | None:
    """The nightly deployment, to run now, if (and only if) the report found drift."""
    if not report.drifted:
        return None
    key = f"genops-drift:{champion.name}:v{champion.version}:{day}"
    return RetrainRequest(retrain_deployment(), key)


@task(name="request-retrain", **TRANSIENT)
def request_retrain(request: RetrainRequest) -> str:
    """Create a run of the retrain deployment (not waited for); return its flow-run id."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        request.deployment,
        timeout=request.timeout,
        tags=list(request.tags),
        idempotency_key=request.idempotency_key,
    )
    return str(run.id)


# ---- the report --------------------------------------------------------------------------
@task(name="log-drift-to-mlflow", **TRANSIENT)
def log_to_mlflow(root: str, report: DriftReport, summary: dict, report_dir: str) -> str:
    from pipelines.tracking import log_run

    metrics = {k: v for k, v in report.metrics().items() if v == v}  # NaN when not judged
    return log_run(
        f"drift-{report.family}-v{report.version}",
        params={
            "service_url": summary["service_url"],
            "champion": summary["champion"],
            "window": summary["window"],
            "thresholds": asdict(report.thresholds),
        },
        tags={
            "stage": "drift",
            "drift.status": report.status,
            "family": report.family,
            "champion_version": report.version,
            "drift.retrain": summary["retrain"],
        },
        metrics=metrics,
        artifacts={"drift": Path(report_dir)},
        root=Path(root),
    )


# ---- the flow ----------------------------------------------------------------------------
load_champion = task(name="load-champion", **TRANSIENT)(champion_bundle)


@dataclass(frozen=True)
class RetrainOutcome:
    """What the run did about retraining, in words for the report, and the run it created."""

    text: str
    deployment: str | None = None
    flow_run_id: str | None = None
    failure: Exception | None = None


def retrain_if_drifted(
    report: DriftReport, champion: BundleMeta, trigger: bool, day: str
) -> RetrainOutcome:
    request = retrain_request(report, champion, day)
    if request is None:
        text = "not needed" if report.status != INSUFFICIENT else "not judged, not requested"
        return RetrainOutcome(text)
    if not trigger:
        return RetrainOutcome(f"would run {request.deployment} (trigger off)", request.deployment)
    try:
        run_id = request_retrain(request)
    except Exception as exc:  # the report still says so; the flow fails afterwards
        return RetrainOutcome(f"FAILED to request {request.deployment}: {exc}", None, None, exc)
    return RetrainOutcome(
        f"requested {request.deployment}: flow run {run_id}", request.deployment, run_id
    )


def publish(
    root: Path,
    report: DriftReport,
    champion: BundleMeta,
    service_url: str,
    window: str,
    retrain: RetrainOutcome,
    at: str,
) -> dict[str, Any]:
    """reports/drift/ files, the Prefect artifact and the MLflow run; return the summary."""
    from models.spec import redact_uri

    shown_url = redact_uri(service_url)
    name = f"{champion.name} v{champion.version}"
    context = {
        "champion": name,
        "service_url": shown_url,
        "window": window,
        "retrain": retrain.text,
    }
    summary = {
        "at": at,
        "status": report.status,
        "family": report.family,
        "version": report.version,
        **context,
        "retrain_deployment": retrain.deployment,
        "retrain_flow_run_id": retrain.flow_run_id,
        "report": report.to_dict(),
    }
    out_dir = root / REPORT_DIR
    markdown = report_markdown(report, **context, plot="drift.png")
    summary["files"] = write_report_files(out_dir, report, markdown, summary)
    create_markdown_artifact(
        key="genops-drift",
        markdown=report_markdown(report, **context),
        description=f"drift watch: {report.status}",
    )
    summary["mlflow_run_id"] = log_to_mlflow(str(root), report, summary, str(out_dir))
    return summary


@flow(name=DRIFT_FLOW, log_prints=True)
def drift_watch(
    service_url: str = DEFAULT_SERVICE_URL,
    bundle: str | None = None,
    root: str = ".",
    params_file: str = "params.yaml",
    trigger: bool = True,
    since_last_check: bool = True,
    fetch_retries: int = 3,
    fetch_retry_delay_s: float = 10.0,
) -> dict[str, Any]:
    """Live scores vs calibration -> report (files, MLflow, artifact) -> retrain if drifted.

    `bundle`: a served bundle folder for the champion (default: the registry's
    genops-anomaly@champion). `trigger=False` reports what it would run without running it.
    `since_last_check=False` judges every score since the service started. An unreachable
    service (or a 5xx) is read again `fetch_retries` times, after 1, 2, 4 x `fetch_retry_delay_s`.
    """
    root_path = Path(root).resolve()
    os.environ[ROOT_ENV] = str(root_path)
    thresholds = DriftThresholds.from_params(load_params(root_path / params_file))
    champion_dir = load_champion(bundle, root_path)
    meta, calibration = read_meta(champion_dir), Calibration.load(champion_dir)
    read = read_metrics.with_options(
        retries=fetch_retries,
        retry_delay_seconds=[fetch_retry_delay_s * 2**i for i in range(max(fetch_retries, 1))],
    )
    text = read(service_url)
    current = parse_live_scores(text, *score_metric_names(), meta.family, meta.version)
    state_file = root_path / STATE_FILE
    earlier, at = load_window_state(state_file, service_url) if since_last_check else (None, "")
    live, window = select_window(current, earlier, at)
    report = assess(live, calibration, thresholds)
    now = datetime.now(UTC)
    retrain = retrain_if_drifted(report, meta, trigger, now.date().isoformat())
    summary = publish(
        root_path, report, meta, service_url, window, retrain, now.isoformat(timespec="seconds")
    )
    if report.status != INSUFFICIENT:
        save_window_state(state_file, service_url, current, summary["at"])
    get_run_logger().info(
        "drift watch: %s (%s); retraining: %s", report.status, report.reason, retrain.text
    )
    if retrain.failure is not None:
        raise RetrainRequestFailed(retrain.text) from retrain.failure
    return summary


def deployment(
    name: str = DRIFT_DEPLOYMENT,
    cron: str = HOURLY_CRON,
    service_url: str = DEFAULT_SERVICE_URL,
    bundle: str | None = None,
    root: str = ".",
):
    """The hourly drift-watch deployment (a RunnerDeployment; `.apply()` registers it)."""
    parameters: dict[str, Any] = {"service_url": service_url, "root": str(Path(root).resolve())}
    if bundle:
        parameters["bundle"] = str(Path(bundle).resolve())
    return drift_watch.to_deployment(
        name=name,
        cron=cron,
        parameters=parameters,
        description="Hourly drift watch: served anomaly scores vs the champion's calibration",
        tags=["genops", "drift"],
    )
