"""`genops flow run | serve | register | deploy`: the pipeline as a Prefect flow.

Prefect is imported only when a command runs (pipelines.orchestration.pipeline_flow), so
`genops --help` stays quick; the names and schedules come from
pipelines.orchestration.deployments.
"""

from __future__ import annotations

import json

import click

from models.spec import FAMILIES
from pipelines.orchestration.deployments import NIGHTLY_CRON, ON_DATA_INTERVAL_S


@click.group("flow")
def flow() -> None:
    """Run, serve or deploy the pipeline as a Prefect flow (a task per dvc.yaml stage)."""


@flow.command("run")
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(FAMILIES),
    help="Only these families' stages (repeatable) [default: all].",
)
@click.option("--rev", help="Git revision whose data.dvc to pull.")
@click.option("--remote", help="DVC remote to pull the data from.")
@click.option("--no-bento", is_flag=True, help="Skip the Bento build stage.")
@click.option("--pool", help="Run the per-family stages as flow runs on this work pool.")
def flow_run(
    families: tuple[str, ...], rev: str | None, remote: str | None, no_bento: bool, pool: str | None
) -> None:
    """Run the flow once now; only out-of-date stages do work."""
    from pipelines.orchestration.pipeline_flow import deploy, pipeline

    if pool:
        deploy(pool)  # the family deployment the run fans out to (an upsert)
    result = pipeline(
        families=list(families) or None,
        rev=rev,
        remote=remote,
        build_bento=not no_bento,
        pool=bool(pool),
    )
    keys = ("data_version", "ran", "stages", "family_runs")
    click.echo(json.dumps({k: result[k] for k in keys}, indent=2))


@flow.command("serve")
@click.option("--cron", default=NIGHTLY_CRON, show_default=True, help="The nightly schedule.")
@click.option(
    "--interval",
    type=int,
    default=ON_DATA_INTERVAL_S,
    show_default=True,
    help="Seconds between the on-data-change runs.",
)
def flow_serve(cron: str, interval: int) -> None:
    """Register the nightly and on-data-change deployments and serve them (blocks)."""
    from prefect import serve

    from pipelines.orchestration.pipeline_flow import data_change_deployment, deployment

    serve(deployment(cron=cron), data_change_deployment(interval_s=interval))


@flow.command("register")
def flow_register() -> None:
    """Register the nightly and on-data-change deployments with the API without serving."""
    from pipelines.orchestration.pipeline_flow import data_change_deployment, deployment

    click.echo(f"{deployment().apply()} {data_change_deployment().apply()}")


@flow.command("deploy")
@click.option("--pool", required=True, help="The process work pool (e.g. genops-pool).")
@click.option("--cron", default=NIGHTLY_CRON, show_default=True, help="The nightly schedule.")
def flow_deploy(pool: str, cron: str) -> None:
    """Register the nightly and per-family deployments on a process work pool."""
    from pipelines.orchestration.pipeline_flow import deploy

    click.echo(json.dumps(deploy(pool, cron=cron), indent=2))
