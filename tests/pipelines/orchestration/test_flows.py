"""The Prefect flow and its deployment, against a real temporary Prefect API server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.data.dataset import build_subset, labels_path, load_split, write_idx
from pipelines.data.versioning import dvc

ROOT = Path(__file__).resolve().parents[3]


def make_project(root: Path, params_overrides: dict | None = None, corrupt: bool = False) -> Path:
    """A real DVC project in `root`: git + dvc init, the code and dvc.yaml, data/, a local
    remote, tiny params."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("models", "pipelines", "serving"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    (root / "metrics").mkdir()  # the committed baselines and reference results: deps of `register`
    for name in ("baselines.json", "reference_detectors.json"):
        shutil.copy(ROOT / "metrics" / name, root / "metrics" / name)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc("init", "-q", cwd=root)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {**params["data"], "source": "mnist-5k"}  # the data built below
    params |= params_overrides or {}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    build_subset(root / "data")
    if corrupt:
        _, labels = load_split(root / "data", "train")
        labels = labels.copy()
        labels[:4] = 11
        write_idx(labels_path(root / "data", "train"), labels)
    dvc("add", "-q", "data", cwd=root)
    dvc("remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote"), cwd=root)
    dvc("push", "-q", cwd=root)
    return root


def test_validation_failure_stops_the_flow_before_training(prefect_api, tmp_path, monkeypatch):
    from pipelines.errors import DataValidationFailed
    from pipelines.orchestration.pipeline_flow import pipeline

    root = make_project(tmp_path / "proj", corrupt=True)
    monkeypatch.setenv("GENOPS_ROOT", str(root))
    with pytest.raises(DataValidationFailed) as err:
        pipeline(root=str(root), build_bento=False)
    assert "[train] expect_column_values_to_be_between(label)" in str(err.value)
    assert not (root / "artifacts").exists(), "nothing may be trained after a failed gate"


def test_deployment_registers_with_cron_schedule(prefect_api, tmp_path):
    import asyncio

    from prefect.client.orchestration import get_client

    from pipelines.orchestration.pipeline_flow import NIGHTLY_CRON, deployment

    deployment_id = deployment(root=str(tmp_path)).apply()

    async def read():
        async with get_client() as client:
            return await client.read_deployment(deployment_id)

    dep = asyncio.run(read())
    assert dep.name == "nightly"
    crons = [s.schedule.cron for s in dep.schedules]
    assert crons == [NIGHTLY_CRON]
    assert dep.parameters["root"] == str(tmp_path.resolve())
