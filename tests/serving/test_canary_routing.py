"""Canary routing without a server (serving/catalog.py Route, models/canary.py records)."""

from __future__ import annotations

import json
from types import MappingProxyType, SimpleNamespace

import pytest

from models.canary import CANARY_FILE, Canary, draw
from serving.catalog import Catalog
from serving.sources import DirSource


def _served(version: str) -> SimpleNamespace:
    meta = SimpleNamespace(name="genops-anomaly", version=version)
    return SimpleNamespace(meta=meta, describe=lambda: {"version": version})


def _catalog(canary: Canary | None, challenger: str | None = "5") -> Catalog:
    roles = {"anomaly": _served("2"), "generation": _served("3")}
    if challenger:
        roles["challengers/anomaly"] = _served(challenger)
    canaries = {"anomaly": canary} if canary else {}
    return Catalog("test", "f", MappingProxyType(roles), canaries=MappingProxyType(canaries))


def test_a_canary_takes_its_share_of_clients_and_each_client_sticks():
    canary = Canary("anomaly", "5", 0.1)
    catalog = _catalog(canary)
    clients = [f"10.0.{i // 256}.{i % 256}" for i in range(4000)]
    routes = {c: catalog.route("anomaly", None, c) for c in clients}
    to_canary = [c for c, r in routes.items() if r.served.meta.version == "5"]
    assert 0.08 < len(to_canary) / len(clients) < 0.12
    for c in clients[:200]:  # the same client, the same answer, every time
        again = catalog.route("anomaly", "champion", c)
        assert again.served is routes[c].served
    first = routes[to_canary[0]]
    assert first.fallback.meta.version == "2" and first.role == "canary"
    assert first.canary == canary
    champion = next(r for r in routes.values() if r.fallback is None)
    assert champion.role == "champion" and champion.canary == canary
    # a named model is never diverted; nor is another task
    assert catalog.route("anomaly", "challenger", to_canary[0]).fallback is None
    assert catalog.route("generation", None, to_canary[0]).canary is None
    # the task's champion requests are measured (route.task), with a canary or without one;
    # a request for a model by name is not the champion's
    assert first.task == champion.task == "anomaly"
    assert catalog.route("generation", None, "anyone").task == "generation"
    assert _catalog(None).route("anomaly", "champion", "anyone").task == "anomaly"
    assert catalog.route("anomaly", "challenger", to_canary[0]).task is None


def test_champion_requests_are_measured_without_a_canary():
    """The canary's baseline (`genops canary`, `baseline_s`): the champion's latency is
    recorded while no canary is live; a request for a model by name is not."""
    import asyncio

    from serving.canary import answer, canary_metrics

    catalog = _catalog(None)
    count = canary_metrics()["requests"].labels("anomaly", "2", "champion", "ok")
    latency = canary_metrics()["latency"].labels("anomaly", "2", "champion")
    before, observed = count._value.get(), latency._sum.get()

    async def run(served):
        await asyncio.sleep(0.01)
        return served.meta.version

    _, result = asyncio.run(answer(catalog.route("anomaly", None, "c1"), run))
    assert result == "2" and count._value.get() == before + 1
    assert latency._sum.get() - observed >= 0.009
    asyncio.run(answer(catalog.route("anomaly", "challenger", "c1"), run))  # by name
    assert count._value.get() == before + 1


def test_a_canary_for_a_version_that_is_not_the_challenger_is_ignored():
    for catalog in (_catalog(Canary("anomaly", "4", 1.0)), _catalog(Canary("anomaly", "5", 1.0),
                                                                   challenger=None)):  # fmt: skip
        route = catalog.route("anomaly", None, "anyone")
        assert route.served.meta.version == "2" and route.canary is None
        assert catalog.describe()["canaries"]["anomaly"]["live"] is False


def test_a_new_canary_reshuffles_clients():
    same = sum(
        (draw(f"c{i}", "anomaly", "5") < 0.5) == (draw(f"c{i}", "anomaly", "6") < 0.5)
        for i in range(2000)
    )
    assert 800 < same < 1200  # independent draws agree about half the time


@pytest.mark.parametrize(
    "record", ['{"share": 0.1}', '{"version": "5", "share": 0}', '{"version": "5", "share": 2}',
               "not json", '{"version": " ", "share": 0.5}'],
)  # fmt: skip
def test_a_bad_canary_record_is_refused_with_the_reason(record):
    with pytest.raises(ValueError):
        Canary.loads("anomaly", record)


def test_a_folder_source_reads_its_canary_and_a_change_changes_the_fingerprint(tmp_path):
    (tmp_path / "anomaly").mkdir()
    source = DirSource(tmp_path)
    before = source.fingerprint()
    record = Canary("anomaly", "5", 0.25, 12.0)
    (tmp_path / CANARY_FILE).write_text(json.dumps({"anomaly": json.loads(record.dumps())}))
    assert source.fingerprint() != before
    assert source.snapshot().canaries == {"anomaly": record}


def _with_generation_challenger(tmp_path, source_dir):
    """A copy of the test bundles whose generation challenger is the unconditional
    autoencoder, as v8."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(source_dir, root)
    challenger = root / "challengers" / "generation"
    shutil.copytree(root / "families" / "autoencoder", challenger)
    meta = json.loads((challenger / "meta.json").read_text())
    meta |= {"name": "genops-generation", "version": "8", "tasks": ["generation"]}
    (challenger / "meta.json").write_text(json.dumps(meta))
    return root


def test_generation_canary_answers_with_its_version_and_falls_back_where_it_cannot(
    tmp_path, source_dir, monkeypatch
):
    """In process: generation's challenger (v8, the unconditional autoencoder) under a canary of
    share 1. A request it can serve is answered by v8 and says so; one with a `label` it
    cannot take is answered by the champion (v3); a failing canary falls back, counted."""

    import bentoml

    from serving.responses import VERSION_HEADER
    from tests.serving.test_asgi import TestClient, _second_app

    root = _with_generation_challenger(tmp_path, source_dir)
    record = json.loads(Canary("generation", "8", 1.0).dumps())
    (root / CANARY_FILE).write_text(json.dumps({"generation": record}))
    monkeypatch.setenv("GENOPS_MODEL_SOURCE", f"dir:{root}")
    monkeypatch.setenv("GENOPS_TORCH_THREADS", "1")
    with TestClient(_second_app()) as client:
        answer = client.post("/generate", json={"n": 2, "seed": 1})
        assert answer.status_code == 200 and answer.headers[VERSION_HEADER] == "8"
        assert answer.json()["model"]["version"] == "8"
        labelled = client.post("/generate", json={"n": 2, "label": 3})
        assert labelled.status_code == 200 and labelled.headers[VERSION_HEADER] == "3"
        served = bentoml.get_current_service().catalog.challenger("generation")

        def broken(*_args):
            raise RuntimeError("injected")

        monkeypatch.setattr(served, "sample", broken)
        rescued = client.post("/generate", json={"n": 2, "seed": 1})
        assert rescued.status_code == 200 and rescued.headers[VERSION_HEADER] == "3"
    from serving.canary import canary_metrics

    fallbacks = canary_metrics()["requests"].labels("generation", "8", "canary", "fallback")
    assert fallbacks._value.get() >= 1


def test_generation_requests_are_shadowed_on_the_generation_challenger(
    tmp_path, source_dir, monkeypatch
):
    """In process, shadow share 1: a champion /generate is re-run on the challenger (v8) with
    the same arguments, outside the answer; the anomaly champion scores both sample sets."""
    import time

    from tests.serving.test_asgi import TestClient, _second_app

    root = _with_generation_challenger(tmp_path, source_dir)
    monkeypatch.setenv("GENOPS_MODEL_SOURCE", f"dir:{root}")
    monkeypatch.setenv("GENOPS_TORCH_THREADS", "1")
    monkeypatch.setenv("GENOPS_SHADOW_SHARE", "1")
    with TestClient(_second_app()) as client:
        answer = client.post("/generate", json={"n": 6, "seed": 2})
        assert answer.status_code == 200 and answer.json()["model"]["version"] == "3"
        deadline, evidence = time.monotonic() + 20, {}
        while time.monotonic() < deadline:
            found = client.get("/metadata").json()["shadow"]["challengers"]
            evidence = next((e for e in found if e["task"] == "generation"), {})
            if evidence.get("requests"):
                break
            time.sleep(0.05)
        # a label the unconditional challenger cannot take: not shadowed
        assert client.post("/generate", json={"n": 2, "label": 1}).status_code == 200
    assert (evidence["version"], evidence["requests"], evidence["errors"]) == ("8", 1, 0)
    assert evidence["images"] == 6 and evidence["verdict_agreement"] is None
    assert 0.0 <= evidence["flagged_rate"] <= 1.0
    assert 0.0 <= evidence["champion_flagged_rate"] <= 1.0
