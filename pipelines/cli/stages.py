"""The commands `dvc.yaml`'s stages run, one per stage: validate, train-judge, train, evaluate,
build-ensemble, register, build-bento. Each imports its stage module (pipelines/stages/) inside
its body, so a stage's dvc.yaml deps are this file, the stage module and what that imports
(tests/pipelines/stages/test_dvc_deps.py). A failure exits with its documented code
(pipelines/errors.py): invalid data 3, transient 75, anything else 1."""

from __future__ import annotations

import json
from pathlib import Path

import click

from models.spec import FAMILIES, MODELS
from pipelines import settings as P
from pipelines.cli.common import ARTIFACTS, CHECKPOINTS, DATA_DIR, REPORTS, fail, fail_on, params
from pipelines.data.dataset import DataError
from pipelines.errors import ExitCode


@click.command("validate")
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--report-dir",
    default=REPORTS / "validation",
    show_default=True,
    type=click.Path(path_type=Path),
)
@click.pass_context
def validate(ctx: click.Context, data_dir: Path, report_dir: Path) -> None:
    """Run the Great Expectations gate; exit 3 (invalid data) with a summary when any
    expectation fails."""
    from pipelines.data.validation import validate_data

    try:
        report = validate_data(data_dir, report_dir, P.validation_config(params(ctx)))
    except DataError as exc:
        fail_on(exc, "Data validation FAILED")
    if not report.success:
        fail(report.summary(), ExitCode.INVALID_DATA, "DataValidationFailed")
    click.echo(report.summary())


@click.command("train")
@click.option("--family", type=click.Choice(FAMILIES), required=True)
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Model folder [default: artifacts/models/<family>].",
)
@click.option("--steps", type=int, help="Override train.steps.")
@click.option("--fresh", is_flag=True, help="Ignore an existing checkpoint and start over.")
@click.option("--no-mlflow", is_flag=True, help="Do not log the run to MLflow.")
@click.pass_context
def train_cmd(ctx, family, data_dir, out, steps, fresh, no_mlflow) -> None:
    """Train one family with its params.yaml section; resumes from its last checkpoint."""
    from pipelines.stages.train import train_family

    overrides = {"steps": steps} if steps else {}
    summary = train_family(
        params(ctx),
        family,
        data_dir,
        out or ARTIFACTS / "models" / family,
        CHECKPOINTS / family,
        overrides=overrides,
        fresh=fresh,
        log_mlflow=not no_mlflow,
    )
    if "rank" not in summary:  # under torchrun, rank 0 reports for all
        click.echo(json.dumps(summary, indent=2))


@click.command("train-judge")
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--out", default=ARTIFACTS / "judge", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--metrics",
    "metrics_path",
    default=Path("metrics") / "judge.json",
    show_default=True,
    type=click.Path(path_type=Path),
)
@click.option("--no-mlflow", is_flag=True)
@click.pass_context
def train_judge_cmd(ctx, data_dir, out, metrics_path, no_mlflow) -> None:
    """Train the digit-classifier judge whose features the quality metrics use."""
    from pipelines.stages.judge import train_judge_job

    metrics = train_judge_job(params(ctx), data_dir, out, metrics_path, not no_mlflow)
    click.echo(json.dumps(metrics, indent=2))


@click.command("build-ensemble")
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.pass_context
def build_ensemble_cmd(ctx, data_dir) -> None:
    """Fit the ensemble of the trained families on validation normals only."""
    from pipelines.stages.ensemble import build_ensemble

    models = ARTIFACTS / "models"
    info = build_ensemble(params(ctx), data_dir, models, models / "ensemble")
    click.echo(json.dumps(info, indent=2))


@click.command("evaluate")
@click.option("--family", type=click.Choice(MODELS), required=True)
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option("--no-mlflow", is_flag=True)
@click.pass_context
def evaluate_cmd(ctx, family, data_dir, no_mlflow) -> None:
    """Evaluate a trained family (or the ensemble): quality, likelihood, anomaly AUROC,
    calibration, cost."""
    from pipelines.stages.evaluate import evaluate_family

    metrics = evaluate_family(
        params(ctx),
        family,
        data_dir,
        ARTIFACTS / "models" / family,
        ARTIFACTS / "judge",
        ARTIFACTS / "eval" / family,
        Path("metrics") / f"{family}.json",
        log_mlflow=not no_mlflow,
    )
    click.echo(json.dumps(metrics, indent=2))


@click.command("register")
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(MODELS),
    help="Families (and composites, e.g. ensemble) to consider [default: all].",
)
@click.pass_context
def register_cmd(ctx, families) -> None:
    """Leaderboard, register candidates, and gate each task's champion alias."""
    from pipelines.stages.register import register_and_promote

    report = register_and_promote(
        params(ctx), list(families or MODELS), ARTIFACTS / "eval", Path("metrics"), REPORTS
    )
    click.echo((REPORTS / "leaderboard.md").read_text())
    click.echo((REPORTS / "promotion.md").read_text())
    if not report["decisions"]:
        fail("no candidates to register")


@click.command("build-bento")
def build_bento_cmd() -> None:
    """Copy the registry champions into the BentoML store and build the Bento."""
    from pipelines.stages.bento import build_bento

    try:
        info = build_bento(Path("."))
    except (LookupError, ValueError) as exc:
        fail_on(exc, "bento build failed")
    click.echo(json.dumps(info, indent=2))
