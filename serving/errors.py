"""The one place where serving failures become HTTP answers.

Code anywhere in `serving/` raises a typed error below and never builds an error response
itself; `answer` turns it into `(status, {"error": reason}, headers)`:

    BadInput               400  the request is wrong (shape, range, NaN/Inf, options a model
                                does not declare, budget exceeded); also a ValueError
    PayloadTooLarge        413  a body over GENOPS_MAX_BODY_BYTES
    UnsupportedMediaType   415  a body of a content type the route does not read
    Forbidden              403  the admin token is missing, wrong or not configured
    ModelNotFound          404  a `model` this service does not serve
    Conflict               409  a reload refused because it would make things worse
    NotReady               503  the model a request needs is not loaded (yet)
    Overloaded             503  a full lane (admission control), with Retry-After
    Abandoned              499  the client went away (logged, nobody receives it)
    ModelFailed            500  the model produced no usable answer (non-finite scores), with
                                the reason; a canary's failure is answered by the champion

Every other exception is a bug of ours: BentoML answers it `500` with a fixed message and
logs the traceback; a response never carries one. BentoML's own 4xx (its request parser,
the pickle content type) answer `{"error": reason}` too, so every refusal has one shape.
`install()` hooks `answer` into BentoML's API layer (every `@bentoml.api` route at once); the
raw ASGI paths (admission, body limit, `/score/image`) answer through `serving.http.send_error`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

log = logging.getLogger("genops.serving")
CLIENT_CLOSED = 499  # nginx's "client closed request": logged for work cut short by a hang-up


class ServingError(Exception):
    """A failure with a known HTTP answer: `status` and the message as the reason."""

    status: ClassVar[int] = 500

    def headers(self) -> dict[str, str]:
        return {}


class BadInput(ServingError, ValueError):
    """The client's request is invalid: 400 with the reason."""

    status = 400


class PayloadTooLarge(BadInput):
    status = 413


class UnsupportedMediaType(BadInput):
    status = 415


class Forbidden(ServingError):
    status = 403


class ModelNotFound(ServingError, LookupError):
    """The request named a model this service does not serve."""

    status = 404


class Conflict(ServingError):
    status = 409


class NotReady(ServingError):
    """The model a request needs is not loaded: 503 (readiness says so too)."""

    status = 503


class Overloaded(ServingError):
    """A lane is full: 503 with Retry-After (whole seconds)."""

    status = 503

    def __init__(self, reason: str, retry_after_s: int) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class Abandoned(ServingError):
    """The request was abandoned (client gone or timed out) before or while its work ran."""

    status = CLIENT_CLOSED


class ModelFailed(ServingError):
    """The model ran but its output is unusable (e.g. NaN scores): 500 with the reason."""

    status = 500


def answer(exc: BaseException) -> tuple[int, dict[str, Any], dict[str, str]] | None:
    """`(status, {"error": reason}, headers)` for a known failure, else None (a 500 bug)."""
    if isinstance(exc, ServingError):
        return exc.status, {"error": str(exc)}, exc.headers()
    from bentoml.exceptions import BentoMLException

    if isinstance(exc, BentoMLException):  # BentoML's own refusals (request parsing, media)
        status = exc.error_code.value
        if 400 <= status < 500 and status not in (401, 403):
            return status, {"error": str(exc)}, {}
    return None


def install() -> None:
    """Answer every `@bentoml.api` route's known failures with `answer` (idempotent).

    BentoML 1.4 turns a 4xx exception into `[{"error": ...}]` and blanks every 5xx body (so
    a 503 could not say which queue is full, nor carry Retry-After); this wraps
    `ServiceAppFactory.api_endpoint` once, so a route only raises. The headers a route set
    before failing (the model that answered) are kept.
    """
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.responses import JSONResponse

    if getattr(ServiceAppFactory.api_endpoint, "answers_errors", False):
        return
    original = ServiceAppFactory.api_endpoint

    async def api_endpoint(self: Any, name: str, request: Any) -> Any:
        try:
            return await original(self, name, request)
        except Exception as exc:
            mapped = answer(exc)
            if mapped is None:
                raise  # a bug: BentoML logs it and answers a bare 500
            status, payload, headers = mapped
            if not isinstance(exc, Overloaded | Abandoned):  # those are counted, not logged
                log.warning("%s: %d %s: %s", request.url.path, status, type(exc).__name__, exc)
            response = JSONResponse(payload, status_code=status)
            response.headers.update(self.service.context.response.metadata)
            response.headers.update(headers)
            return response

    api_endpoint.answers_errors = True  # type: ignore[attr-defined]
    ServiceAppFactory.api_endpoint = api_endpoint  # type: ignore[method-assign]
