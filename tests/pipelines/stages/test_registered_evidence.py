"""The gate reuses a champion's logged evidence only when it is paired with the challenger's:
evidence logged before a held-out kind was added is measured again, never compared unpaired."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from models.spec import Tag
from pipelines.evaluation.paired import Evidence
from pipelines.stages import evaluate


def _evidence(kinds: list[str], shift: float = 0.0) -> Evidence:
    rng = np.random.default_rng(len(kinds))
    return Evidence(
        np.zeros((4, 2)), np.zeros((4, 2)), rng.normal(0, 1, 50),
        rng.normal(2, 1, len(kinds) * 5) + shift, np.repeat(kinds, 5),
    )  # fmt: skip


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A champion whose logged evidence predates the held-out kind `heldout/greek`; measuring
    it again gives evidence on today's items."""
    older = ["noise", "heldout/letters"]
    logged_dir = tmp_path / "logged"
    logged_dir.mkdir()
    logged = _evidence(older).save(logged_dir)
    measured = []

    def measure(params, model, data_dir, judge_dir, out: Path) -> None:
        measured.append(model)
        out.mkdir(parents=True)
        _evidence([*older, "heldout/greek"], shift=0.5).save(out)

    monkeypatch.setattr(evaluate, "data_version", lambda data_dir: "d1")
    monkeypatch.setattr(evaluate, "judge_version", lambda judge_dir: "j1")
    monkeypatch.setattr("mlflow.artifacts.download_artifacts", lambda **kw: str(logged))
    monkeypatch.setattr(evaluate, "download_registered", lambda mv, dst: "champion-model")
    monkeypatch.setattr(evaluate, "measure", measure)
    version = SimpleNamespace(name="genops-anomaly", version="1", run_id="r1",
                              tags={Tag.DATA_VERSION: "d1", Tag.JUDGE_VERSION: "j1"})  # fmt: skip
    return SimpleNamespace(version=version, older=older, measured=measured)


def test_paired_logged_evidence_is_reused(registry):
    challenger = _evidence(registry.older, shift=1.0)  # same items, another model
    ev, how = evaluate.registered_evidence({}, registry.version, Path("d"), Path("j"), challenger)
    assert how == "logged" and registry.measured == []
    challenger.check_paired_with(ev)


def test_evidence_logged_on_other_items_is_measured_again(registry):
    challenger = _evidence([*registry.older, "heldout/greek"], shift=1.0)
    with pytest.raises(ValueError, match="not paired"):  # what the gate would have hit
        challenger.check_paired_with(_evidence(registry.older))
    ev, how = evaluate.registered_evidence({}, registry.version, Path("d"), Path("j"), challenger)
    assert how == "re-measured" and registry.measured == ["champion-model"]
    challenger.check_paired_with(ev)
    assert "heldout/greek" in set(ev.suite_kinds)
