"""Several serving workers (GENOPS_WORKERS=2): a real `bentoml serve`, both workers answer alike."""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.responses import VERSION_HEADER, WORKER_HEADER
from tests.serving.conftest import ADMIN_TOKEN, Server, private_copy

HELD_OUT = slice(4500, 4508)
WORKERS = 2


def _fresh(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on a new connection, so that any worker may accept it."""
    with httpx.Client(base_url=url, timeout=60, headers={"Connection": "close"}) as client:
        return client.request(method, path, **kwargs)


def _until_every_worker_answered(url: str, method: str, path: str, **kwargs) -> dict:
    """{worker pid: [responses]} from concurrent fresh connections, until WORKERS pids answered.

    The kernel hands a new connection to whichever worker accepts first; an idle worker that
    keeps winning is kept busy by the concurrent requests, so the other one gets some too.
    """
    seen: dict[str, list[httpx.Response]] = {}
    deadline = time.monotonic() + 90
    with ThreadPoolExecutor(8) as pool:
        while len(seen) < WORKERS or min(len(v) for v in seen.values()) < 2:
            assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
            for response in pool.map(lambda _: _fresh(url, method, path, **kwargs), range(16)):
                assert response.status_code == 200, response.text
                pid = response.headers.get(WORKER_HEADER) or str(response.json()["worker"]["pid"])
                seen.setdefault(pid, []).append(response)
    return seen


@pytest.fixture(scope="module")
def workers_dir(tmp_path_factory, source_dir) -> Path:
    return private_copy(tmp_path_factory, source_dir, "workers-models")  # the reload test edits it


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, workers_dir):
    env = {"GENOPS_WORKERS": str(WORKERS), "GENOPS_ADMIN_TOKEN": ADMIN_TOKEN}
    with Server(f"dir:{workers_dir}", tmp_path_factory.mktemp("workers"), env) as srv:
        yield srv


def test_every_worker_is_ready_with_the_same_verified_models(two_workers):
    assert two_workers.client.get("/readyz").status_code == 200
    by_worker = _until_every_worker_answered(two_workers.url, "GET", "/metadata")
    described = {pid: responses[0].json() for pid, responses in by_worker.items()}
    assert len(described) == WORKERS
    for pid, meta in described.items():
        assert meta["ready"], f"worker {pid} answered before its models were ready"
        assert meta["worker"]["pid"] == int(pid) and meta["worker"]["workers"] == WORKERS
        assert meta["lanes"]["scoring"]["capacity"] == 16  # each worker has its own lanes
    first, *others = described.values()
    assert {m["worker"]["index"] for m in described.values()} == set(range(1, WORKERS + 1))
    for meta in others:
        assert meta["fingerprint"] == first["fingerprint"]
        assert meta["versions"] == first["versions"]
        sha = {role: m["weights_sha256"] for role, m in meta["models"].items()}
        assert sha == {role: m["weights_sha256"] for role, m in first["models"].items()}


def test_scores_and_samples_are_identical_across_workers(two_workers, real_digits):
    images = real_digits[0][HELD_OUT].reshape(-1, 784).numpy()
    pixels = np.round(images * 255).astype(np.uint8).tobytes()
    scored = _until_every_worker_answered(
        two_workers.url,
        "POST",
        "/score/image",
        content=pixels,
        headers={"Content-Type": "application/octet-stream"},
    )
    scores = {
        pid: np.array([[r["raw_score"] for r in resp.json()["results"]] for resp in responses])
        for pid, responses in scored.items()
    }
    reference = next(iter(scores.values()))[0]
    for pid, runs in scores.items():
        # batching may put a request beside others; a batch scores as one by one (1e-6)
        np.testing.assert_allclose(runs, np.broadcast_to(reference, runs.shape), rtol=1e-6)
        assert all(r.headers[VERSION_HEADER] == "2" for r in scored[pid])
    generated = _until_every_worker_answered(
        two_workers.url, "POST", "/generate", json={"n": 4, "seed": 7, "format": "pngs"}
    )
    images_seen = {tuple(r.json()["pngs"]) for responses in generated.values() for r in responses}
    assert len(images_seen) == 1, "same seed, different images across workers"


def test_one_admin_reload_moves_every_worker(two_workers, workers_dir, real_digits):
    """Last in the module: it changes the served version and adds an anomaly challenger. The
    answering worker reloads, the other follows its notice; no poller runs
    (GENOPS_RELOAD_INTERVAL_S is 0). Then every worker serves the challenger by name."""
    meta_path = workers_dir / "families" / "autoencoder" / "meta.json"
    meta_path.write_text(json.dumps(json.loads(meta_path.read_text()) | {"version": "9"}))
    challenger = workers_dir / "challengers" / "anomaly"
    shutil.copytree(workers_dir / "anomaly", challenger)
    meta = json.loads((challenger / "meta.json").read_text())
    (challenger / "meta.json").write_text(json.dumps(meta | {"version": "5"}))
    headers = {"X-Admin-Token": ADMIN_TOKEN, "Connection": "close"}
    answered = _fresh(two_workers.url, "POST", "/admin/reload", json={}, headers=headers)
    assert answered.status_code == 200 and answered.json()["swapped"], answered.text
    started, latest = time.monotonic(), {}
    while time.monotonic() - started < 10:  # the other worker checks for notices every 0.25 s
        by_worker = _until_every_worker_answered(two_workers.url, "GET", "/metadata")
        latest = {pid: responses[-1].json() for pid, responses in by_worker.items()}
        versions = {
            (m["models"]["families/autoencoder"]["version"],
             m["models"].get("challengers/anomaly", {}).get("version"))
            for m in latest.values()
        }  # fmt: skip
        if versions == {("9", "5")}:
            break
        time.sleep(0.2)
    print(f"admin reload -> every worker on the new version: {time.monotonic() - started:.2f} s")
    assert len(latest) == WORKERS
    for pid, meta in latest.items():
        assert meta["reload_interval_s"] == 0
        assert meta["models"]["families/autoencoder"]["version"] == "9", pid
        assert meta["models"]["challengers/anomaly"]["version"] == "5", pid
        assert meta["models"]["challengers/anomaly"]["tasks"] == ["anomaly"]
        trigger = meta["last_reload"]["trigger"]
        assert trigger == ("admin" if pid == answered.headers[WORKER_HEADER] else "notice")
    digits = np.round(real_digits[0][HELD_OUT].reshape(-1, 784).numpy() * 255).astype(np.uint8)
    by_worker = _until_every_worker_answered(
        two_workers.url, "POST", "/score", json={"images": digits.tolist(), "model": "challenger"}
    )
    for pid, responses in by_worker.items():
        assert {r.headers[VERSION_HEADER] for r in responses} == {"5"}, pid
        assert {r.json()["model"]["version"] for r in responses} == {"5"}, pid
    champion = _fresh(two_workers.url, "POST", "/score", json={"images": digits.tolist()})
    assert champion.headers[VERSION_HEADER] == "2"
    none = _fresh(two_workers.url, "POST", "/generate", json={"n": 1, "model": "challenger"})
    assert none.status_code == 404 and "no challenger" in none.json()["error"], none.text
