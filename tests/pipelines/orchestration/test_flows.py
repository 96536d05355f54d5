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
    (root / "metrics").mkdir()  # the committed baselines results: a dep of `register`
    shutil.copy(ROOT / "metrics" / "baselines.json", root / "metrics" / "baselines.json")
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
    from pipelines.orchestration.pipeline_flow import DataValidationFailed, pipeline

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


def test_transient_classification():
    import sqlite3

    from pipelines.orchestration.pipeline_flow import (
        DataValidationFailed,
        StageFailed,
        TransientStageError,
        is_transient,
    )

    assert is_transient(TimeoutError()) and is_transient(ConnectionError("remote"))
    assert is_transient(sqlite3.OperationalError("database is locked"))
    assert is_transient(TransientStageError("Unable to acquire lock"))
    assert not is_transient(DataValidationFailed("bad data"))
    assert not is_transient(ValueError("bad config"))
    assert not is_transient(FileNotFoundError("model/train_metrics.json")), "a missing file"
    assert not is_transient(StageFailed("a bug"))


TINY_PARAMS = {
    "train": {
        "steps": 8,
        "batch_size": 32,
        "val_every": 4,
        "checkpoint_every": 4,
        "num_threads": 1,
        "log_every": 4,
        "progress": False,
        "seed": 0,
    },
    "autoencoder": {"model": {"arch": "mlp", "hidden_dims": [32], "latent_dim": 4}},
    "vae": {
        "model": {
            "channels": [8, 16],
            "hidden_dim": 32,
            "latent_dim": 4,
            "kl_warmup_steps": 4,
            "max_iwae_k": 64,
        }
    },
    "gan": {
        "model": {
            "latent_dim": 8,
            "label_embed_dim": 4,
            "g_width": 8,
            "d_width": 8,
            "e_width": 8,
            "monitor_every": 2,
            "monitor_batch": 8,
            "encoder_start_step": 5,
            "ema_decay": 0.9,
        }
    },
    "diffusion": {
        "model": {
            "base_channels": 8,
            "channel_mults": [1, 2],
            "attention": False,
            "timesteps": 50,
            "sample_steps": 2,
            "score_timesteps": [10],
            "score_steps": 1,
            "score_draws": 1,
            "warmup_steps": 2,
            "ema_decay": 0.5,
            "bf16_autocast": False,
        }
    },
    "judge": {"epochs": 1, "max_steps": 10, "batch_size": 64, "progress": False},
    # the generation gate draws fresh samples: a small cap keeps a tiny day-2 gate quick
    "registry": {
        "margin": {"generation": 0.05, "anomaly": 0.002},
        "sequential": {"round_size": 100, "block_size": 20, "max_per_model": 300, "min_blocks": 5},
        "n_bootstrap": 50,
        "min_unseen": 20,  # a re-split of 5,000 digits leaves ~50 test digits unseen by v1
    },
    "evaluate": {
        "n_samples": 40,
        "anomaly_per_kind": 8,
        "likelihood_max_images": 16,
        "n_plot": 16,
        "sample_batch_size": 40,
    },
}
