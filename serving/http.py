"""ASGI pieces around the BentoML service: a request-body size limit, no URLs in file fields."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from serving.errors import BadInput, PayloadTooLarge, ServingError, answer

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer a raw ASGI request with a JSON body (the middlewares' one way to respond)."""
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: ServingError) -> None:
    """Answer a raw ASGI request with `exc` as serving.errors maps it."""
    status, payload, headers = answer(exc)  # type: ignore[misc]  # a ServingError always maps
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send_json(send, status, payload, raw)


class BodySizeLimit:
    """Answer 413 to a request whose body exceeds `max_bytes`, before the service parses it.

    The declared Content-Length is checked first; a chunked body is read (BentoML buffers it
    anyway) and refused as soon as it passes the limit, then replayed to the app.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = f"request body exceeds {self.max_bytes} bytes"
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_error(send, BadInput("invalid Content-Length header"))
                return
            if size > self.max_bytes:
                await send_error(send, PayloadTooLarge(too_big))
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                await send_error(send, PayloadTooLarge(too_big))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def refuse_file_urls() -> None:
    """Make BentoML's multipart parser refuse a text value in a file field (400).

    BentoML 1.4 treats such a value as a URL and downloads it from the server (an SSRF risk,
    and a 500 when uvloop is absent). Uploads must be real files, so we swap in a parser
    that rejects them. Idempotent.
    """
    from _bentoml_impl import serde
    from bentoml.exceptions import BadInput
    from starlette.datastructures import UploadFile

    current = serde.ALL_SERDE["multipart/form-data"]
    if getattr(current, "refuses_urls", False):
        return

    class UploadsOnlySerde(current):  # type: ignore[misc, valid-type]
        refuses_urls = True

        @staticmethod
        async def ensure_file(obj: Any) -> Any:
            if isinstance(obj, UploadFile):
                return obj
            raise BadInput("file fields take uploaded PNG/JPEG files, not text or URLs")

    table: Any = serde.ALL_SERDE
    for media_type, cls in list(table.items()):
        if cls is current:
            table[media_type] = UploadsOnlySerde


def release_request_timers() -> None:
    """Make BentoML's request timeout let go of each request once it is answered.

    BentoML 1.4's `TimeoutMiddleware` arms `loop.call_later(timeout, ...)` per request and
    never cancels it, so every answered request stays reachable for `traffic.timeout` (60 s)
    through that timer: its future and its copy of the context (the tracing span, our request
    scope and their locks and events). At 500 requests/s that is ~30,000 requests alive, all
    promoted to the collector's oldest generation, whose full collections then held the GIL
    for 0.1-0.6 s several times a minute: the p99 of `/score` under load. This version keeps
    the behaviour (504 after the timeout) but cancels the timer once the response has started
    and arms it in an empty context. Idempotent, like `refuse_file_urls`.
    """
    import asyncio
    import contextvars

    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    if getattr(TimeoutMiddleware, "releases_timers", False):
        return
    from starlette.responses import JSONResponse

    async def call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        timer = loop.call_later(
            self.timeout, self._set_timer_out, waiter, context=contextvars.Context()
        )

        async def started(message: Message) -> None:
            if not waiter.done():
                waiter.set_result(None)
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, started), loop=loop)
        try:
            await waiter
        except TimeoutError:
            if task.cancel():
                error = {"error": f"Not able to process the request in {self.timeout} seconds"}
                await JSONResponse(error, status_code=504)(scope, receive, send)
        else:
            timer.cancel()
            await task
        finally:
            timer.cancel()

    TimeoutMiddleware.__call__ = call  # type: ignore[method-assign]
    TimeoutMiddleware.releases_timers = True  # type: ignore[attr-defined]
