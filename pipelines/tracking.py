"""MLflow tracking with embedded defaults: SQLite + a local artifact store inside the project.

Any `MLFLOW_TRACKING_URI` (e.g. a team tracking server) is honoured. SQLite has one writer, so
every write from this project goes through `write_lock()` (a file lock), and the experiment is
created once, before any fan-out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models import spec
from models.spec import project_root, tracking_uri  # the one URI rule, also for our callers

EXPERIMENT = "genops"
STATE_DIR = spec.MLFLOW_STATE_DIR


def artifact_location(root: Path | None = None) -> str:
    return (project_root(root) / STATE_DIR / "artifacts").as_uri()


@contextlib.contextmanager
def write_lock(root: Path | None = None) -> Iterator[None]:
    """Serialize MLflow writes across this project's processes (SQLite allows one writer)."""
    from filelock import FileLock

    path = project_root(root) / STATE_DIR / "write.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=600):
        yield


def setup(root: Path | None = None) -> str:
    """Point MLflow at the store and create the experiment once; return the experiment id."""
    import mlflow

    # the embedded store's folder: SQLite creates the database file, not its folder
    (project_root(root) / STATE_DIR).mkdir(parents=True, exist_ok=True)
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with write_lock(root):
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            location = artifact_location(root) if spec.uses_embedded_store() else None
            return mlflow.create_experiment(EXPERIMENT, artifact_location=location)
        return experiment.experiment_id


def git_commit(root: Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(root),
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=project_root(root),
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def log_run(
    run_name: str,
    *,
    params: dict[str, Any],
    tags: dict[str, str],
    history: list[dict[str, float]] | None = None,
    metrics: dict[str, float] | None = None,
    artifacts: dict[str, Path] | None = None,
    root: Path | None = None,
) -> str:
    """Log one finished job as an MLflow run, in one locked write; return the run id.

    `history` rows carry a "step" and per-step values; `artifacts` maps an artifact path
    in the run to a local file or folder.
    """
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from models.spec import mlflow_client

    experiment_id = setup(root)
    client = mlflow_client(tracking_uri(root))
    flat = {k: str(v)[:6000] for k, v in flatten(params).items()}
    rows, now = [], int(time.time() * 1000)
    for row in history or []:
        step = int(row.get("step", 0))
        rows += [
            Metric(k, float(v), now, step)
            for k, v in row.items()
            if k != "step" and isinstance(v, int | float)
        ]
    rows += [
        Metric(k, float(v), now, 0)
        for k, v in flatten(metrics or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    with write_lock(root):
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in flat.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        for start in range(0, len(rows), 900):
            client.log_batch(run_id, metrics=rows[start : start + 900])
        for dest, path in (artifacts or {}).items():
            path = Path(path)
            if path.is_dir():
                client.log_artifacts(run_id, str(path), dest)
            elif path.is_file():
                client.log_artifact(run_id, str(path), dest or None)
        client.set_terminated(run_id)
    mlflow.set_tracking_uri(tracking_uri(root))
    return run_id
