"""Admission control and isolation: a bounded lane per task, early shedding, cancellation.

Two lanes, each with its own model threads, its own bound on requests in flight and its own
estimate of queued work:

    generation   /generate                               heavy, variable (n x sampling steps)
    scoring      /score, /score/image, /reconstruct      light, latency-sensitive

Heavy generation therefore never occupies a thread that scores (and runs at a lower CPU
priority, GENOPS_GENERATE_NICE), so it cannot starve /score.

A request is admitted twice:
1. `Admission` (ASGI middleware, before the body is parsed): at most `capacity` requests of a
   lane in flight; beyond that a `503` with `Retry-After` at once, costing no parsing.
2. `Lane.run` (after validation, before the model): the lane's queued work, in seconds
   estimated from each network's measured speed, may not exceed `max_queue_s` per thread;
   otherwise a `503` with `Retry-After`. A request that would wait longer than that is shed
   now instead of timing out later.

Cancellation: the middleware watches the connection; when the client goes away (or BentoML's
timeout cancels the request) the request's `cancelled` event is set and its task cancelled.
Work still queued for a model thread never starts; generation checks the event between chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from serving.errors import Abandoned, Overloaded
from serving.http import Message, Receive, Scope, Send, send_error

log = logging.getLogger("genops.serving")

GENERATION_LANE, SCORING_LANE = "generation", "scoring"
LANE_OF_ROUTE = {
    "/generate": GENERATION_LANE,
    "/score": SCORING_LANE,
    "/score/image": SCORING_LANE,
    "/reconstruct": SCORING_LANE,
}
# POST routes admitted without a lane, each with the reason: none runs a model. Every POST
# route of the service is in exactly one of the two tables (tests/serving/test_routes.py).
UNLANED_ROUTES = {
    "/metadata": "reads the served state; no model work",
    "/admin/reload": "the operator's way out of a bad model set; must work when lanes are full",
}


class Shed(Overloaded):
    """The lane is full: answer 503 with Retry-After (seconds)."""


class Cancelled(Abandoned):
    """The request was abandoned (client gone or timed out) before or while its work ran."""


@dataclass
class RequestScope:
    """Per-request state shared between the event loop and the model thread."""

    lane: str
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("request abandoned")


CURRENT: ContextVar[RequestScope | None] = ContextVar("genops_request", default=None)


def current_stop() -> Callable[[], bool]:
    """A cheap `should_stop()` for model code: true once the current request is abandoned."""
    scope = CURRENT.get()
    return scope.cancelled.is_set if scope is not None else (lambda: False)


class CostEstimate:
    """Seconds per unit of work (an image, or an image x sampling step) of one network (EWMA)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, kind: str) -> float:
        return self._seconds.get(kind, 0.0)

    def observe(self, kind: str, units: float, seconds: float, weight: float = 0.2) -> None:
        if units <= 0 or seconds < 0:
            return
        per_unit = seconds / units
        with self._lock:
            old = self._seconds.get(kind)
            new = per_unit if old is None else (1 - weight) * old + weight * per_unit
            self._seconds[kind] = new


def _thread_setup(torch_threads: int, nice: int) -> None:
    import torch

    torch.set_num_threads(torch_threads)
    if nice and hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):  # lowering our own priority is always allowed
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class Lane:
    """Model threads, a bound on requests in flight and on queued seconds, for one task."""

    def __init__(
        self,
        name: str,
        capacity: int,
        max_queue_s: float,
        workers: int = 1,
        torch_threads: int = 0,
        nice: int = 0,
    ) -> None:
        import torch

        if capacity < 1 or workers < 1:
            raise ValueError(f"lane {name}: capacity and workers must be >= 1")
        self.name, self.capacity, self.workers = name, capacity, workers
        self.max_queue_s = max_queue_s
        self.executor = ThreadPoolExecutor(
            workers,
            thread_name_prefix=f"genops-{name}",
            initializer=_thread_setup,
            initargs=(torch_threads or torch.get_num_threads(), nice),
        )
        self.in_flight = 0  # admitted requests not yet answered (event-loop thread only)
        self.backlog_s = 0.0  # estimated seconds of admitted work not yet done
        self.running = 0  # calls executing on this lane's threads right now
        self._running_lock = threading.Lock()
        self.shed = 0  # requests refused with 503, for /metadata
        self.cancelled = 0  # requests whose work was skipped or cut short

    # -- 1. requests in flight (middleware, before parsing) -------------------------------------
    def admit(self) -> bool:
        if self.in_flight >= self.capacity:
            self.shed += 1
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1

    def retry_after_s(self) -> int:
        """Whole seconds (>= 1) until the queued work should be done."""
        return max(1, math.ceil(self.backlog_s / self.workers))

    # -- 2. queued work (handler, after validation) ---------------------------------------------
    async def hold(self, estimate_s: float, work: Awaitable[Any]) -> Any:
        """Await `work` counted as `estimate_s` seconds of this lane's queue, or shed it.

        Raises `Shed` when admitting `estimate_s` more would exceed `max_queue_s` per thread (a
        lane with nothing queued always admits: the cost budget bounds a lone request).
        """
        if self.backlog_s > 0 and (self.backlog_s + estimate_s) / self.workers > self.max_queue_s:
            self.shed += 1
            with contextlib.suppress(Exception):
                work.close()  # type: ignore[attr-defined]  # a coroutine never started
            raise Shed(
                f"the {self.name} queue holds ~{self.backlog_s:.1f} s of work "
                f"(limit {self.max_queue_s:g} s per thread)",
                self.retry_after_s(),
            )
        self.backlog_s += estimate_s
        try:
            return await work
        except (asyncio.CancelledError, Cancelled):
            self.cancelled += 1
            scope = CURRENT.get()
            if scope is not None:
                scope.cancelled.set()  # a running chunked job stops at its next check
            raise
        finally:
            self.backlog_s = max(0.0, self.backlog_s - estimate_s)

    async def run(self, estimate_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on this lane's threads, admitted by `hold`; never started if abandoned."""
        scope = CURRENT.get()

        def call() -> Any:
            if scope is not None:
                scope.check()  # abandoned while queued: never start
            with self._running_lock:
                self.running += 1
            try:
                return fn(*args)
            finally:
                with self._running_lock:
                    self.running -= 1

        async def submit() -> Any:  # submitted only once admitted
            return await asyncio.get_running_loop().run_in_executor(self.executor, call)

        return await self.hold(estimate_s, submit())

    def describe(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "in_flight": self.in_flight,
            "running": self.running,
            "workers": self.workers,
            "max_queue_s": self.max_queue_s,
            "backlog_s": round(self.backlog_s, 3),
            "shed": self.shed,
            "cancelled": self.cancelled,
        }

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# ---- the ASGI side ------------------------------------------------------------------------------
# the ASGI types and the one JSON responder live in serving.http


def install_outermost(middleware: type, **options: Any) -> None:
    """Run `middleware` before BentoML's own middlewares (metrics, tracing, access log).

    BentoML 1.4 only appends service middlewares after its own, so a request refused by
    admission control would still pay for a span, a metrics update and an access-log line:
    about four times the cost of the check itself, enough for a 2x overload to saturate the
    event loop with refusals. This wraps `ServiceAppFactory.middlewares` once (idempotent,
    like serving.http.refuse_file_urls); refused requests are counted in
    `genops_shed_requests_total` instead.
    """
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.middleware import Middleware

    current = ServiceAppFactory.middlewares
    first: dict[str, Any] | None = getattr(current.fget, "genops_first", None)
    if first is None:
        first = {}
        original = current.fget

        def middlewares(self: Any) -> list[Any]:
            return [*first.values(), *original(self)]

        middlewares.genops_first = first  # type: ignore[attr-defined]
        ServiceAppFactory.middlewares = property(middlewares)  # type: ignore[method-assign]
    first[middleware.__qualname__] = Middleware(middleware, **options)


class Admission:
    """ASGI middleware: bound each lane's requests in flight; cancel work of departed clients.

    `lanes()` returns the serving instance's lanes (None before the service is up). Installed
    outermost (`install_outermost`), so a refusal costs next to nothing.
    """

    def __init__(self, app: Any, lanes: Callable[[], dict[str, Lane] | None]) -> None:
        self.app = app
        self.lanes = lanes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = LANE_OF_ROUTE.get(scope.get("path", "")) if scope["type"] == "http" else None
        lanes = self.lanes() if name is not None and scope.get("method") == "POST" else None
        if lanes is None or name not in lanes:
            await self.app(scope, receive, send)
            return
        lane = lanes[name]
        if not lane.admit():
            from serving.runtime import shed_counter

            shed_counter().labels(name).inc()
            retry = lane.retry_after_s()
            reason = (
                f"the {name} queue is full ({lane.capacity} requests in flight); "
                f"retry after {retry} s"
            )
            await send_error(send, Shed(reason, retry))
            return
        request = RequestScope(name)
        token = CURRENT.set(request)
        try:
            await self._watched(scope, receive, send, request)
        finally:
            CURRENT.reset(token)
            lane.release()

    async def _watched(self, scope: Scope, receive: Receive, send: Send, req: RequestScope) -> None:
        """Run the app; if the client disconnects before the response is done, cancel it."""
        body_done = asyncio.Event()
        departed: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        state = {"complete": False, "gone": False}
        task = asyncio.current_task()

        async def receive_body() -> Message:
            if body_done.is_set():  # asked again after the body: answer when the client leaves
                return await asyncio.shield(departed)
            message = await receive()
            if message["type"] == "http.disconnect":
                req.cancelled.set()
            elif not message.get("more_body", False):
                body_done.set()
            return message

        async def send_watched(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        async def watch() -> None:
            await body_done.wait()
            message = await receive()  # returns when the client leaves or the response is done
            if not departed.done():
                departed.set_result(message)
            if not state["complete"] and task is not None and not task.done():
                state["gone"] = True
                req.cancelled.set()
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, receive_body, send_watched)
        except asyncio.CancelledError:
            req.cancelled.set()
            if not state["gone"] or task is None or task.uncancel() > 0:
                raise  # (also) cancelled from outside, e.g. by BentoML's timeout
            log.info("%s: client went away; its work was cancelled", scope.get("path"))
            await send_error(send, Cancelled("client closed the request"))
        finally:
            watcher.cancel()
