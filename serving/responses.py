"""What every API answer shares: the headers naming the model and the worker.

Refusals are not built here: routes raise serving.errors types, mapped in one place."""

from __future__ import annotations

import os

import bentoml

from serving.bundle import ServedModel

# Response headers naming the registered model version that produced the result.
MODEL_HEADER, VERSION_HEADER = "X-Genops-Model", "X-Genops-Model-Version"
# ... and the worker process that answered (GENOPS_WORKERS > 1 serves from several).
WORKER_HEADER = "X-Genops-Worker"


def name_the_model(ctx: bentoml.Context, served: ServedModel) -> None:
    """Response headers with the registered name and version that answer this request."""
    ctx.response.headers[MODEL_HEADER] = served.meta.name
    ctx.response.headers[VERSION_HEADER] = served.meta.version
    ctx.response.headers[WORKER_HEADER] = str(os.getpid())


def model_headers(served: ServedModel) -> dict[str, str]:
    """The same headers for the raw ASGI paths."""
    return {
        MODEL_HEADER: served.meta.name,
        VERSION_HEADER: served.meta.version,
        WORKER_HEADER: str(os.getpid()),
    }
