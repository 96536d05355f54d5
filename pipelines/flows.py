"""The whole pipeline as a Prefect 3 flow, plus its nightly deployment.

The flow's tasks are thin wrappers over `pipelines/jobs.py`, the same functions the `genops`
CLI (hence every `dvc repro` stage) calls: one source of truth for each step. Tasks pass
paths, run ids and hashes, never tensors. Only transient errors (I/O, timeouts, a locked
database) are retried; a data-validation failure fails the flow before any training, with
the GX summary in the failure message.

    python -m pipelines.flows run                 # one run now, against the current Prefect API
    python -m pipelines.flows serve               # register the nightly deployment and serve it
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines import jobs
from pipelines.params import load_params, validation_config

FAMILIES = ("autoencoder", "vae", "gan", "diffusion")
DEPLOYMENT = "nightly"
NIGHTLY_CRON = "0 2 * * *"


class DataValidationFailed(RuntimeError):
    """The GX gate failed: not transient, never retried."""


def is_transient(exc: BaseException | None) -> bool:
    if isinstance(exc, DataValidationFailed | ValueError | KeyError | TypeError):
        return False
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc)
    return isinstance(exc, TimeoutError | ConnectionError | OSError)


def _retry_transient(task_, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as exc:
        return is_transient(exc)
    return False


TRANSIENT = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": _retry_transient}


@task(name="prepare-data", **TRANSIENT)
def prepare_data(root: str, rev: str | None = None, remote: str | None = None) -> str:
    """`dvc pull` data/ (at a git revision / from a named remote when given); return its version."""
    from pipelines.dvc_ops import data_version, dvc, pull_or_rebuild

    if rev:
        dvc("get", ".", "data", "--rev", rev, "-o", "data", "--force", cwd=Path(root))
    elif remote:
        dvc("pull", "data.dvc", "-r", remote, cwd=Path(root))
    else:
        get_run_logger().info(pull_or_rebuild(Path(root)))
    return data_version(Path(root))


@task(name="validate-data")
def validate(root: str, params: dict[str, Any]) -> str:
    from pipelines.validation import validate_data

    report = validate_data(
        Path(root) / "data", Path(root) / "reports" / "validation", validation_config(params)
    )
    if not report.success:
        raise DataValidationFailed(report.summary())
    return report.docs_index


@task(name="train-judge", **TRANSIENT)
def train_judge(root: str, params: dict[str, Any]) -> dict[str, Any]:
    r = Path(root)
    return jobs.train_judge_job(
        params, r / "data", r / "artifacts" / "judge", r / "metrics" / "judge.json"
    )


@task(name="train-family", **TRANSIENT)
def train_family(root: str, params: dict[str, Any], family: str) -> dict[str, Any]:
    r = Path(root)
    return jobs.train_family(
        params,
        family,
        r / "data",
        r / "artifacts" / "models" / family,
        r / ".genops" / "checkpoints" / family,
    )


@task(name="evaluate-family", **TRANSIENT)
def evaluate_family(root: str, params: dict[str, Any], family: str, _trained: Any = None) -> dict:
    r = Path(root)
    return jobs.evaluate_family(
        params,
        family,
        r / "data",
        r / "artifacts" / "models" / family,
        r / "artifacts" / "judge",
        r / "artifacts" / "eval" / family,
        r / "metrics" / f"{family}.json",
    )


@task(name="register-and-promote", **TRANSIENT)
def register(root: str, params: dict[str, Any], families: list[str]) -> dict[str, Any]:
    r = Path(root)
    report = jobs.register_and_promote(
        params, families, r / "artifacts" / "eval", r / "metrics", r / "reports", r / "data"
    )
    import json

    board = json.loads((r / "reports" / "leaderboard.json").read_text())
    columns = (
        "fd_judge",
        "precision",
        "recall",
        "classes_covered",
        "anomaly_auroc_mean",
        "elbo_nats",
        "train_wall_time_s",
        "sample_ms_per_image",
        "score_ms_per_image",
    )
    rows = [
        {
            "family": family,
            **{c: round(stats["metrics"][c]["mean"], 4) for c in columns if c in stats["metrics"]},
        }
        for family, stats in board["families"].items()
    ]
    create_table_artifact(
        key="genops-leaderboard",
        table=rows,
        description="genops leaderboard (same data, same metrics)",
    )
    create_markdown_artifact(
        key="genops-promotion",
        markdown=jobs.promotion_markdown(report),
        description="promotion gate decisions",
    )
    return report


def _runner(parallel: int = 0) -> ThreadPoolTaskRunner:
    """Families trained at once: `parallel`, or one per 2 cores available."""
    from pipelines.train import available_cores

    return ThreadPoolTaskRunner(max_workers=parallel or max(1, available_cores() // 2))


@flow(name="genops-pipeline", log_prints=True, task_runner=_runner())
def pipeline(
    root: str = ".",
    params_file: str = "params.yaml",
    families: list[str] | None = None,
    rev: str | None = None,
    remote: str | None = None,
    build_bento: bool = True,
) -> dict[str, Any]:
    """Data -> GX gate -> judge -> train families -> evaluate -> register/gate -> Bento."""
    root = str(Path(root).resolve())
    os.environ["GENOPS_ROOT"] = root
    params = load_params(Path(root) / params_file)
    families = list(families or FAMILIES)
    version = prepare_data(root, rev, remote)
    validate(root, params)  # raises DataValidationFailed: nothing below runs
    judge = train_judge.submit(root, params)
    trained = {f: train_family.submit(root, params, f) for f in families}
    evaluated = [
        evaluate_family.submit(root, params, f, trained[f], wait_for=[judge]) for f in families
    ]
    for future in evaluated:
        future.result()
    report = register(root, params, families)
    bento = None
    if build_bento:
        from pipelines.bento import build_bento as _build

        bento = task(name="build-bento", **TRANSIENT)(_build).submit(Path(root)).result()
    return {"data_version": version, "promotion": report, "bento": bento}


def deployment(name: str = DEPLOYMENT, cron: str = NIGHTLY_CRON, root: str = "."):
    """The nightly retrain deployment (a RunnerDeployment; `.apply()` registers it)."""
    return pipeline.to_deployment(
        name=name,
        cron=cron,
        parameters={"root": str(Path(root).resolve())},
        description="Nightly genops retrain, evaluate, gate, build",
        tags=["genops", "nightly"],
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.flows", description="Run or serve the genops Prefect flow."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the flow once now")
    run.add_argument("--family", action="append", choices=FAMILIES)
    run.add_argument("--rev", help="git revision whose data.dvc to pull")
    run.add_argument("--remote", help="DVC remote to pull from")
    run.add_argument("--no-bento", action="store_true")
    run.add_argument("--parallel", type=int, default=0)
    serve = sub.add_parser("serve", help="register the nightly deployment and serve it")
    serve.add_argument("--cron", default=NIGHTLY_CRON)
    sub.add_parser("register", help="register the deployment with the API without serving")
    args = parser.parse_args(argv)
    if args.command == "run":
        flow_ = pipeline.with_options(task_runner=_runner(args.parallel))
        flow_(families=args.family, rev=args.rev, remote=args.remote, build_bento=not args.no_bento)
    elif args.command == "serve":
        from prefect import serve as prefect_serve

        prefect_serve(deployment(cron=args.cron))
    else:
        print(deployment().apply())


if __name__ == "__main__":
    main(sys.argv[1:])
