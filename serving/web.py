"""The service's GET side: `/metadata`, the web page under `/ui/`, and model cards.

Mounted on the BentoML service (`GenOps.mount_asgi_app`), so the page talks to the same
origin as the API: no CORS, no CDN, no build step; the files in `serving/static/` are served
as they are and work offline. Model cards are the bundle's `card/card.html` (self-contained,
images inlined) and `card/card.md`, written by the pipeline (pipelines/registry/cards.py); they are
served with a sandboxing Content-Security-Policy so a card can never run script on this origin.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving.errors import ModelNotFound, NotReady, ServingError, answer

STATIC = Path(__file__).resolve().parent / "static"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'"
)
CARD_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def web_app(service: Callable[[], Any]) -> Any:
    """A Starlette app: GET /metadata, /ui/ (the page), /ui/static/*, /ui/cards/<role>."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def refused(exc: ServingError) -> JSONResponse:
        status, payload, headers = answer(exc)  # type: ignore[misc]  # always mapped
        return JSONResponse(payload, status_code=status, headers=headers)

    def unavailable() -> JSONResponse:
        return refused(NotReady("service is starting"))

    async def get_metadata(_: Any) -> Response:
        svc = service()
        return unavailable() if svc is None else JSONResponse(svc.describe())

    async def page(_: Any) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    async def to_page(_: Any) -> Response:
        return RedirectResponse("/ui/")

    async def card(request: Any) -> Response:
        svc = service()
        if svc is None:
            return unavailable()
        role = request.path_params["role"]
        served = svc.catalog.roles.get(role)
        if served is None:
            return refused(ModelNotFound(f"no model is served as {role!r}"))
        if served.card_dir is None:
            meta = served.meta
            return refused(ModelNotFound(f"{meta.name} v{meta.version} has no model card"))
        markdown = request.query_params.get("format") == "md"
        path = served.card_dir / ("card.md" if markdown else "card.html")
        media = "text/markdown; charset=utf-8" if markdown else "text/html; charset=utf-8"
        headers = {"Content-Security-Policy": CARD_CSP, "X-Content-Type-Options": "nosniff"}
        return Response(path.read_bytes(), media_type=media, headers=headers)

    return Starlette(
        routes=[
            Route("/metadata", get_metadata, methods=["GET"]),
            Route("/ui", to_page, methods=["GET"]),
            Route("/ui/", page, methods=["GET"]),
            Route("/ui/cards/{role:path}", card, methods=["GET"]),
            Mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static"),
        ]
    )
