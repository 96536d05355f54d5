"""The promotion gate and rollback against a real (temporary) MLflow SQLite registry."""

from __future__ import annotations

import json

import pytest

from pipelines import tracking
from pipelines.evaluation.paired import PairedInterval
from pipelines.registry import client as registry


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOPS_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _candidate(
    tmp_path, family: str, fd: float, auroc: float, data: str = "d1", task: str = "generation"
) -> str:
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
    return registry.register_version(
        registry.TASKS[task].registered_model,
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

    from models.spec import mlflow_client

    tags = mlflow_client().get_model_version(task.registered_model, v2).tags
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
    interval = PairedInterval("fd_judge", 1.0, 30.0, 29.0, 25.0, 33.0, 0.95, 200)
    moved = registry.gate(
        task, v3, "gan", {"fd_judge": 1.0}, "new", margin=0.0,
        compare=lambda version: (interval, "re-measured"), judge_version="j1",
    )  # fmt: skip
    assert moved.promoted and moved.champion_metric == 30.0
    assert moved.champion_data_version == "old" and moved.data_version == "new"
    assert moved.method == "paired-bootstrap" and moved.interval["ci_low"] == 25.0


def test_paired_gate_needs_the_interval_to_clear_the_margin(store):
    task = registry.TASKS["anomaly"]
    v1 = _candidate(store, "vae", 20.0, 0.90, task="anomaly")
    registry.gate(task, v1, "vae", {"anomaly_auroc_mean": 0.90}, "d1", margin=0.002)
    # better on the point estimate, but the interval reaches below the margin: kept
    v2 = _candidate(store, "gan", 20.0, 0.95, task="anomaly")
    wide = PairedInterval("anomaly_auroc_mean", 0.95, 0.90, 0.05, -0.01, 0.11, 0.95, 200)
    kept = registry.gate(task, v2, "gan", {"anomaly_auroc_mean": 0.95}, "d2", margin=0.002,
                         compare=lambda mv: (wide, "re-measured"))  # fmt: skip
    assert not kept.promoted and "does not clear margin" in kept.reason
    assert str(registry.champion(task).version) == v1
    v3 = _candidate(store, "diffusion", 20.0, 0.97, task="anomaly")
    tight = PairedInterval("anomaly_auroc_mean", 0.97, 0.90, 0.07, 0.05, 0.09, 0.95, 200)
    won = registry.gate(task, v3, "diffusion", {"anomaly_auroc_mean": 0.97}, "d2",
                        margin=0.002, compare=lambda mv: (tight, "logged"))  # fmt: skip
    assert won.promoted and str(registry.champion(task).version) == v3
    registry.rollback("anomaly", v1)
    events = registry.history()
    assert [e["event"] for e in events] == ["promoted", "rejected", "promoted", "rollback"]
    assert events[1]["ci_low"] == "-0.01" and events[1]["champion_data_version"] == "d1"
    from pipelines.registry.reports import history_markdown

    text = history_markdown(events)
    assert "rollback" in text and "[+0.05, +0.09]" in text


def test_the_challenger_alias_beside_the_champion(store):
    """`genops challenge`: a version made challenger is listed beside the champion and in the
    history; the champion itself is refused; promotion or rollback to the challenger's version
    ends its challenge; --clear removes it."""
    from click.testing import CliRunner

    from pipelines.cli import main
    from serving.sources import registry_versions

    task = registry.TASKS["anomaly"]
    v1 = _candidate(store, "autoencoder", 40.0, 0.98, task="anomaly")
    v2 = _candidate(store, "vae", 30.0, 0.97, task="anomaly")
    registry.gate(task, v1, "autoencoder", {"anomaly_auroc_mean": 0.98}, "d1", margin=0.0)
    assert registry.challenger(task) is None

    runner = CliRunner()
    made = runner.invoke(main, ["challenge", "--task", "anomaly", "--version", v2])
    assert made.exit_code == 0 and f"challenger vnone -> v{v2}" in made.output, made.output
    assert str(registry.challenger(task).version) == v2
    assert str(registry.champion(task).version) == v1  # the champion is untouched
    state = registry.registry_state()["anomaly"]
    assert state["version"] == v1 and state["challenger"]["version"] == v2
    assert state["challenger"]["family"] == "vae"
    roles = registry_versions()
    assert str(roles["challengers/anomaly"].version) == v2 and "challengers/generation" not in roles
    assert [e["version"] for e in registry.history() if e["event"] == "challenge"] == [v2]

    itself = runner.invoke(main, ["challenge", "--task", "anomaly", "--version", v1])
    assert itself.exit_code == 2 and "is the champion" in itself.output
    missing = runner.invoke(main, ["challenge", "--task", "anomaly", "--version", "99"])
    assert missing.exit_code == 2
    both = runner.invoke(main, ["challenge", "--task", "anomaly", "--version", v2, "--clear"])
    assert both.exit_code == 2 and "exactly one" in both.output
    assert str(registry.challenger(task).version) == v2  # refusals changed nothing

    registry.rollback("anomaly", v2)  # the challenger becomes champion: its challenge ends
    assert str(registry.champion(task).version) == v2 and registry.challenger(task) is None
    registry.set_challenger("anomaly", v1)
    cleared = runner.invoke(main, ["challenge", "--task", "anomaly", "--clear"])
    assert cleared.exit_code == 0 and f"challenger v{v1} -> none" in cleared.output
    assert registry.challenger(task) is None and "challengers/anomaly" not in registry_versions()
    assert registry.registry_state()["anomaly"]["challenger"] is None


def test_the_gate_can_make_a_passing_candidate_the_challenger(store):
    """registry.promote_to = challenger: the first version is still made champion; a better
    one becomes the challenger (the champion keeps serving); a worse one moves nothing."""
    task = registry.TASKS["anomaly"]
    v1, v2, v3 = (_candidate(store, f, 40.0, a, task="anomaly")
                  for f, a in (("autoencoder", 0.90), ("vae", 0.95), ("gan", 0.80)))  # fmt: skip

    def gate(version: str, family: str, auroc: float) -> registry.Decision:
        return registry.gate(task, version, family, {"anomaly_auroc_mean": auroc}, "d1",
                             margin=0.002, promote_to="challenger")  # fmt: skip

    assert gate(v1, "autoencoder", 0.90).promoted
    won = gate(v2, "vae", 0.95)
    assert not won.promoted and won.challenged and "made challenger" in won.reason
    assert str(registry.champion(task).version) == v1
    assert str(registry.challenger(task).version) == v2
    lost = gate(v3, "gan", 0.80)
    assert not lost.promoted and not lost.challenged
    assert str(registry.challenger(task).version) == v2
    events = [(e["event"], e["version"]) for e in registry.history() if e["task"] == "anomaly"]
    assert ("challenger", v2) in events and ("rejected", v3) in events
    with pytest.raises(ValueError, match="promote_to"):
        registry.gate(task, v3, "gan", {"anomaly_auroc_mean": 0.8}, "d1", 0.0, promote_to="x")
