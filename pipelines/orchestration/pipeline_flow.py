"""The whole pipeline as a Prefect 3 flow that runs the DVC stages, plus its deployments.

One pipeline definition (`dvc.yaml`), two runners: `dvc repro` and this flow. The flow pulls the
data, then runs every stage of `dvc.yaml` in dependency order as its own Prefect task
(`dvc repro --single-item <stage>`), so `dvc.lock` stays the record of what ran and both runners
skip what is up to date: a scheduled run with nothing changed does no training or evaluation,
and a run after new data reruns exactly what depends on it. The stages run one after another in
one checkout because DVC holds a repository lock while it runs; the families' training already
uses every core. Only transient failures are retried (a locked repository or database, a DVC
remote or network error); bad data, a missing file or a bug fails at once, and a data-validation
failure fails the flow before any training with the GX summary as its message. A failure is
classified by the failure class its stage command records (pipelines/errors.py), never by its
output.

    genops flow run                 # one run now, against the current Prefect API
    genops flow serve               # register the deployments and serve them

On a work pool (docs/scale-out.md): `deploy --pool NAME` registers the nightly deployment and a
per-family deployment on a process work pool, with the code taken from this checkout (no image,
no network). A run with a pool fans the per-family stages (`train@f`, `evaluate@f`) out as one
child flow run per family on the pool's `families` queue, so different workers train different
families at once; DVC releases its repository lock while a stage's command runs, and a stage
waits for the lock (`dvc --wait-for-lock`) while another one records its outputs. A child run
that crashed (its worker or machine died) is submitted once more; one that failed fails the run.

    genops flow deploy --pool genops-pool   # nightly + family deployments on a pool
    genops flow run --pool genops-pool      # one run now, families on the workers

The command line is pipelines/cli/flow.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from models.spec import ROOT_ENV, TASKS, check_family
from pipelines.errors import (
    FAILURE_RECORD_ENV,
    DataValidationFailed,
    ExitCode,
    FailureRecord,
    StageFailed,
    TransientStageError,
    read_failure,
)
from pipelines.evaluation.metric_table import Place, shown_in, task_metric
from pipelines.orchestration.deployments import (
    DEPLOYMENT,
    FAMILY_DEPLOYMENT,
    FAMILY_FLOW,
    FAMILY_QUEUE,
    NIGHTLY_CRON,
    ON_DATA_DEPLOYMENT,
    ON_DATA_INTERVAL_S,
    PIPELINE_FLOW,
)
from pipelines.orchestration.retry import TRANSIENT
from pipelines.registry.reports import promotion_markdown

CHILD_POLL_S = 2.0
PENDING_TIMEOUT_S = 300.0  # a claimed child that has not started by then is declared crashed
BENTO_STAGE = "bento"
FAILURES_DIR = Path(".genops") / "failures"  # one failure record per stage (errors.py)


def stage_names(root: Path, families: list[str] | None = None) -> list[str]:
    """The stages of `dvc.yaml` in file order (its dependency order), `foreach` expanded;
    with `families`, the per-family stages of the other families are left out."""
    spec = yaml.safe_load((Path(root) / "dvc.yaml").read_text())
    variables = {k: v for item in spec.get("vars", []) for k, v in item.items()}
    names = []
    for name, stage in spec["stages"].items():
        if "foreach" not in stage:
            names.append(name)
            continue
        items = stage["foreach"]
        if isinstance(items, str):  # "${families}"
            items = variables[items.strip("${}")]
        names += [f"{name}@{item}" for item in items if not families or item in families]
    return names


def _stage_env(root: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the `genops` and `dvc` of this environment
    env = {**os.environ, ROOT_ENV: str(root), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def stage_error(stage: str, failure: FailureRecord | None, output: str) -> Exception:
    """The exception for a failed stage, chosen by the failure class its `genops` command
    recorded; no record means DVC itself failed (or the command died): not retried."""
    tail = output[-4000:]
    if failure is None:
        return StageFailed(f"stage {stage} failed, no failure recorded by its command:\n{tail}")
    if failure.exit_code == ExitCode.INVALID_DATA:
        return DataValidationFailed(failure.message)
    if failure.exit_code == ExitCode.TRANSIENT:
        return TransientStageError(f"stage {stage} failed (transient, {failure.error}):\n{tail}")
    return StageFailed(f"stage {stage} failed ({failure.error}):\n{tail}")


@task(name="dvc-stage", task_run_name="{stage}", **TRANSIENT)
def run_stage(root: str, stage: str) -> dict[str, Any]:
    """`dvc repro --single-item <stage>`: runs the stage only when its deps or params changed.

    `dvc repro` exits 255 whatever its command's exit code was, so the failure class comes from
    the record the command writes to $GENOPS_FAILURE_RECORD (pipelines/errors.py)."""
    started = time.perf_counter()
    record = Path(root) / FAILURES_DIR / f"{stage}.json"
    record.unlink(missing_ok=True)  # a record left by an earlier attempt is not this one's
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "--single-item", stage],
        cwd=root,
        env={**_stage_env(Path(root)), FAILURE_RECORD_ENV: str(record)},
        capture_output=True,
        text=True,
    )
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise stage_error(stage, read_failure(record), output)
    ran = f"Running stage '{stage}'" in output
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return {"stage": stage, "ran": ran, "seconds": round(time.perf_counter() - started, 1)}


def _dvc_transient_errors() -> tuple[type[BaseException], ...]:
    """DVC's exception types that a retry may cure: a held lock, a failed transfer."""
    from dvc.exceptions import FileTransferError
    from dvc.lock import LockError

    return LockError, FileTransferError


@task(name="prepare-data", **TRANSIENT)
def prepare_data(root: str, rev: str | None = None, remote: str | None = None) -> str:
    """`dvc pull` data/ (at a git revision / from a named remote when given); return its version.

    DVC runs in process here, so a failure is classified by its exception type."""
    from dvc.repo import Repo

    from pipelines.data.sources import pull_or_rebuild
    from pipelines.data.versioning import DATA_DVC, data_version

    path = Path(root)
    try:
        if rev:
            Repo.get(str(path), "data", out=str(path / "data"), rev=rev, force=True)
        elif remote:
            with Repo(str(path)) as repo:
                repo.pull(targets=[str(path / DATA_DVC)], remote=remote)
        else:
            get_run_logger().info(pull_or_rebuild(path))
    except _dvc_transient_errors() as exc:
        raise TransientStageError(f"data pull failed: {exc}") from exc
    return data_version(path)


def _publish(root: Path, stages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Stage table, leaderboard and promotion decision as artifacts in the Prefect UI."""
    create_table_artifact(
        key="genops-stages", table=stages, description="DVC stages: ran or up to date"
    )
    reports = root / "reports"
    board_file, promotion_file = reports / "leaderboard.json", reports / "promotion.json"
    if not (board_file.is_file() and promotion_file.is_file()):
        return None
    board = json.loads(board_file.read_text())
    # the tasks' deciding metrics, then the leaderboard's comparison table (the metric table's)
    deciding = [task_metric(task).key for task in TASKS]
    columns = list(dict.fromkeys([*deciding, *(m.key for m in shown_in(Place.COMPARISON))]))
    rows = []
    for family, stats in board["families"].items():
        means = {c: round(stats["metrics"][c]["mean"], 4) for c in columns if c in stats["metrics"]}
        rows.append({"family": family, **means})
    create_table_artifact(
        key="genops-leaderboard", table=rows, description="leaderboard: same data, same metrics"
    )
    report = json.loads(promotion_file.read_text())
    create_markdown_artifact(
        key="genops-promotion", markdown=promotion_markdown(report), description="promotion gate"
    )
    return report


def split_stages(stages: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(before, per-family, after): the per-family stages (`name@family`) must be contiguous in
    dvc.yaml order for the families to run side by side."""
    at = [i for i, s in enumerate(stages) if "@" in s]
    if not at:
        return stages, [], []
    first, last = at[0], at[-1]
    if any("@" not in s for s in stages[first : last + 1]):
        raise ValueError(f"per-family stages are not contiguous in dvc.yaml: {stages}")
    return stages[:first], stages[first : last + 1], stages[last + 1 :]


@flow(name=FAMILY_FLOW, log_prints=True)
def family_pipeline(root: str, family: str) -> dict[str, Any]:
    """One family's stages (`train@family`, `evaluate@family`, ...), in dvc.yaml order."""
    check_family(family)
    path = Path(root).resolve()
    stages = [s for s in stage_names(path, [family]) if s.endswith(f"@{family}")]
    results = [run_stage(str(path), stage) for stage in stages]
    return {"family": family, "stages": results, "pid": os.getpid()}


def _wait_child_runs(
    run_ids: dict[str, Any], timeout_s: float | None, pending_timeout_s: float | None = None
) -> dict[str, Any]:
    """Poll the API until every child flow run is final; family -> its last FlowRun.

    A run still Pending `pending_timeout_s` after it was first seen Pending is marked Crashed
    (so it is resubmitted): a worker killed after claiming a run but before the run reached
    Running leaves it Pending for ever, and Prefect's heartbeats only start at Running.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending_since: dict[str, float] = {}
    done: dict[str, Any] = {}
    with get_client(sync_client=True) as client:
        while len(done) < len(run_ids):
            for family, run_id in run_ids.items():
                if family in done:
                    continue
                run = client.read_flow_run(run_id)
                if run.state is not None and run.state.is_final():
                    done[family] = run
                elif run.state is not None and run.state.is_pending() and pending_timeout_s:
                    first = pending_since.setdefault(family, time.monotonic())
                    if time.monotonic() - first > pending_timeout_s:
                        message = f"still Pending after {pending_timeout_s:.0f} s (worker gone?)"
                        client.set_flow_run_state(run_id, Crashed(message=message), force=True)
                        done[family] = client.read_flow_run(run_id)
                else:
                    pending_since.pop(family, None)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"family runs not finished: {sorted(set(run_ids) - set(done))}")
            if len(done) < len(run_ids):
                time.sleep(CHILD_POLL_S)
    return done


def fan_out_families(
    root: str,
    families: list[str],
    timeout_s: float | None = None,
    resubmit_crashed: int = 1,
    pending_timeout_s: float | None = PENDING_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """One child flow run of the family deployment per family, on the pool's workers; wait for
    all. A crashed child (worker or machine gone, or Pending past `pending_timeout_s`) is
    submitted again `resubmit_crashed` times; a failed one fails the parent with each
    failure's message."""
    from prefect.deployments import run_deployment

    def submit(family: str) -> Any:
        return run_deployment(
            f"{FAMILY_FLOW}/{FAMILY_DEPLOYMENT}",
            parameters={"root": root, "family": family},
            timeout=0,  # submit only: the families run at once, on whichever workers are free
            as_subflow=True,
            flow_run_name=f"{family}",
        ).id

    attempts = {f: 1 for f in families}
    runs = _wait_child_runs({f: submit(f) for f in families}, timeout_s, pending_timeout_s)
    for _ in range(resubmit_crashed):
        crashed = [f for f, run in runs.items() if run.state.is_crashed()]
        if not crashed:
            break
        get_run_logger().warning("family runs crashed, submitting again: %s", crashed)
        for f in crashed:
            attempts[f] += 1
        runs |= _wait_child_runs({f: submit(f) for f in crashed}, timeout_s, pending_timeout_s)
    results = [
        {"family": f, "flow_run_id": str(run.id), "state": run.state.type.value,
         "attempts": attempts[f], "seconds": round(run.total_run_time.total_seconds(), 1)}
        for f, run in runs.items()
    ]  # fmt: skip
    failed = {f: run.state.message for f, run in runs.items() if not run.state.is_completed()}
    if failed:
        raise StageFailed(f"family runs did not complete: {failed}")
    return results


@flow(name=PIPELINE_FLOW, log_prints=True)
def pipeline(
    root: str = ".",
    families: list[str] | None = None,
    rev: str | None = None,
    remote: str | None = None,
    build_bento: bool = True,
    pool: bool = False,
) -> dict[str, Any]:
    """Data -> the dvc.yaml stages in order (GX gate, judge, train, evaluate, register, Bento).

    With `pool`, the per-family stages run as child flow runs of the family deployment (which
    `deploy()` put on a work pool), one per family, side by side on the pool's workers."""
    path = Path(root).resolve()
    version = prepare_data(str(path), rev, remote)
    stages = [s for s in stage_names(path, families) if build_bento or s != BENTO_STAGE]
    before, per_family, after = split_stages(stages) if pool else (stages, [], [])
    results = []
    for stage in before:  # dvc.yaml order is dependency order; DVC locks the repo per run
        results.append(run_stage(str(path), stage))
    children = []
    if per_family:
        names = list(dict.fromkeys(s.split("@", 1)[1] for s in per_family))
        children = fan_out_families(str(path), names)
    for stage in after:
        results.append(run_stage(str(path), stage))
    report = _publish(path, results)
    return {
        "data_version": version,
        "stages": results,
        "family_runs": children,
        "ran": [r["stage"] for r in results if r["ran"]],
        "promotion": report,
    }


def deployment(name: str = DEPLOYMENT, cron: str = NIGHTLY_CRON, root: str = "."):
    """The nightly retrain deployment (a RunnerDeployment; `.apply()` registers it)."""
    return pipeline.to_deployment(
        name=name,
        cron=cron,
        parameters={"root": str(Path(root).resolve())},
        description="Nightly genops run: pull data, dvc stages (only what changed), gate, build",
        tags=["genops", "nightly"],
    )


def data_change_deployment(root: str = ".", interval_s: int = ON_DATA_INTERVAL_S):
    """Runs the pipeline every `interval_s`: a run with nothing new is a no-op (every stage up to
    date), and one that finds a new `data.dvc` reruns what depends on the data."""
    return pipeline.to_deployment(
        name=ON_DATA_DEPLOYMENT,
        interval=interval_s,
        parameters={"root": str(Path(root).resolve())},
        description="Picks up a new data.dvc within the interval; no-op when nothing changed",
        tags=["genops", "data"],
    )


def deploy(pool: str, root: str = ".", cron: str = NIGHTLY_CRON) -> dict[str, str]:
    """Register the nightly deployment (pool's default queue) and the family deployment (its
    `families` queue) on work pool `pool`, code from this checkout; return their ids."""
    source = str(Path(root).resolve())
    common = {"work_pool_name": pool, "build": False, "push": False, "print_next_steps": False,
              "ignore_warnings": True, "tags": ["genops"]}  # fmt: skip
    family_id = family_pipeline.from_source(
        source=source, entrypoint="pipelines/orchestration/pipeline_flow.py:family_pipeline"
    ).deploy(
        name=FAMILY_DEPLOYMENT,
        work_queue_name=FAMILY_QUEUE,
        description="One family's training and evaluation stages (a child of the pipeline run)",
        **common,
    )
    nightly = pipeline.from_source(
        source=source, entrypoint="pipelines/orchestration/pipeline_flow.py:pipeline"
    )
    nightly_id = nightly.deploy(
        name=DEPLOYMENT,
        cron=cron,
        parameters={"root": source, "pool": True},
        description="Nightly genops run on the work pool: families train side by side on workers",
        **common,
    )
    return {"nightly": str(nightly_id), "family": str(family_id)}
