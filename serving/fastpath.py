"""The one-image fast path: `POST /score/image` answered by a small ASGI handler.

A `/score` request through BentoML's API layer pays for a dynamically built pydantic input
model, the JSON serde, argument inspection and a pydantic response model: ~1 ms of Python on
this class of machine, several times the forward pass of one image. Here the body *is* the
image (PNG/JPEG, or 784 raw uint8 bytes), and the answer is the `/score` JSON built from a dict.
It sits inside BentoML's middlewares, so metrics, tracing, access logs, the body-size limit and
admission control apply as to every endpoint. The same route is also declared as a BentoML API
(`GenOps.score_image`) so that `/docs.json` documents it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from serving.canary import client_key
from serving.errors import ServingError
from serving.http import Message, Receive, Scope, Send, send_error, send_json

ROUTE = "/score/image"


class ScoreImageRoute:
    """ASGI middleware answering `POST /score/image` through `service.score_body`."""

    def __init__(self, app: Any, service: Callable[[], Any]) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != ROUTE or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        service = self.service()
        if service is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message: Message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = dict(scope.get("headers") or [])
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        model = query.get("model", [None])[-1]
        client = client_key(headers, scope.get("client"))
        try:
            payload, extra = await service.score_body(b"".join(chunks), content_type, model, client)
        except ServingError as exc:  # anything else is a bug: a bare 500
            await send_error(send, exc)
            return
        headers = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send_json(send, 200, payload, headers)
