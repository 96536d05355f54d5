"""Canary serving: a share of the champion's requests answered by the challenger (issue 22).

The task's canary (models.canary, from the model source like an alias) picks clients by a hash
of their key (`X-Genops-Client`, else their address), so one client sees one version; the
answer's `X-Genops-Model-Version` names the version that answered. A canary answer that fails
(an exception, non-finite scores) is answered again by the champion: the client gets the
champion's answer, the canary gets a `fallback` on its record. The service only routes and
measures; `genops canary` (pipelines/registry/canary.py) reads the figures from /metrics and
rolls back or promotes.

/metrics (labels task, version, role = canary | champion): the champion's requests (those for
the task's champion by name or by default) always, the canary's while it is live. The
champion's figures from before a canary are its baseline (`genops canary`, `baseline_s`).
    genops_canary_requests_total{..., outcome}   ok | fallback (the canary failed, the
                                                 champion answered)
    genops_canary_latency_seconds                time from routing to the model's answer
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any, TypeVar

from models.canary import CLIENT_HEADER
from serving.bundle import ServedModel
from serving.catalog import Route
from serving.errors import ModelFailed, ServingError

log = logging.getLogger("genops.serving")
T = TypeVar("T")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4,
                   0.5, 0.75, 1, 1.5, 2.5, 5, 10)  # fmt: skip


@cache
def canary_metrics() -> dict[str, Any]:
    """Prometheus metrics, created lazily (BentoML sets the multiprocess dir first)."""
    import prometheus_client as prom

    labels = ["task", "version", "role"]
    return {
        "requests": prom.Counter(
            "genops_canary_requests", "Champion requests, and canary ones while it is live",
            [*labels, "outcome"],
        ),
        "latency": prom.Histogram(
            "genops_canary_latency_seconds",
            "Routing to answer, per version: the champion always, a canary while live", labels,
            buckets=LATENCY_BUCKETS,
        ),
    }  # fmt: skip


def client_key(headers: Any, client: tuple[str, int] | None) -> str:
    """The sticky key of a request: its `X-Genops-Client` header, else the client's host."""
    name = CLIENT_HEADER.lower()  # Starlette's headers ignore case; raw ASGI ones are bytes
    key = headers.get(name.encode() if isinstance(headers, dict) else name)
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    return key or (client[0] if client else "")


async def answer(route: Route, run: Callable[[ServedModel], Awaitable[T]]) -> tuple[ServedModel, T]:
    """Run the request on `route.served`; a canary that fails is retried on the champion.

    Refusals that are not the model's doing (a full lane, a bad input, a hang-up) pass
    through unchanged. Records the canary metrics for a champion request (`route.task`)
    always, and for the canary while it is live.
    """
    canary, started = route.canary, time.perf_counter()
    try:
        result = await run(route.served)
    except Exception as exc:
        if route.fallback is None or (
            isinstance(exc, ServingError) and not isinstance(exc, ModelFailed)
        ):
            raise
        meta = route.served.meta
        log.warning("canary %s v%s failed, the champion answers: %s", meta.name, meta.version,
                    exc)  # fmt: skip
        canary_metrics()["requests"].labels(canary.task, meta.version, "canary", "fallback").inc()
        return route.fallback, await run(route.fallback)
    task = canary.task if canary is not None else route.task
    if task is not None:
        metrics, version = canary_metrics(), route.served.meta.version
        metrics["requests"].labels(task, version, route.role, "ok").inc()
        metrics["latency"].labels(task, version, route.role).observe(time.perf_counter() - started)
    return route.served, result
