"""MLflow registry -> served bundles: the `mlflow` dev source and `genops bento import-models`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.build import import_from_registry
from serving.bundle import read_meta
from serving.catalog import load_catalog
from serving.sources import DirSource, MlflowSource
from tests.serving.conftest import REPO


@pytest.fixture(scope="module")
def registry(tmp_path_factory, source_dir):
    """A SQLite registry laid out as pipelines/registry/client.py writes it."""
    from models.spec import mlflow_client

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow_client(uri)
    experiment = client.create_experiment("genops", artifact_location=(root / "art").as_uri())

    def register(name: str, bundle: Path, alias: bool = False, **tags: str) -> str:
        run = client.create_run(experiment)
        client.log_artifacts(run.info.run_id, str(bundle), "model")
        client.set_terminated(run.info.run_id)
        if not client.search_registered_models(f"name='{name}'"):
            client.create_registered_model(name)
        meta = read_meta(bundle)
        tags = {
            "family": meta.family,
            "weights_sha256": meta.weights_sha256,
            "data_version": "md5:reg",
            "git_commit": "abc123",
            "params_hash": "p1",
            "metric.fd_judge": "11.5",
            "metric.anomaly_auroc_mean": "0.93",
            **tags,
        }
        version = client.create_model_version(
            name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags=tags
        ).version
        if alias:
            client.set_registered_model_alias(name, "champion", version)
        return str(version)

    register("genops-generation", source_dir / "generation", alias=True)
    register("genops-anomaly", source_dir / "anomaly", alias=True)
    register("genops-autoencoder", source_dir / "families" / "autoencoder")
    register("genops-autoencoder", source_dir / "families" / "autoencoder", data_version="md5:v2")
    return uri, register


def test_mlflow_source_serves_champions_and_latest_family(registry, tmp_path):
    uri, _ = registry
    catalog = load_catalog(MlflowSource(uri, cache_dir=tmp_path / "cache"))
    assert catalog.ready, catalog.errors
    family = catalog.families["autoencoder"].meta
    assert (family.name, family.version, family.data_version) == (
        "genops-autoencoder",
        "2",
        "md5:v2",
    )
    anomaly = catalog.roles["anomaly"].meta
    assert anomaly.metrics == {"fd_judge": 11.5, "anomaly_auroc_mean": 0.93}
    assert anomaly.tasks == ("anomaly",) and anomaly.git_commit == "abc123"


def test_import_models_cli_fills_the_bentoml_store(registry, tmp_path):
    uri, _ = registry
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bento", "import-models", "--tracking-uri", uri],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    name, version = done.stdout.strip().splitlines()[-1].split(":")
    stored = tmp_path / "bentoml" / "models" / name / version
    catalog = load_catalog(DirSource(stored))
    assert name == "genops-models" and catalog.ready, catalog.errors
    assert catalog.families["autoencoder"].meta.version == "2"
    assert catalog.roles["generation"].meta.name == "genops-generation"


def test_a_champion_with_a_wrong_checksum_is_refused(registry, source_dir, tmp_path):
    uri, register = registry
    register("genops-anomaly", source_dir / "anomaly", alias=True, weights_sha256="d" * 64)
    with pytest.raises(ValueError, match="checksum mismatch"):
        import_from_registry(uri)
    catalog = load_catalog(MlflowSource(uri, cache_dir=tmp_path / "cache"))
    assert not catalog.ready and "checksum mismatch" in catalog.errors["anomaly"]
