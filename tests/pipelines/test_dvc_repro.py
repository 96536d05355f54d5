"""`dvc repro` end to end on a tiny config: every stage runs once, a rerun does no work, and a
change to one family's parameter invalidates only that family's stages (+ register, bento)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.pipelines.test_flows import TINY_PARAMS, make_project

ROOT = Path(__file__).resolve().parents[2]


def _repro(root: Path, env: dict) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_repro_runs_once_then_nothing_and_only_what_changed(tmp_path):
    root = make_project(tmp_path / "proj", TINY_PARAMS)
    for name in ("models", "pipelines", "serving"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    env = {
        **os.environ,
        "GENOPS_ROOT": str(root),
        "BENTOML_HOME": str(tmp_path / "bentoml"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(root),
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    first = _repro(root, env)
    stages = ["validate", "judge", "train@gan", "evaluate@diffusion", "register", "bento"]
    assert all(f"Running stage '{s}'" in first for s in stages), first[-2000:]
    assert json.loads((root / "reports" / "bento.json").read_text())["bento"].startswith("genops:")

    second = _repro(root, env)
    assert "Running stage" not in second and "up to date" in second

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["gan"]["train"] = {"steps": 9}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    third = _repro(root, env)
    ran = {line.split("'")[1] for line in third.splitlines() if line.startswith("Running stage")}
    assert {"train@gan", "evaluate@gan"} <= ran, third[-2000:]
    untouched = {
        "validate",
        "judge",
        "train@vae",
        "evaluate@vae",
        "train@diffusion",
        "evaluate@autoencoder",
    }
    assert not ran & untouched, ran
