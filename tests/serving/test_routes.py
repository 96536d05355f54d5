"""Every POST route of the real service is admitted through a lane or declared lane-free.

The routes are read from the ASGI app that `bentoml serve` runs (and cross-checked with its
OpenAPI document), never from a list kept here: a new POST route that is missing from
`LANE_OF_ROUTE` (or, with its reason, from `UNLANED_ROUTES`) fails this test instead of
silently bypassing admission control.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():  # starlette's notice about httpx2, at import time
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.admission import LANE_OF_ROUTE, UNLANED_ROUTES, Admission, Lane
from serving.fastpath import ROUTE as FAST_PATH_ROUTE

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture(scope="module")
def app() -> Any:
    """The service's ASGI app, as `bentoml serve` builds it; no lifespan, so no models load."""
    from tests.serving.test_asgi import _second_app

    return _second_app()


def write_routes(routes: list[Any], prefix: str = "") -> set[str]:
    """Paths of every route taking a body, mounted sub-apps included."""
    found: set[str] = set()
    for route in routes:
        path = prefix + getattr(route, "path", "")
        if WRITE_METHODS & set(getattr(route, "methods", None) or ()):
            found.add(path)
        found |= write_routes(getattr(route, "routes", None) or [], path)
    return found


def test_the_app_has_the_routes_the_openapi_document_lists(app):
    """The enumeration sees what clients see: the same POST routes as /docs.json."""
    routes = write_routes(app.routes)
    spec = TestClient(app).get("/docs.json").json()["paths"]
    documented = {path for path, ops in spec.items() if WRITE_METHODS & {m.upper() for m in ops}}
    assert routes == documented
    assert FAST_PATH_ROUTE in routes  # the raw fast path is declared as an API too


def test_every_post_route_has_an_admission_lane_or_a_reason_not_to(app):
    routes = write_routes(app.routes)
    assert not set(LANE_OF_ROUTE) & set(UNLANED_ROUTES), "a route is in both tables"
    missing = routes - set(LANE_OF_ROUTE) - set(UNLANED_ROUTES)
    assert not missing, f"POST routes without an admission lane: {sorted(missing)}"
    stale = (set(LANE_OF_ROUTE) | set(UNLANED_ROUTES)) - routes
    assert not stale, f"admission tables name routes the service lacks: {sorted(stale)}"
    assert all(reason.strip() for reason in UNLANED_ROUTES.values())


def test_a_full_lane_refuses_every_route_of_that_lane(app):
    """Through the real middleware: each laned route is shed (503 + Retry-After) when its lane
    is full, and the lane-free routes pass through."""
    names = set(LANE_OF_ROUTE.values())
    lanes = {name: Lane(name, capacity=1, max_queue_s=1.0, torch_threads=1) for name in names}
    for lane in lanes.values():
        assert lane.admit()  # the one place is taken
    passed: list[str] = []

    async def inner(scope, receive, send):
        passed.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = Admission(inner, lanes=lambda: lanes)

    async def post(path: str) -> tuple[int, dict[bytes, bytes]]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "headers": []}
        await middleware(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    try:
        for path in sorted(write_routes(app.routes)):
            status, headers = asyncio.run(post(path))
            if path in UNLANED_ROUTES:
                assert status == 204 and path in passed, path
            else:
                assert status == 503 and b"retry-after" in headers, path
                assert path not in passed
    finally:
        for lane in lanes.values():
            lane.shutdown()
