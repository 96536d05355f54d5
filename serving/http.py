"""ASGI pieces around the BentoML service: a request-body size limit, no URLs in file fields."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

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


async def _reject(send: Send, status: int, reason: str) -> None:
    await send_json(send, status, {"error": reason})


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
                await _reject(send, 400, "invalid Content-Length header")
                return
            if size > self.max_bytes:
                await _reject(send, 413, too_big)
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
                await _reject(send, 413, too_big)
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
