"""`genops bento import-models | import-dir | build`: the BentoML model store and the Bento.

The work is serving.build's (serving never imports pipelines); an unset option keeps that
function's default, so each default has one home.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.common import fail_on


def _model_name(command):
    return click.option(
        "--model-name", help="The BentoML model to store into [default: genops-models]."
    )(command)


def _named(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None}


@click.group("bento")
def bento() -> None:
    """Put served models into the BentoML model store, and build the Bento."""


@bento.command("import-models")
@click.option("--tracking-uri", help="The MLflow registry [default: the project's].")
@_model_name
def import_models(tracking_uri: str | None, model_name: str | None) -> None:
    """Copy the champions and each family's latest version from MLflow into the store."""
    from serving.build import import_from_registry

    try:
        click.echo(import_from_registry(tracking_uri, **_named(model_name=model_name)))
    except (LookupError, ValueError, FileNotFoundError) as exc:
        fail_on(exc, "error")


@bento.command("import-dir")
@click.argument("folder", type=click.Path(path_type=Path))
@_model_name
def import_dir(folder: Path, model_name: str | None) -> None:
    """Store a `dir:` source FOLDER (generation/, anomaly/, families/<f>/) in the store."""
    from serving.build import import_from_dir

    try:
        click.echo(import_from_dir(folder, **_named(model_name=model_name)))
    except (LookupError, ValueError, FileNotFoundError) as exc:
        fail_on(exc, "error")


@bento.command("build")
@click.option(
    "--bentofile",
    type=click.Path(path_type=Path),
    help="The bentofile [default: serving/bentofile.yaml].",
)
def build(bentofile: Path | None) -> None:
    """Build the Bento (`bentoml build`) from the store's latest genops-models."""
    from serving.build import build_bento

    try:
        click.echo(build_bento(**_named(bentofile=bentofile)))
    except (LookupError, ValueError, FileNotFoundError) as exc:
        fail_on(exc, "error")
