"""Secure defaults, bounded work and isolation, in process (no server start): admin token,
redaction, private cache, cost budget, lanes, shedding with Retry-After, cancellation, and the
one-image fast path."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

with warnings.catch_warnings():  # starlette's notice about httpx2, at import time
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from models.spec import redact_text, redact_uri
from serving.admission import Admission, Cancelled, Lane, RequestScope, Shed
from serving.model_cache import private_cache_root, tree_problem
from tests.serving.test_asgi import _second_app

DIGIT = slice(4500, 4501)


@pytest.fixture()
def app_env(source_dir, monkeypatch):
    monkeypatch.setenv("GENOPS_MODEL_SOURCE", f"dir:{source_dir}")
    monkeypatch.setenv("GENOPS_TORCH_THREADS", "1")
    return monkeypatch


def _uint8(real_digits) -> np.ndarray:
    return np.round(real_digits[0][DIGIT].numpy()[0, 0] * 255).astype(np.uint8)


# ---- secure defaults ---------------------------------------------------------------------------
def test_admin_reload_is_refused_with_a_reason_when_no_token_is_configured(app_env):
    app_env.delenv("GENOPS_ADMIN_TOKEN", raising=False)
    with TestClient(_second_app()) as client:
        refused = client.post("/admin/reload", json={"force": True}, headers={"X-Admin-Token": "x"})
        assert refused.status_code == 403 and "GENOPS_ADMIN_TOKEN" in refused.json()["error"]
        assert client.get("/metadata").json()["admin_reload"].startswith("disabled")


def test_admin_token_can_also_come_as_a_bearer_token(app_env):
    app_env.setenv("GENOPS_ADMIN_TOKEN", "a-long-enough-token")
    with TestClient(_second_app()) as client:
        missing = client.post("/admin/reload", json={})
        assert missing.status_code == 403 and "missing admin token" in missing.json()["error"]
        bearer = {"Authorization": "Bearer a-long-enough-token"}
        assert client.post("/admin/reload", json={}, headers=bearer).status_code == 200


def test_uris_are_redacted_wherever_they_appear():
    secret = "https://alice:s3cret@mlflow.example/api?token=t0k#frag"
    assert redact_uri(secret) == "https://mlflow.example/api"
    assert redact_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    text = f"mlflow:{secret} failed; s3://key:pw@bucket/x?sig=1 too"
    assert redact_text(text) == "mlflow:https://mlflow.example/api failed; s3://bucket/x too"


def test_bento_model_labels_and_metadata_carry_no_credentials(source_dir, monkeypatch):
    import importlib

    from serving import build

    models = importlib.import_module("bentoml.models")  # the real module, not the lazy proxy

    seen = {}

    class Stored:
        path = str(source_dir.parent / "stored")
        tag = "genops-models:test"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def create(name, labels, metadata):
        seen.update(labels=labels, metadata=metadata)
        return Stored()

    monkeypatch.setattr(models, "create", create)
    import bentoml

    assert bentoml.models.create is create  # never write to the real model store
    build._store_snapshot(source_dir, "genops-models", "mlflow:https://bob:pw@host/db?key=k")
    shown = repr(seen)
    assert "pw" not in shown and "key=k" not in shown and "host" in shown


def test_a_cache_root_someone_else_can_write_is_never_used(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    chosen = private_cache_root(shared)
    assert chosen != shared and chosen.is_dir() and (chosen.stat().st_mode & 0o077) == 0
    ours = private_cache_root(tmp_path / "ours")
    assert ours == tmp_path / "ours"
    loose = ours / "ns" / "name"
    loose.mkdir(parents=True)
    os.chmod(ours / "ns", 0o777)
    assert "writable by others" in tree_problem(ours, loose / "1")


# ---- lanes: bounded, shed early, cancelled work never starts ---------------------------------
def test_lane_sheds_beyond_its_queue_and_skips_abandoned_work():
    async def scenario():
        lane = Lane("test", capacity=2, max_queue_s=1.0, torch_threads=1)
        assert lane.admit() and lane.admit() and not lane.admit() and lane.shed == 1
        lane.release()
        gate = threading.Event()
        first = asyncio.ensure_future(lane.run(0.8, gate.wait, 5))
        await asyncio.sleep(0.05)
        with pytest.raises(Shed) as shed:
            await lane.run(0.5, lambda: None)  # 0.8 + 0.5 s queued > 1 s per thread
        assert shed.value.retry_after_s >= 1 and "queue" in str(shed.value)
        ran = []
        from serving.admission import CURRENT

        scope = RequestScope("test")
        token = CURRENT.set(scope)
        second = asyncio.ensure_future(lane.run(0.1, ran.append, 1))
        CURRENT.reset(token)
        await asyncio.sleep(0.05)
        scope.cancelled.set()  # the client leaves while its work is still queued
        gate.set()
        await first
        with pytest.raises(Cancelled):
            await second
        assert ran == [] and lane.backlog_s == 0
        lane.shutdown()

    asyncio.run(scenario())


def test_the_middleware_answers_503_with_retry_after_at_once_when_a_lane_is_full():
    lane = Lane("generation", capacity=1, max_queue_s=10, torch_threads=1)
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = Admission(slow_app, lanes=lambda: {"generation": lane})

    async def call() -> tuple[int, dict, float]:
        sent, started = [], time.perf_counter()
        messages = iter([{"type": "http.request", "body": b"{}", "more_body": False}])

        async def receive():
            try:
                return next(messages)
            except StopIteration:
                await asyncio.sleep(3600)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/generate", "headers": []}
        await app(scope, receive, send)
        headers = dict(sent[0].get("headers", []))
        return sent[0]["status"], headers, time.perf_counter() - started

    async def scenario():
        first = asyncio.ensure_future(call())
        await asyncio.sleep(0.05)
        status, headers, took = await call()
        assert status == 503 and b"retry-after" in headers and took < 0.1
        release.set()
        assert (await first)[0] == 200
        assert lane.in_flight == 0

    asyncio.run(scenario())
    lane.shutdown()


def test_a_client_that_disconnects_has_its_work_cancelled():
    lane = Lane("generation", capacity=4, max_queue_s=10, torch_threads=1)
    events = {"cancelled": False}

    async def app(scope, receive, send):
        await receive()
        try:
            await asyncio.sleep(3600)  # long work
        except asyncio.CancelledError:
            events["cancelled"] = True
            raise

    middleware = Admission(app, lanes=lambda: {"generation": lane})

    async def scenario():
        inbox = [
            {"type": "http.request", "body": b"{}", "more_body": False},
            {"type": "http.disconnect"},
        ]

        async def receive():
            message = inbox.pop(0)
            if message["type"] == "http.disconnect":
                await asyncio.sleep(0.05)  # the client hangs up a moment later
            return message

        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/generate", "headers": []}
        await asyncio.wait_for(middleware(scope, receive, send), 5)
        assert events["cancelled"] and sent[0]["status"] == 499 and lane.in_flight == 0

    asyncio.run(scenario())
    lane.shutdown()


# ---- the service: budget, isolation, fast path -------------------------------------------------
def test_generation_beyond_the_cost_budget_is_a_400_naming_the_limit(app_env):
    app_env.setenv("GENOPS_MAX_GENERATE_COST", "8")
    with TestClient(_second_app()) as client:
        refused = client.post("/generate", json={"n": 16})
        assert refused.status_code == 400
        assert "budget of 8" in refused.text and "GENOPS_MAX_GENERATE_COST" in refused.text
        assert client.post("/generate", json={"n": 8}).status_code == 200
        assert client.get("/metadata").json()["limits"]["max_generate_cost"] == 8


def test_heavy_generation_does_not_block_scoring(app_env, real_digits):
    import bentoml

    with TestClient(_second_app()) as client:
        service = bentoml.get_current_service()
        served = service.catalog.roles["generation"]
        assert service.lanes["generation"].executor is not service.lanes["scoring"].executor
        busy, release = threading.Event(), threading.Event()
        real_sample = served.sample

        def blocking_sample(*args):
            busy.set()
            release.wait(30)
            return real_sample(*args)

        served.sample = blocking_sample
        try:
            with ThreadPoolExecutor(1) as pool:
                generating = pool.submit(client.post, "/generate", json={"n": 4})
                assert busy.wait(10)  # the generation thread is taken
                pixels = base64.b64encode(_uint8(real_digits).tobytes()).decode()
                scored = client.post("/score", json={"pixels": pixels})
                assert scored.status_code == 200 and not generating.done()
                release.set()
                assert generating.result(30).status_code == 200
        finally:
            release.set()
            served.sample = real_sample


def test_score_image_fast_path_matches_score(app_env, real_digits):
    digit = _uint8(real_digits)
    png = io.BytesIO()
    Image.fromarray(digit).save(png, format="PNG")
    with TestClient(_second_app()) as client:
        reference = client.post("/score", json={"images": [digit.reshape(-1).tolist()]})
        raw = client.post(
            "/score/image",
            content=digit.tobytes(),
            headers={"content-type": "application/octet-stream"},
        )
        as_png = client.post(
            "/score/image", content=png.getvalue(), headers={"content-type": "image/png"}
        )
        pixels = client.post("/score", json={"pixels": base64.b64encode(digit.tobytes()).decode()})
        for response in (reference, raw, as_png, pixels):
            assert response.status_code == 200, response.text
        want = reference.json()["results"][0]["raw_score"]
        for response in (raw, as_png, pixels):
            assert response.json()["results"][0]["raw_score"] == pytest.approx(want, abs=1e-6)
        assert raw.headers["x-genops-model"] == "genops-anomaly"
        family = client.post("/score/image?model=autoencoder", content=digit.tobytes())
        assert family.json()["model"]["name"] == "genops-autoencoder"
        bad = client.post("/score/image", content=b"xyz", headers={"content-type": "text/plain"})
        assert bad.status_code == 415 and "content type" in bad.text
        short = client.post("/score/image", content=b"xyz")
        assert short.status_code == 400 and "784" in short.text
        spec = client.get("/docs.json").json()["paths"]["/score/image"]["post"]
        assert "image/png" in spec["requestBody"]["content"]
        assert "octet-stream" in spec["description"]


# ---- BentoML's request timer: released once the request is answered ----------------------------
def test_request_timeout_timer_is_released_once_answered():
    """An answered request leaves no armed 60 s timer behind; a slow one still gets its 504."""
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from serving.http import release_request_timers

    release_request_timers()
    release_request_timers()  # idempotent
    delay = {"s": 0.0}

    async def app(scope, receive, send):
        await asyncio.sleep(delay["s"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(middleware) -> list[int]:
        statuses: list[int] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await middleware({"type": "http", "path": "/score"}, receive, send)
        return statuses

    async def scenario() -> tuple[int, list[int]]:
        loop = asyncio.get_running_loop()
        middleware = TimeoutMiddleware(app, timeout=60)
        for _ in range(200):
            assert await call(middleware) == [200]
        armed = sum(1 for handle in loop._scheduled if not handle.cancelled())
        delay["s"] = 1.0
        return armed, await call(TimeoutMiddleware(app, timeout=0.05))

    armed, slow = asyncio.run(scenario())
    assert armed == 0, f"{armed} timers of answered requests still armed"
    assert slow == [504]
