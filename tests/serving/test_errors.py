"""One place maps failures to HTTP (serving.errors): the table, and every route answering
through it, in process: a full queue is 503 + Retry-After on every laned route (the
`/score/image` declaration included), an unknown model 404, bad input 4xx with a reason, and
an internal error a bare 500, never the client's fault and never a traceback."""

from __future__ import annotations

import base64
import io
import warnings

import bentoml
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException, InvalidArgument
from PIL import Image

with warnings.catch_warnings():  # starlette's notice about httpx2, at import time
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.admission import LANE_OF_ROUTE, Cancelled, Shed
from serving.errors import (
    BadInput,
    Conflict,
    Forbidden,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    UnsupportedMediaType,
    answer,
)
from serving.fastpath import ScoreImageRoute
from serving.service import GenOps
from tests.serving.test_asgi import _second_app

DIGIT = np.full((28, 28), 40, dtype=np.uint8)
DIGIT[6:22, 12:16] = 230  # a "1"


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


PIXELS = base64.b64encode(DIGIT.tobytes()).decode()
# one valid request per laned route: (json, raw body, content type)
REQUESTS = {
    "/generate": ({"n": 2}, None, None),
    "/score": ({"pixels": PIXELS}, None, None),
    "/reconstruct": ({"pixels": PIXELS}, None, None),
    "/score/image": (None, DIGIT.tobytes(), "application/octet-stream"),
}


def _post(client: TestClient, route: str, query: str = ""):
    payload, body, content_type = REQUESTS[route]
    if payload is not None:
        return client.post(route + query, json=payload)
    return client.post(route + query, content=body, headers={"content-type": content_type})


@pytest.fixture()
def app_env(source_dir, monkeypatch):
    monkeypatch.setenv("GENOPS_MODEL_SOURCE", f"dir:{source_dir}")
    monkeypatch.setenv("GENOPS_TORCH_THREADS", "1")
    return monkeypatch


def test_the_table_maps_each_type_once():
    cases = {
        BadInput("bad"): 400,
        PayloadTooLarge("big"): 413,
        UnsupportedMediaType("gif"): 415,
        Forbidden("token"): 403,
        ModelNotFound("nope"): 404,
        Conflict("worse"): 409,
        NotReady("loading"): 503,
        Shed("full", 3): 503,
        Cancelled("gone"): 499,
        InvalidArgument("BentoML's own 4xx"): 400,
    }
    for exc, status in cases.items():
        assert answer(exc)[:2] == (status, {"error": str(exc)}), exc
    assert answer(Shed("full", 3))[2] == {"Retry-After": "3"}
    assert isinstance(BadInput("x"), ValueError)  # invalid arguments are ValueErrors
    # not ours to explain: a bug answers a bare 500 (BentoML's), never a 4xx
    for bug in (ValueError("internal"), KeyError("k"), BentoMLException("server")):
        assert answer(bug) is None, bug


def test_the_request_lists_cover_every_laned_route():
    assert set(REQUESTS) == set(LANE_OF_ROUTE)


def test_every_route_answers_through_the_table(app_env):
    with TestClient(_second_app()) as client:
        service = bentoml.get_current_service()
        for route in REQUESTS:
            assert _post(client, route).status_code == 200, route
            if route == "/score/image":
                missing = _post(client, route, "?model=vae")
            else:  # a family the schema knows, but not served here
                missing = client.post(route, json=REQUESTS[route][0] | {"model": "vae"})
            assert missing.status_code == 404 and "unknown model 'vae'" in missing.json()["error"]
        # a full queue: 503 with the reason and Retry-After on every laned route
        for lane in service.lanes.values():
            lane.backlog_s = 1e4
        try:
            for route in REQUESTS:
                shed = _post(client, route)
                assert shed.status_code == 503, (route, shed.text)
                assert "queue holds" in shed.json()["error"]
                assert int(shed.headers["retry-after"]) >= 1
            # the headers a route set before it failed stay: which model would have answered
            assert _post(client, "/score").headers["x-genops-model"] == "genops-anomaly"
        finally:
            for lane in service.lanes.values():
                lane.backlog_s = 0.0
        both = {"images": [[0.5] * 784], "pixels": PIXELS}
        bad = client.post("/score", json=both)
        assert bad.status_code == 400 and "send one of" in bad.json()["error"]
        media = client.post(
            "/score/image", content=b"GIF89a", headers={"content-type": "image/gif"}
        )
        assert media.status_code == 415 and "content type" in media.json()["error"]


def test_an_internal_value_error_is_a_500_not_the_clients_fault(app_env, monkeypatch):
    with TestClient(_second_app(), raise_server_exceptions=False) as client:
        served = bentoml.get_current_service().catalog.roles["anomaly"]

        def broken(*_args):
            raise ValueError("operands could not be broadcast (an internal bug)")

        monkeypatch.setattr(served, "reconstruct", broken)
        response = _post(client, "/reconstruct")
        assert response.status_code == 500, response.text
        assert "broadcast" not in response.text and "Traceback" not in response.text
        # input problems are still the client's: a strength for a model without denoising
        refused = client.post("/reconstruct", json={"pixels": PIXELS, "denoise_strength": 0.5})
        assert refused.status_code == 400 and "denoise_strength" in refused.json()["error"]


def test_the_declared_score_image_route_maps_a_shed_to_503(app_env, monkeypatch):
    """Without the fast path, BentoML's own `/score/image` answers: same scores, and a full
    queue is a 503 with Retry-After there too (it used to become a 400)."""
    others = [m for m in GenOps.middlewares if m[0] is not ScoreImageRoute]
    monkeypatch.setattr(GenOps, "middlewares", others)
    with TestClient(_second_app()) as client:
        png = {"content": _png(DIGIT), "headers": {"content-type": "image/png"}}
        declared = client.post("/score/image", **png)
        assert declared.status_code == 200, declared.text
        reference = client.post("/score", json={"pixels": PIXELS})
        want = reference.json()["results"][0]["raw_score"]
        assert declared.json()["results"][0]["raw_score"] == pytest.approx(want, abs=1e-6)
        lane = bentoml.get_current_service().lanes["scoring"]
        lane.backlog_s = 1e4
        try:
            shed = client.post("/score/image", **png)
        finally:
            lane.backlog_s = 0.0
        assert shed.status_code == 503 and "queue holds" in shed.json()["error"], shed.text
        assert int(shed.headers["retry-after"]) >= 1
        broken = client.post("/score/image", content=b"\x89PNG broken", headers=png["headers"])
        assert broken.status_code == 400 and "error" in broken.text
