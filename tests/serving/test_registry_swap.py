"""The service follows the registry: an alias move is served with no failed request.

A real SQLite MLflow registry with v1 and v2 of each champion, a real `bentoml serve` with the
`mlflow` source and polling on, continuous /score and /generate traffic while
`genops-anomaly@champion` moves to v2 (a promotion) and back to v1 (what `genops rollback`
does: `set_registered_model_alias`). Also: a model cache folder that someone else filled is
never served on its own word.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.bundle import read_meta, write_meta
from models.io import sha256_file
from models.registry_copy import cache_problem, meta_from_version
from models.spec import (
    ALIAS,
    ANOMALY,
    GENERATION,
    TASKS,
    WEIGHTS_FILE,
    family_model_name,
    redact_uri,
)
from serving.bundle import load_bundle
from serving.catalog import load_catalog
from serving.service import VERSION_HEADER
from serving.sources import MlflowSource
from tests.serving.conftest import (
    CALIB,
    TRAIN,
    Server,
    digits_as_lists,
    register_bundle,
    train_tiny_autoencoder,
    write_role,
)

ANOMALY_MODEL = TASKS[ANOMALY].registered_model
GENERATION_MODEL = TASKS[GENERATION].registered_model
POLL_S = 0.25
SWAP_TIMEOUT_S = 60.0
STEADY_S = 1.5  # traffic kept on each version after it is first seen
DIGIT = slice(4600, 4601)  # one held-out digit, scored over and over


@dataclass(frozen=True)
class Registry:
    uri: str
    versions: dict[str, dict[str, Path]]  # registered name -> version -> the bundle it holds


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, real_digits) -> Path:
    """A second bundle with other weights: the same tiny AE trained for fewer steps."""
    images, labels = real_digits
    model = train_tiny_autoencoder(images[TRAIN], labels[TRAIN], steps=15)
    root = tmp_path_factory.mktemp("retrained")
    write_role(root, "v2", model, images[CALIB], ANOMALY_MODEL, "2", [ANOMALY])
    return root / "v2"


@pytest.fixture(scope="module")
def registry(tmp_path_factory, source_dir, retrained) -> Registry:
    """v1 = the tiny AE of the other serving tests, v2 = a retrained one, for both champions;
    `champion` on v1; one family version."""
    from models.spec import mlflow_client

    root = tmp_path_factory.mktemp("swap-mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("genops", artifact_location=(root / "art").as_uri())
    v1, v2 = source_dir / GENERATION, retrained
    versions: dict[str, dict[str, Path]] = {}
    for name in (ANOMALY_MODEL, GENERATION_MODEL):
        versions[name] = {register_bundle(client, experiment, name, b): b for b in (v1, v2)}
        assert sorted(versions[name]) == ["1", "2"]
        client.set_registered_model_alias(name, ALIAS, "1")
    family = family_model_name("autoencoder")
    other = source_dir / "families" / "autoencoder"
    versions[family] = {register_bundle(client, experiment, family, other): other}
    return Registry(uri, versions)


# ---- the cache is not trusted on its own word ----------------------------------------------


def _plant(folder: Path, bundle: Path, **meta_changes: Any) -> None:
    """Someone else's cache folder: `bundle`'s files with a doctored meta.json."""
    shutil.copytree(bundle, folder)
    write_meta(folder, dataclasses.replace(read_meta(folder), **meta_changes))
    for path in (folder, *folder.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.mark.parametrize("lie", ["claims the registered sha256", "is self-consistent"])
def test_a_cached_folder_with_wrong_weights_is_downloaded_again(registry, tmp_path, lie):
    source = MlflowSource(registry.uri, cache_dir=tmp_path / "cache")
    right, wrong = registry.versions[ANOMALY_MODEL]["1"], registry.versions[ANOMALY_MODEL]["2"]
    registered_sha = read_meta(right).weights_sha256
    planted = source.bundle_dir(ANOMALY_MODEL, "1")
    claim = registered_sha if lie.startswith("claims") else read_meta(wrong).weights_sha256
    _plant(planted, wrong, name=ANOMALY_MODEL, version="1", weights_sha256=claim)
    from models.spec import mlflow_client

    mv = mlflow_client(registry.uri).get_model_version(ANOMALY_MODEL, "1")
    problem = cache_problem(planted, meta_from_version(mv, ANOMALY))
    assert problem and ("checksum mismatch" in problem or "registry says" in problem)

    catalog = load_catalog(source)
    assert catalog.ready, catalog.errors
    assert catalog.roles[ANOMALY].meta.weights_sha256 == registered_sha
    assert sha256_file(planted / WEIGHTS_FILE) == registered_sha  # replaced by the download
    assert cache_problem(planted, meta_from_version(mv, ANOMALY)) is None


def test_a_cached_folder_with_wrong_weights_is_refused_when_it_cannot_be_replaced(
    registry, tmp_path, monkeypatch
):
    import mlflow

    source = MlflowSource(registry.uri, cache_dir=tmp_path / "cache")
    wrong = registry.versions[ANOMALY_MODEL]["2"]
    planted = source.bundle_dir(ANOMALY_MODEL, "1")
    _plant(planted, wrong, name=ANOMALY_MODEL, version="1")  # self-consistent, wrong model

    def offline(**_: Any) -> str:
        raise OSError("tracking server unreachable")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", offline)
    catalog = load_catalog(source)
    assert ANOMALY not in catalog.roles and not catalog.ready
    assert "unreachable" in catalog.errors[ANOMALY]


def test_the_cache_is_namespaced_per_tracking_server_without_credentials(tmp_path):
    with_secret = "https://alice:s3cret@mlflow.example:5000/api?token=t0k"
    assert redact_uri(with_secret) == "https://mlflow.example:5000/api"
    assert redact_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
    a = MlflowSource(with_secret, cache_dir=tmp_path)
    b = MlflowSource("https://mlflow.other:5000/api", cache_dir=tmp_path)
    assert "s3cret" not in a.spec and "t0k" not in a.spec
    assert "s3cret" not in str(a.bundle_dir(ANOMALY_MODEL, "1"))
    assert a.bundle_dir(ANOMALY_MODEL, "1") != b.bundle_dir(ANOMALY_MODEL, "1")


# ---- following the registry under traffic -------------------------------------------------


@dataclass(frozen=True)
class Call:
    endpoint: str
    sent: float
    done: float
    status: int
    version: str | None = None  # from the JSON body
    header: str | None = None  # from X-Genops-Model-Version
    score: float | None = None
    error: str = ""


def _traffic(url: str, endpoint: str, payload: dict, stop: threading.Event, calls: list) -> None:
    """Fire `payload` at `endpoint` back to back until `stop`; record every call."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = client.post(endpoint, json=payload)
            except httpx.HTTPError as exc:
                calls.append(Call(endpoint, sent, time.monotonic(), 0, error=repr(exc)))
                continue
            done = time.monotonic()
            if response.status_code != 200:
                calls.append(Call(endpoint, sent, done, response.status_code, error=response.text))
                continue
            body = response.json()
            version = body["model"]["version"]
            results = body.get("results") or [{}]
            if any(r.get("version", version) != version for r in results):
                calls.append(Call(endpoint, sent, done, -1, error=f"mixed versions: {body}"))
                continue
            calls.append(
                Call(
                    endpoint,
                    sent,
                    done,
                    200,
                    version=version,
                    header=response.headers.get(VERSION_HEADER),
                    score=results[0].get("raw_score"),
                )
            )


def _first(calls: list[Call], endpoint: str, version: str, after: float) -> Call | None:
    hits = [c for c in calls if c.endpoint == endpoint and c.version == version and c.done > after]
    return min(hits, key=lambda c: c.done, default=None)


def _wait_for(calls: list[Call], endpoint: str, version: str, after: float) -> Call:
    deadline = time.monotonic() + SWAP_TIMEOUT_S
    while (hit := _first(calls, endpoint, version, after)) is None:
        assert time.monotonic() < deadline, f"{endpoint} never answered with v{version}"
        time.sleep(0.02)
    return hit


def _metadata_after(client: httpx.Client, version: str) -> dict:
    meta = client.get("/metadata").json()
    assert meta["models"][ANOMALY]["version"] == version, meta["models"][ANOMALY]
    assert meta["versions"][ANOMALY] == f"{ANOMALY_MODEL}:{version}"
    assert meta["last_swap"]["to"][ANOMALY] == f"{ANOMALY_MODEL}:{version}"
    assert meta["last_swap"]["trigger"] == "poll" and meta["ready"]
    return meta


def test_an_alias_move_is_served_with_no_failed_request(
    registry, real_digits, tmp_path, capsys, record_property
):
    from models.spec import mlflow_client

    digit = real_digits[0][DIGIT]
    expected = {
        v: float(load_bundle(bundle).score(digit.numpy())[0])
        for v, bundle in registry.versions[ANOMALY_MODEL].items()
    }
    assert abs(expected["1"] - expected["2"]) > 1e-4  # the two versions are told apart
    env = {
        "MLFLOW_TRACKING_URI": registry.uri,
        "GENOPS_RELOAD_INTERVAL_S": str(POLL_S),
        "GENOPS_MODEL_CACHE": str(tmp_path / "cache"),
    }
    server = Server("mlflow", tmp_path, extra_env=env)
    registry_client = mlflow_client(registry.uri)
    calls: list[Call] = []
    stop = threading.Event()
    score = {"images": digits_as_lists(digit), "scale": "unit"}
    threads = [
        threading.Thread(target=_traffic, args=(server.url, "/score", score, stop, calls)),
        threading.Thread(target=_traffic, args=(server.url, "/score", score, stop, calls)),
        threading.Thread(
            target=_traffic, args=(server.url, "/generate", {"n": 1, "seed": 3}, stop, calls)
        ),
    ]

    def move(version: str) -> float:
        """Point both champions at `version`, as promotion and `genops rollback` do."""
        for name in (ANOMALY_MODEL, GENERATION_MODEL):
            registry_client.set_registered_model_alias(name, ALIAS, version)
        return time.monotonic()

    try:
        server.wait_ready()
        assert server.client.get("/metadata").json()["versions"][ANOMALY] == f"{ANOMALY_MODEL}:1"
        for thread in threads:
            thread.start()
        _wait_for(calls, "/score", "1", after=0.0)
        time.sleep(STEADY_S)

        promoted = move("2")  # promotion
        first_v2 = _wait_for(calls, "/score", "2", after=promoted)
        _wait_for(calls, "/generate", "2", after=promoted)
        time.sleep(STEADY_S)
        after_promotion = _metadata_after(server.client, "2")

        rolled_back = move("1")  # rollback
        first_v1 = _wait_for(calls, "/score", "1", after=rolled_back)
        _wait_for(calls, "/generate", "1", after=rolled_back)
        time.sleep(STEADY_S)
        after_rollback = _metadata_after(server.client, "1")
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=60)
        log = server.log()
        server.stop()

    failed = [c for c in calls if c.status != 200]
    assert not failed, f"{len(failed)} failed requests, e.g. {failed[:3]}\n{log}"
    for c in calls:
        assert c.header == c.version, c  # the header names the version that answered
        if c.endpoint == "/score":
            assert c.score == pytest.approx(expected[c.version], rel=1e-5, abs=1e-6), c
    scores = [c for c in calls if c.endpoint == "/score"]
    # never a step back: once a version is seen, every later request gets it (until rollback)
    assert {c.version for c in scores if c.done < promoted} == {"1"}
    assert {c.version for c in scores if first_v2.done < c.sent < rolled_back} == {"2"}
    assert {c.version for c in scores if c.sent > first_v1.done} == {"1"}

    promote_s, rollback_s = first_v2.done - promoted, first_v1.done - rolled_back
    report = (
        f"registry swap: {len(calls)} requests ({len(scores)} /score, "
        f"{len(calls) - len(scores)} /generate), {len(failed)} failed; "
        f"alias move -> first response from the new version: promotion {promote_s:.2f} s, "
        f"rollback {rollback_s:.2f} s (poll every {POLL_S} s; service load "
        f"{after_promotion['last_swap']['load_s']:.2f} s / "
        f"{after_rollback['last_swap']['load_s']:.2f} s)"
    )
    for key, value in (
        ("requests", len(calls)),
        ("promote_s", promote_s),
        ("rollback_s", rollback_s),
    ):
        record_property(key, value)
    with capsys.disabled():
        print(f"\n{report}")
    assert promote_s < SWAP_TIMEOUT_S and rollback_s < SWAP_TIMEOUT_S
