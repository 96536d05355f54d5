"""Canary on a real service with two workers, judged by `genops canary`'s controller
(pipelines/registry/canary.py) against a real SQLite registry.

Registered anomaly versions: v1 the champion (the tiny conditional autoencoder), v2 a good
challenger (the unconditional one, trained on the same digits), v3 a failing one (the same
network with NaN weights: every score non-finite) and v4 a slow one (a tiny diffusion model
whose score runs 24 network evaluations per image). Clients with their own keys send
/score/image traffic throughout; not one request may fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from models.canary import CLIENT_HEADER
from models.io import build_model
from models.spec import ALIAS, ANOMALY, GENERATION, TASKS
from serving.bundle import write_bundle
from serving.responses import VERSION_HEADER, WORKER_HEADER
from tests.serving.conftest import ADMIN_TOKEN, CALIB, Server, register_bundle, write_role

ANOMALY_MODEL = TASKS[ANOMALY].registered_model
CLIENTS = 6
SHARE = 0.5
SLOW = {"base_channels": 8, "channel_mults": [1, 2], "attention": False, "timesteps": 100,
        "score_timesteps": [50, 60, 70], "score_draws": 2, "score_steps": 4,
        "conditional": False, "bf16_autocast": False}  # fmt: skip


@dataclass
class Registry:
    uri: str
    root: Path


def _broken(root: Path, model, calib: torch.Tensor) -> Path:
    """The autoencoder with NaN weights: it loads and verifies, then scores NaN."""
    with torch.no_grad():
        scores = model.anomaly_score(calib).numpy()
        broken = build_model("autoencoder", model.config.to_dict())
        broken.load_state_dict(model.state_dict())
        for p in broken.parameters():
            p.fill_(float("nan"))
    from models.calibration import Calibration

    meta = {"name": ANOMALY_MODEL, "version": "3", "tasks": [ANOMALY],
            "data_version": "md5:test", "metrics": {}}  # fmt: skip
    write_bundle(root / "broken", broken.eval(), Calibration.fit(scores, 0.05), meta)
    return root / "broken"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, source_dir, tiny_models, real_digits) -> Registry:
    from models.spec import mlflow_client

    images, _ = real_digits
    root = tmp_path_factory.mktemp("canary-mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("genops", artifact_location=(root / "art").as_uri())
    torch.manual_seed(0)
    slow = build_model("diffusion", SLOW).eval()
    write_role(root, "slow", slow, images[CALIB][:64], ANOMALY_MODEL, "4", [ANOMALY])
    bundles = [source_dir / ANOMALY, source_dir / "families" / "autoencoder",
               _broken(root, tiny_models[1], images[CALIB]), root / "slow"]  # fmt: skip
    versions = [register_bundle(client, experiment, ANOMALY_MODEL, b) for b in bundles]
    assert versions == ["1", "2", "3", "4"]
    generation = TASKS[GENERATION].registered_model
    register_bundle(client, experiment, generation, source_dir / GENERATION)
    client.set_registered_model_alias(ANOMALY_MODEL, ALIAS, "1")
    client.set_registered_model_alias(generation, ALIAS, "1")
    return Registry(uri, root)


@pytest.fixture(scope="module")
def service(tmp_path_factory, registry):
    env = {"MLFLOW_TRACKING_URI": registry.uri, "GENOPS_WORKERS": "2",
           "GENOPS_ADMIN_TOKEN": ADMIN_TOKEN, "GENOPS_RELOAD_INTERVAL_S": "2",
           "GENOPS_SHADOW_SHARE": "1"}  # fmt: skip
    with Server("mlflow", tmp_path_factory.mktemp("canary-serve"), env) as srv:
        yield srv


@pytest.fixture()
def controller_env(registry, monkeypatch):
    """The controller in this process writes to the test registry."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.uri)
    monkeypatch.setenv("GENOPS_ROOT", str(registry.root))
    monkeypatch.setenv("GENOPS_ADMIN_TOKEN", ADMIN_TOKEN)


class Traffic:
    """CLIENTS threads, each a client with its own key, posting one digit at a time."""

    def __init__(self, url: str, digits: np.ndarray) -> None:
        self.url, self.digits = url, digits
        self.calls: dict[str, list[tuple[float, int, str, str]]] = defaultdict(list)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(f"client-{i}",), daemon=True)
                        for i in range(CLIENTS)]  # fmt: skip

    def _run(self, key: str) -> None:
        headers = {CLIENT_HEADER: key, "Content-Type": "application/octet-stream"}
        with httpx.Client(base_url=self.url, timeout=30, headers=headers) as client:
            i = 0
            while not self.stop.is_set():
                body = self.digits[i % len(self.digits)].tobytes()
                try:
                    r = client.post("/score/image", content=body)
                    self.calls[key].append((time.monotonic(), r.status_code,
                                            r.headers.get(VERSION_HEADER, ""),
                                            r.headers.get(WORKER_HEADER, "")))  # fmt: skip
                except httpx.HTTPError as exc:
                    self.calls[key].append((time.monotonic(), 0, repr(exc), ""))
                i += 1

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def failed(self) -> list:
        return [c for calls in self.calls.values() for c in calls if c[1] != 200]

    def total(self) -> int:
        return sum(len(v) for v in self.calls.values())

    def versions(self, start: float, end: float) -> dict[str, set[str]]:
        return {k: {v for t, _, v, _ in calls if start <= t <= end}
                for k, calls in self.calls.items()}  # fmt: skip

    def canary_on(self, version: str, start: float, end: float) -> dict[str, float]:
        """When each worker first answered with `version` in [start, end]: from then on it
        holds the canary (the worker that ran /admin/reload at once, the other when it read
        the reload notice or polled the registry, later on a loaded machine)."""
        first: dict[str, float] = {}
        for calls in self.calls.values():
            for t, _, v, worker in calls:
                if v == version and start <= t <= end and t < first.get(worker, end + 1):
                    first[worker] = t
        return first

    def sticky(self, version: str, start: float, end: float) -> dict[tuple[str, str], set[str]]:
        """Per (client, worker): the versions it was answered with while that worker held the
        canary of `version` within [start, end]."""
        on = self.canary_on(version, start, end)
        seen: dict[tuple[str, str], set[str]] = defaultdict(set)
        for key, calls in self.calls.items():
            for t, _, v, worker in calls:
                if worker in on and on[worker] <= t <= end:
                    seen[(key, worker)].add(v)
        return dict(seen)


BASELINE_S = 2.0  # each canary starts this long after `genops canary` does


def _budget(**changes):
    from pipelines.registry.canary import CanaryBudget

    base = CanaryBudget(
        share=SHARE,
        window_s=4.0,
        min_requests=30,
        judge_after=10,
        max_error_rate=0.05,
        max_p99_ms=120.0,
        poll_s=0.5,
        timeout_s=60.0,
        baseline_s=BASELINE_S,  # the champion's median before each canary
    )
    return replace(base, **changes)  # fmt: skip


def _canary(version: str, budget, traffic: Traffic, polls: list[float] | None = None):
    """`genops challenge` then `genops canary`, timed; returns (outcome, start, end). `polls`
    collects when each of the canary's polls ran: the last is before its end is written."""
    from pipelines.registry.canary import Service, run_canary
    from pipelines.registry.client import set_challenger

    set_challenger(ANOMALY, version, "test")
    started = time.monotonic()
    stamp = None if polls is None else lambda _: polls.append(time.monotonic())
    outcome = run_canary(ANOMALY, budget, Service.from_env(service_url(traffic)), progress=stamp)
    print(f"canary v{version}: {outcome.event} after {outcome.seconds:.1f} s ({outcome.reason}); "
          f"{json.dumps(outcome.figures)}")  # fmt: skip
    return outcome, started, time.monotonic()


def service_url(traffic: Traffic) -> str:
    return traffic.url


def _wait_for_shadow(url: str, version: str, n: int, timeout_s: float = 60.0) -> None:
    """Until the service has shadowed `n` requests on challenger `version` (the duty cycle and
    a busy lane drop most of them, the more so on a loaded machine)."""
    from pipelines.monitoring.live import read_metrics, shadow_figures

    deadline = time.monotonic() + timeout_s
    while shadow_figures(read_metrics(url), ANOMALY, version)["shadow_requests"] < n:
        assert time.monotonic() < deadline, f"fewer than {n} shadow requests on v{version}"
        time.sleep(0.25)


def _champions(url: str) -> dict:
    """`genops champions --url` as JSON."""
    from click.testing import CliRunner

    from pipelines.cli.registry import champions_cmd

    result = CliRunner().invoke(champions_cmd, ["--url", url])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _every_worker(url: str) -> dict[str, dict]:
    """/metadata from each of the two workers (fresh connections until both answered)."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        with httpx.Client(base_url=url, headers={"Connection": "close"}) as c:
            r = c.get("/metadata")
        seen[r.headers.get(WORKER_HEADER) or str(r.json()["worker"]["pid"])] = r.json()
    assert len(seen) == 2, seen.keys()
    return seen


def test_bad_challengers_are_rolled_back_and_a_good_one_is_promoted(
    service, registry, controller_env, real_digits
):
    from pipelines.registry import client as registry_client
    from pipelines.registry.canary import PROMOTED, REFUSED, ROLLED_BACK

    digits = np.round(real_digits[0][4500:4564].reshape(-1, 784).numpy() * 255).astype(np.uint8)
    task = TASKS[ANOMALY]
    with Traffic(service.url, digits) as traffic:
        time.sleep(1.0)
        # a failing challenger, with shadow evidence required first: refused, nothing served
        from pipelines.registry.client import set_challenger

        set_challenger(ANOMALY, "3", "test")
        _wait_for_shadow(service.url, "3", 3)  # the poll (2 s) picks the challenger up
        refused, _, _ = _canary("3", _budget(shadow_min_requests=3), traffic)
        assert refused.event == REFUSED and "shadow errors" in refused.reason, refused
        # the same without the shadow requirement: the canary starts, fails, is rolled back
        failing, f0, f1 = _canary("3", _budget(), traffic)
        assert failing.event == ROLLED_BACK and "error rate" in failing.reason, failing
        assert failing.figures["canary_errors"] >= 10
        assert registry_client.challenger(task) is None and registry_client.canary(task) is None
        # a slow challenger: rolled back on its median. Its p50 is ~50-105 ms here; the p99
        # budget is out of reach (1 s), so only the p50 rule can see it. During the canary the
        # champion, queued behind v4 on the shared workers, can be as slow as v4 (a CI run
        # promoted v4 that way: p50 47 ms against the champion's 57 ms); its median from
        # before the canary (~1-2 ms, `baseline_s`) is not
        slow, _s0, _s1 = _canary("4", _budget(max_p99_ms=1000.0), traffic)
        assert slow.event == ROLLED_BACK and "p50" in slow.reason, slow
        assert slow.figures["canary_errors"] == 0
        # a good one, shadowed first: promoted when the window passes within budget
        set_challenger(ANOMALY, "2", "test")
        _wait_for_shadow(service.url, "2", 5)
        shown = _champions(service.url)["anomaly"]
        assert shown["challenger"]["version"] == "2" and shown["canary"] is None
        assert shown["challenger"]["live"]["shadow_requests"] > 0
        polls: list[float] = []
        good, g0, _g1 = _canary("2", _budget(shadow_min_requests=5), traffic, polls)
        assert good.event == PROMOTED, good
        assert good.figures["shadow_requests"] >= 5 and good.figures["shadow_errors"] == 0
        assert good.figures["canary_requests"] >= 30 and good.figures["canary_errors"] == 0
        time.sleep(1.5)
    assert traffic.failed() == [], traffic.failed()[:5]
    print(f"client requests: {traffic.total()}, failed: {len(traffic.failed())}")
    assert str(registry_client.champion(task).version) == "2"
    assert registry_client.challenger(task) is None and registry_client.canary(task) is None
    # sticky: while a worker held the good canary (from its first v2 answer to the canary's last
    # poll, before the promotion was written) it answered each client with one version, and
    # both versions were seen. The window is read from the answers, not from the test's clock:
    # on a loaded machine the second worker takes the canary seconds after the first, and the
    # promotion reaches a worker's registry poll before /admin/reload returns.
    assert traffic.canary_on("2", g0, polls[-1]), "no worker answered with the canary"
    during = traffic.sticky("2", g0, polls[-1])
    assert all(len(v) == 1 for v in during.values()), during
    assert set().union(*during.values()) == {"1", "2"}, during
    # the failing canary's clients were answered by the champion, never by v3
    assert "3" not in set().union(*traffic.versions(f0, f1).values())
    # every worker now serves v2 as the champion, with no challenger and no canary
    for pid, meta in _every_worker(service.url).items():
        assert meta["models"]["anomaly"]["version"] == "2", pid
        assert "challengers/anomaly" not in meta["models"], pid
    events = [e for e in registry_client.history() if e["event"].startswith("canary")]
    assert [(e["event"], e["version"]) for e in events] == [
        ("canary refused", "3"), ("canary started", "3"), ("canary rolled back", "3"),
        ("canary started", "4"), ("canary rolled back", "4"), ("canary started", "2"),
        ("canary promoted", "2"),
    ]  # fmt: skip
    from pipelines.registry.reports import history_markdown

    table = history_markdown(registry_client.history())
    assert "| canary rolled back | v4 |" in table and "p99" in table and "shadow errors" in table
    tags = registry_client._client().get_model_version(ANOMALY_MODEL, "2").tags
    assert float(tags["live.canary_requests"]) >= 30 and tags["live.canary_errors"] == "0"
