"""`genops rollback | challenge | history | champions`: the registry's aliases and decisions by
hand."""

from __future__ import annotations

import json
from pathlib import Path

import click

from models.spec import TASKS


@click.command("rollback")
@click.option("--task", type=click.Choice(list(TASKS)), required=True)
@click.option("--version", required=True, help="Registered model version to make champion.")
def rollback_cmd(task, version) -> None:
    """Move a task's `champion` alias back to an earlier registered version."""
    from pipelines.registry.client import rollback

    previous = rollback(task, version)
    click.echo(f"{task}: champion v{previous} -> v{version}")


@click.command("challenge")
@click.option("--task", type=click.Choice(list(TASKS)), required=True)
@click.option("--version", help="Registered model version to make the task's challenger.")
@click.option("--clear", is_flag=True, help="Remove the task's challenger instead.")
def challenge_cmd(task, version, clear) -> None:
    """Set (or --clear) a task's `challenger` alias: served beside the champion
    (`"model": "challenger"`), on every worker, after the next reload or registry poll."""
    from pipelines.cli.common import fail
    from pipelines.registry.client import set_challenger

    if bool(version) == clear:
        fail("give exactly one of --version N and --clear", 2)
    from mlflow.exceptions import MlflowException

    try:
        previous = set_challenger(task, None if clear else version)
    except (ValueError, MlflowException) as exc:  # the champion itself; no such version
        fail(str(exc), 2)
    click.echo(f"{task}: challenger v{previous} -> {'none' if clear else f'v{version}'}")


@click.command("history")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the Markdown here.")
def history_cmd(out: Path | None) -> None:
    """Every promotion decision and rollback across data versions (from the registry)."""
    from pipelines.registry.client import history
    from pipelines.registry.reports import history_markdown

    text = history_markdown(history())
    if out:
        out.write_text(text)
    click.echo(text)


@click.command("champions")
def champions_cmd() -> None:
    """Show the current champion of each task, and its challenger where it has one."""
    from pipelines.registry.client import registry_state

    click.echo(json.dumps(registry_state(), indent=2))
