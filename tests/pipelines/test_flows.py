"""The Prefect flow and its deployment, against a real temporary Prefect API server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.data import build_default, labels_path, load_split, write_idx

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _dvc(root: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True,
                   capture_output=True)


def make_project(root: Path, params_overrides: dict | None = None, corrupt: bool = False) -> Path:
    """A real DVC project in `root`: git + dvc init, data/, a local remote, tiny params."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params |= params_overrides or {}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    build_default(root / "data")
    if corrupt:
        _, labels = load_split(root / "data", "train")
        labels = labels.copy()
        labels[:4] = 11
        write_idx(labels_path(root / "data", "train"), labels)
    _dvc(root, "add", "-q", "data")
    _dvc(root, "remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote"))
    _dvc(root, "push", "-q")
    return root


def test_validation_failure_stops_the_flow_before_training(prefect_api, tmp_path, monkeypatch):
    from pipelines.flows import DataValidationFailed, pipeline

    root = make_project(tmp_path / "proj", corrupt=True)
    monkeypatch.setenv("GENOPS_ROOT", str(root))
    with pytest.raises(DataValidationFailed) as err:
        pipeline(root=str(root), build_bento=False)
    assert "[train] expect_column_values_to_be_between(label)" in str(err.value)
    assert not (root / "artifacts").exists(), "nothing may be trained after a failed gate"


def test_deployment_registers_with_cron_schedule(prefect_api, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client

    from pipelines.flows import NIGHTLY_CRON, deployment

    deployment_id = deployment(root=str(tmp_path)).apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    dep = asyncio.run(read())
    assert dep.name == "nightly"
    crons = [s.schedule.cron for s in dep.schedules]
    assert crons == [NIGHTLY_CRON]
    assert dep.parameters["root"] == str(tmp_path.resolve())


def test_transient_classification():
    import sqlite3

    from pipelines.flows import DataValidationFailed, is_transient

    assert is_transient(TimeoutError()) and is_transient(OSError("disk"))
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert not is_transient(DataValidationFailed("bad data"))
    assert not is_transient(ValueError("bad config"))
