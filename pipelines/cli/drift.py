"""`genops drift run | serve | register`: the served anomaly scores vs the champion's calibration.

Prefect is imported only when a command runs (pipelines.orchestration.drift_flow); docs/drift.md
describes the check.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipelines.cli.common import fail_on
from pipelines.errors import GenopsError
from pipelines.orchestration.deployments import DEFAULT_SERVICE_URL, HOURLY_CRON


def _target(command):
    """The options every drift command shares: which service, which champion, which project."""
    command = click.option(
        "--root",
        default=".",
        show_default=True,
        type=click.Path(path_type=Path),
        help="Project root (params.yaml, reports/).",
    )(command)
    command = click.option(
        "--bundle", help="A served bundle folder [default: the registry's anomaly champion]."
    )(command)
    return click.option(
        "--service-url", default=DEFAULT_SERVICE_URL, show_default=True, help="The service."
    )(command)


@click.group("drift")
def drift() -> None:
    """Compare the served anomaly scores with the champion's calibration (docs/drift.md)."""


@drift.command("run")
@_target
@click.option(
    "--params",
    "params_file",
    default="params.yaml",
    show_default=True,
    help="Params file (its drift: section), relative to --root.",
)
@click.option("--no-trigger", is_flag=True, help="Report only; never ask for a retrain.")
@click.option("--cumulative", is_flag=True, help="Judge every score since the service started.")
@click.option(
    "--fetch-retries",
    type=int,
    default=3,
    show_default=True,
    help="Reads of an unreachable /metrics before the check fails.",
)
def drift_run(
    service_url: str,
    bundle: str | None,
    root: Path,
    params_file: str,
    no_trigger: bool,
    cumulative: bool,
    fetch_retries: int,
) -> None:
    """Check once now: write reports/drift/, log to MLflow, retrain on drift."""
    from pipelines.orchestration.drift_flow import drift_watch

    try:
        summary = drift_watch(
            service_url=service_url,
            bundle=bundle,
            root=str(root),
            params_file=params_file,
            trigger=not no_trigger,
            since_last_check=not cumulative,
            fetch_retries=fetch_retries,
        )
    except (GenopsError, ConnectionError, ValueError) as exc:  # a 4xx /metrics: ValueError
        fail_on(exc, f"drift watch failed: {type(exc).__name__}")
    click.echo(json.dumps({k: summary[k] for k in ("status", "retrain", "files")}, indent=2))


def _deployment(service_url: str, bundle: str | None, root: Path, cron: str):
    from pipelines.orchestration.drift_flow import deployment

    return deployment(cron=cron, service_url=service_url, bundle=bundle, root=str(root))


_cron = click.option("--cron", default=HOURLY_CRON, show_default=True, help="The schedule.")


@drift.command("serve")
@_target
@_cron
def drift_serve(service_url: str, bundle: str | None, root: Path, cron: str) -> None:
    """Register the hourly drift-watch deployment and serve it (blocks)."""
    from prefect import serve

    serve(_deployment(service_url, bundle, root, cron))


@drift.command("register")
@_target
@_cron
def drift_register(service_url: str, bundle: str | None, root: Path, cron: str) -> None:
    """Register the hourly drift-watch deployment with the API without serving."""
    click.echo(_deployment(service_url, bundle, root, cron).apply())
