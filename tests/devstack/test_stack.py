"""The scale-out stack on loopback: PostgreSQL, S3 (moto), the MLflow server, Prefect server and
two workers, started once for this module under tmp_path and stopped after it.

What SQLite cannot take (eight processes logging runs at once), the registry's gate and rollback
through the server with the artifact bytes landing in the bucket, a DVC push/pull round trip on
the same bucket, and the per-family flow runs spreading over two workers.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack import stack

ROOT = Path(__file__).resolve().parents[2]
N_PARALLEL = 8

if stack.pg_bin_dir() is None:
    pytest.skip(
        f"PostgreSQL server binaries not found: {stack.INSTALL_HINT}", allow_module_level=True
    )


@contextlib.contextmanager
def _client_env(env: dict[str, str], root: Path):
    """The stack's client settings in os.environ (and MLflow's process-wide URIs), restored after:
    `mlflow.set_tracking_uri` writes MLFLOW_TRACKING_URI into os.environ itself."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    keys = [*env, "GENOPS_ROOT", "MLFLOW_REGISTRY_URI"]
    saved_env = {k: os.environ.get(k) for k in keys}
    saved_uris = tracking_utils._tracking_uri, registry_utils._registry_uri
    os.environ.update(env | {"GENOPS_ROOT": str(root)})
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uris[0])
        registry_utils._registry_uri = saved_uris[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stack")
    cfg = stack.StackConfig(state_dir=folder / "state", mlflow_workers=1, orchestrator=False)
    started = time.perf_counter()
    with stack.running(cfg, project_root=folder) as state:
        print(f"\nstack up in {time.perf_counter() - started:.1f} s: {json.dumps(state['env'])}")
        with _client_env(state["env"], folder):
            yield state
    assert not (Path(cfg.state_dir) / stack.STATE_FILE).exists()
    for pid in state["pids"] + [state["postgres"]["pid"]]:
        assert not stack._alive(pid), f"process {pid} outlived stack.down"


def _s3(state):
    import boto3

    return boto3.client("s3", endpoint_url=state["s3"]["endpoint"], **stack._boto_credentials())


def _objects(state, prefix: str) -> dict[str, bytes]:
    s3 = _s3(state)
    listing = s3.list_objects_v2(Bucket=stack.BUCKET, Prefix=prefix).get("Contents", [])
    return {
        o["Key"]: s3.get_object(Bucket=stack.BUCKET, Key=o["Key"])["Body"].read() for o in listing
    }


# ---- MLflow on PostgreSQL + S3 ----------------------------------------------------------------
def _log_one(index: int, experiment_id: str, batch: str, barrier, out) -> None:
    import mlflow

    barrier.wait(timeout=120)  # every process starts writing at the same moment
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"parallel-{index}") as run:
        mlflow.set_tag("batch", batch)
        mlflow.log_params({"index": index, "lr": 1e-3 * (index + 1)})
        for step in range(20):
            mlflow.log_metric("loss", 1.0 / (step + 1 + index), step=step)
        mlflow.log_text(f"run {index}", "notes/run.txt")
    out.put((index, run.info.run_id))


def test_parallel_processes_log_runs_at_once_without_loss(live):
    """8 processes log a run each at the same moment: 8 finished runs, every param, every step."""
    from models.spec import mlflow_client
    from pipelines import tracking

    experiment_id = tracking.setup()  # once, before the fan-out
    batch = f"b{time.time_ns()}"
    ctx = multiprocessing.get_context("fork")  # MLflow keys its HTTP sessions by pid
    barrier, out = ctx.Barrier(N_PARALLEL), ctx.Queue()
    procs = [
        ctx.Process(target=_log_one, args=(i, experiment_id, batch, barrier, out))
        for i in range(N_PARALLEL)
    ]
    started = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    seconds = time.perf_counter() - started
    assert [p.exitcode for p in procs] == [0] * N_PARALLEL, "a logging process failed"
    reported = dict(out.get(timeout=5) for _ in range(N_PARALLEL))

    client = mlflow_client()
    runs = client.search_runs([experiment_id], f"tags.batch = '{batch}'", max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(reported.values())
    for r in runs:
        index = int(r.data.params["index"])
        assert r.info.status == "FINISHED" and reported[index] == r.info.run_id
        history = client.get_metric_history(r.info.run_id, "loss")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(20))
    notes = [k for k in _objects(live, "mlflow-artifacts/") if k.endswith("notes/run.txt")]
    assert len([k for k in notes if any(rid in k for rid in reported.values())]) == N_PARALLEL
    print(f"{N_PARALLEL} processes x (1 run, 2 params, 20 steps, 1 artifact): {seconds:.1f} s")


def test_registry_gate_rollback_and_artifacts_through_the_server(live, tmp_path):
    """register_candidate / gate / rollback from pipelines.registry.client against the server; the
    registered bundle downloads through the server and its bytes are the object in the bucket."""
    import mlflow

    from models.spec import ALIAS, REGISTERED_ARTIFACT_PATH, TASKS, Tag, mlflow_client
    from pipelines import tracking
    from pipelines.registry import client as registry

    task = TASKS["generation"]
    experiment_id = tracking.setup()
    payloads, versions = {}, {}
    for family, fd in (("vae", 10.0), ("gan", 5.0)):
        payload = os.urandom(4096)
        bundle = tmp_path / family / "weights.bin"
        bundle.parent.mkdir()
        bundle.write_bytes(payload)
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate-{family}") as run:
            mlflow.log_artifact(str(bundle), artifact_path=REGISTERED_ARTIFACT_PATH)
        lineage = {Tag.FAMILY: family, Tag.DATA_VERSION: "data-1", Tag.WEIGHTS_SHA256: family}
        version = registry.register_candidate(
            task.registered_model, {"run_id": run.info.run_id, **lineage}, {task.metric: fd}
        )
        decision = registry.gate(task, version, family, {task.metric: fd}, "data-1", margin=0.1)
        assert decision.promoted, decision.reason
        payloads[family], versions[family] = payload, version
    assert (
        registry.register_candidate(  # same weights on the same data: the same version
            task.registered_model,
            {"run_id": run.info.run_id, **lineage},
            {task.metric: 5.0},
        )
        == versions["gan"]
    )

    client = mlflow_client()
    champion = client.get_model_version_by_alias(task.registered_model, ALIAS)
    assert champion.version == versions["gan"]
    assert registry.rollback(task.name, versions["vae"]) == versions["gan"]
    champion = client.get_model_version_by_alias(task.registered_model, ALIAS)
    assert champion.version == versions["vae"]
    assert [e["event"] for e in registry.history() if e["task"] == task.name] == [
        "promoted",
        "promoted",
        "rollback",
    ]

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{task.registered_model}@{ALIAS}", dst_path=str(tmp_path / "dl")
    )
    assert (Path(local) / "weights.bin").read_bytes() == payloads["vae"]
    in_bucket = {
        k: v for k, v in _objects(live, "mlflow-artifacts/").items() if k.endswith("weights.bin")
    }
    assert sorted(in_bucket.values()) == sorted(payloads.values())  # proxied: bytes in S3


# ---- DVC remote on the same bucket ------------------------------------------------------------
def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def _git(*args: str, cwd: Path) -> str:
    return _run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args], cwd)


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def test_dvc_push_then_pull_into_an_empty_clone(live, tmp_path):
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    (repo / "data").mkdir(parents=True)
    files = {f"data/part-{i}.bin": os.urandom(2048 + i) for i in range(3)}
    for name, payload in files.items():
        (repo / name).write_bytes(payload)
    _git("init", "-q", cwd=repo)
    _dvc("init", "-q", cwd=repo)
    _dvc("add", "-q", "data", cwd=repo)
    _dvc("remote", "add", "-d", "s3", f"s3://{stack.BUCKET}/dvc-store", cwd=repo)
    _dvc("remote", "modify", "s3", "endpointurl", live["s3"]["endpoint"], cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-q", "-m", "data", cwd=repo)
    _dvc("push", "-q", cwd=repo)
    assert len(_objects(live, "dvc-store/")) >= len(files)  # the files and the directory listing

    _git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / "data").exists()
    _dvc("pull", "-q", cwd=clone)
    for name, payload in files.items():
        assert (clone / name).read_bytes() == payload


# ---- Prefect: work pool, two workers, one flow run per family --------------------------------
DVC_YAML = """
vars:
  - families: [autoencoder, vae]
stages:
  validate:
    cmd: python -c "open('validated', 'w').write('ok')"
    deps: [data]
    outs: [validated]
  train:
    foreach: ${families}
    do:
      cmd: python -c "import os, time; time.sleep(2); open('trained-${item}', 'w').write(os.environ['PREFECT__FLOW_RUN_ID'])"
      deps: [validated]
      outs:
        - trained-${item}
  register:
    cmd: python -c "open('registered', 'w').write(open('trained-autoencoder').read() + open('trained-vae').read())"
    deps: [trained-autoencoder, trained-vae]
    outs: [registered]
"""  # noqa: E501


def _pool_project(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in ("models", "pipelines"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "data").mkdir()
    (root / "data" / "x.txt").write_text("tiny")
    _git("init", "-q", cwd=root)
    _dvc("init", "-q", cwd=root)
    _dvc("add", "-q", "data", cwd=root)
    _dvc("remote", "add", "-d", "local", str(root.parent / "remote"), cwd=root)
    _dvc("push", "-q", cwd=root)
    return root


def test_family_runs_spread_over_the_two_workers(live, tmp_path):
    """The pipeline with a pool: validate in the parent, one child flow run per family on the
    pool's workers (one each: `--limit 1`), then register after both."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.orchestration import pipeline_flow as flows
    from tests.conftest import drain_prefect_workers

    root = _pool_project(tmp_path / "proj")
    with temporary_settings({PREFECT_API_URL: live["prefect"]["api_url"]}):
        try:
            ids = flows.deploy(live["prefect"]["pool"], root=str(root))
            started = time.perf_counter()
            result = flows.pipeline(root=str(root), build_bento=False, pool=True)
            seconds = time.perf_counter() - started
            with get_client(sync_client=True) as client:
                nightly = client.read_deployment(ids["nightly"])
                family = client.read_deployment(ids["family"])
        finally:  # while the stack's API is up: later tests' flows must not queue behind it
            drain_prefect_workers()
    assert nightly.work_pool_name == family.work_pool_name == live["prefect"]["pool"]
    assert nightly.schedules and nightly.schedules[0].schedule.cron == flows.NIGHTLY_CRON
    assert family.work_queue_name == flows.FAMILY_QUEUE
    assert [r["stage"] for r in result["stages"]] == ["validate", "register"]
    runs = {r["family"]: r for r in result["family_runs"]}
    assert sorted(runs) == ["autoencoder", "vae"]
    assert {r["state"] for r in runs.values()} == {"COMPLETED"}
    for name, run in runs.items():  # each stage ran inside its family's child flow run
        assert (root / f"trained-{name}").read_text() == run["flow_run_id"]
    logs = {w["name"]: Path(w["log"]).read_text() for w in live["workers"]}
    picked = {  # a worker may try a run another one claimed first: the server aborts that try
        f: [w for w, log in logs.items() if r["flow_run_id"] in log
            and f"Aborted submission of flow run '{r['flow_run_id']}'" not in log]
        for f, r in runs.items()
    }  # fmt: skip
    assert sorted(w for ws in picked.values() for w in ws) == ["worker-1", "worker-2"], picked
    print(f"pipeline on the pool (2 families on 2 workers): {seconds:.1f} s; picked by {picked}")
