"""End to end: bundles -> BentoML model store -> `bentoml build` -> serve the Bento (slow)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.serving.conftest import REPO, Server


@pytest.mark.slow
def test_built_bento_serves_from_its_own_model_store(source_dir, tmp_path):
    env = {
        **os.environ,
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": str(REPO),
    }
    for command in (["import-dir", str(source_dir)], ["build"]):
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "bento", *command],  # `genops bento ...`
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
    bento_tag = done.stdout.strip().splitlines()[-1]
    assert bento_tag.startswith("genops:")
    # run outside the repository with an unreachable MLflow: models come from the Bento's store
    # (the code too, though the editable install would also provide it on this machine)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = Server(
        None,
        tmp_path,
        target=bento_tag,
        cwd=elsewhere,
        extra_env={"PYTHONPATH": "", "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
    )
    try:
        server.wait_ready()
        meta = server.client.get("/metadata").json()
        assert meta["source"] == "bento:genops-models:latest" and meta["ready"]
        scored = server.client.post("/score", json={"images": [[0.5] * 784]})
        assert scored.status_code == 200 and scored.json()["model"]["name"] == "genops-anomaly"
    finally:
        server.stop()
