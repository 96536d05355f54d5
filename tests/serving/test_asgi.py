"""The service as an in-process ASGI app: readiness on a bad bundle, and OpenAPI fuzzing."""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

with warnings.catch_warnings():  # starlette's notice about httpx2, at import time
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from serving.service import GenOps


@pytest.fixture()
def broken_anomaly_source(tmp_path, source_dir, monkeypatch):
    dst = tmp_path / "models"
    shutil.copytree(source_dir, dst)
    meta_path = dst / "anomaly" / "meta.json"
    meta_path.write_text(
        json.dumps(json.loads(meta_path.read_text()) | {"weights_sha256": "c" * 64})
    )
    monkeypatch.setenv("GENOPS_MODEL_SOURCE", f"dir:{dst}")
    return dst


def _second_app():
    """Like GenOps.to_asgi(), minus BentoML's HTTP metrics (registered once per process)."""
    from _bentoml_impl.server.app import ServiceAppFactory

    GenOps.inject_config()
    return ServiceAppFactory(GenOps, is_main=True, enable_metrics=False)()


def test_checksum_mismatch_keeps_readyz_false(broken_anomaly_source):
    with TestClient(_second_app()) as client:
        assert client.get("/readyz").status_code == 503
        refused = client.post("/score", json={"images": [[0.5] * 784]})
        assert refused.status_code == 503 and "checksum mismatch" not in refused.text  # no leak
        assert client.post("/generate", json={"n": 2}).status_code == 200  # other roles serve
        errors = client.get("/metadata").json()["errors"]
        assert "checksum mismatch" in errors["anomaly"]


def test_admin_token_guards_reload(source_dir, monkeypatch):
    monkeypatch.setenv("GENOPS_MODEL_SOURCE", f"dir:{source_dir}")
    monkeypatch.setenv("GENOPS_ADMIN_TOKEN", "s3cret")
    with TestClient(_second_app()) as client:
        assert client.post("/admin/reload", json={}).status_code == 403
        wrong = client.post("/admin/reload", json={}, headers={"X-Admin-Token": "guess"})
        assert wrong.status_code == 403
        ok = client.post("/admin/reload", json={"force": True}, headers={"X-Admin-Token": "s3cret"})
        assert ok.status_code == 200 and ok.json()["swapped"]


def _with_json_bodies(raw: dict) -> dict:
    """Declare the JSON form of /score and /reconstruct next to the multipart one.

    BentoML documents only multipart/form-data for an API with file fields, but the same
    endpoint parses `application/json`; fuzzing that form reaches the model with valid arrays.
    """
    raw = copy.deepcopy(raw)
    for route in ("/score", "/reconstruct"):
        content = raw["paths"][route]["post"]["requestBody"]["content"]
        schema = copy.deepcopy(content["multipart/form-data"]["schema"])
        schema["properties"].pop("files")
        content["application/json"] = {"schema": schema}
    return raw


@pytest.fixture(scope="module")
def api_schema(source_dir):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GENOPS_MODEL_SOURCE", f"dir:{source_dir}")
        app = GenOps.to_asgi()
        loaded = schemathesis.openapi.from_asgi("/docs.json", app)
        patched = schemathesis.openapi.from_dict(_with_json_bodies(loaded.raw_schema))
        patched.app, patched.location = app, "/docs.json"
        yield patched


def test_api_never_answers_5xx(api_schema):
    """Schemathesis cases for every operation in /docs.json; any 5xx fails.

    (Schemathesis' lazy `from_fixture` does not run under pytest 9, hence the explicit loop.)
    """
    # /metrics needs the multiprocess dir of a real `bentoml serve`; test_http covers it there
    operations = [
        op for op in (r.ok() for r in api_schema.get_all_operations()) if op.path != "/metrics"
    ]
    assert {op.path for op in operations} >= {"/generate", "/score", "/reconstruct", "/metadata"}
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call()
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
