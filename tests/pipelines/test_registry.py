"""The promotion gate and rollback against a real (temporary) MLflow SQLite registry."""

from __future__ import annotations

import json

import pytest

from pipelines import registry, tracking


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOPS_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _candidate(tmp_path, family: str, fd: float, auroc: float, data: str = "d1") -> str:
    model_dir = tmp_path / f"m-{family}-{fd}-{data}"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"family": family}))
    run_id = tracking.log_run(
        f"eval-{family}",
        params={"family": family},
        tags={"family": family, "data_version": data},
        metrics={"fd_judge": fd},
        artifacts={"model": model_dir},
    )
    task = registry.TASKS["generation"]
    return registry.register_version(
        task.registered_model,
        run_id,
        "model",
        {
            "family": family,
            "data_version": data,
            "metric.fd_judge": fd,
            "metric.anomaly_auroc_mean": auroc,
        },
    )


def test_gate_promotes_first_then_only_better_candidates(store):
    task = registry.TASKS["generation"]
    v1 = _candidate(store, "vae", 20.0, 0.9)
    first = registry.gate(task, v1, "vae", {"fd_judge": 20.0}, "d1", margin=0.5)
    assert first.promoted and first.reason == "no champion yet"
    assert str(registry.champion(task).version) == v1

    v2 = _candidate(store, "gan", 19.8, 0.8)  # better, but not by the margin
    worse = registry.gate(task, v2, "gan", {"fd_judge": 19.8}, "d1", margin=0.5)
    assert not worse.promoted and worse.champion_metric == 20.0
    assert str(registry.champion(task).version) == v1, "a failed promotion keeps the champion"

    v3 = _candidate(store, "diffusion", 5.0, 0.95)
    better = registry.gate(task, v3, "diffusion", {"fd_judge": 5.0}, "d1", margin=0.5)
    assert better.promoted and str(registry.champion(task).version) == v3

    from mlflow.tracking import MlflowClient

    tags = MlflowClient().get_model_version(task.registered_model, v2).tags
    assert tags["promotion.decision"] == "rejected" and "margin 0.5" in tags["promotion.reason"]
    state = registry.registry_state()
    assert state["generation"]["family"] == "diffusion" and state["anomaly"] is None

    previous = registry.rollback("generation", v1)
    assert previous == v3 and str(registry.champion(task).version) == v1


def test_gate_needs_the_same_data_version(store):
    task = registry.TASKS["generation"]
    v1 = _candidate(store, "vae", 20.0, 0.9, data="old")
    registry.gate(task, v1, "vae", {"fd_judge": 20.0}, "old", margin=0.0)
    v2 = _candidate(store, "gan", 1.0, 0.9, data="new")
    kept = registry.gate(task, v2, "gan", {"fd_judge": 1.0}, "new", margin=0.0)
    assert not kept.promoted and "another data version" in kept.reason
    v3 = _candidate(store, "gan", 1.0, 0.9, data="new")
    moved = registry.gate(
        task,
        v3,
        "gan",
        {"fd_judge": 1.0},
        "new",
        margin=0.0,
        reevaluate=lambda version: {"fd_judge": 30.0},
    )
    assert moved.promoted and moved.champion_metric == 30.0
