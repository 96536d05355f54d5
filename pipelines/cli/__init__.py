"""`genops`: the one entry point (click) to everything the product does.

Each command lives in the module named in COMMANDS and is imported only when it runs (or when
`--help` lists it), so `genops validate` loads the GX gate and not torch, and a `dvc.yaml`
stage depends on this file, its command's module and what that command imports
(tests/pipelines/stages/test_dvc_deps.py).

Every command exits with a documented code (pipelines/errors.py, EXIT_CODES below); a command
that fails also records its failure class where a calling flow asked ($GENOPS_FAILURE_RECORD).
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

import click

from pipelines.errors import ExitCode, exit_code_of, record_failure

COMMANDS: dict[str, str] = {  # command -> "module:attribute"
    "data": "pipelines.cli.data:data",
    "validate": "pipelines.cli.stages:validate",
    "train-judge": "pipelines.cli.stages:train_judge_cmd",
    "train": "pipelines.cli.stages:train_cmd",
    "evaluate": "pipelines.cli.stages:evaluate_cmd",
    "build-ensemble": "pipelines.cli.stages:build_ensemble_cmd",
    "register": "pipelines.cli.stages:register_cmd",
    "build-bento": "pipelines.cli.stages:build_bento_cmd",
    "rollback": "pipelines.cli.registry:rollback_cmd",
    "history": "pipelines.cli.registry:history_cmd",
    "champions": "pipelines.cli.registry:champions_cmd",
    "challenge": "pipelines.cli.registry:challenge_cmd",
    "canary": "pipelines.cli.registry:canary_cmd",
    "one-class": "pipelines.cli.research:one_class_cmd",
    "reference-detectors": "pipelines.cli.research:reference_cmd",
    "flow": "pipelines.cli.flow:flow",
    "drift": "pipelines.cli.drift:drift",
    "bento": "pipelines.cli.bento:bento",
    "stack": "pipelines.cli.stack:stack",
}

EXIT_CODES = f"""\b
Exit codes (docs/architecture.md):
  {ExitCode.OK:<3} success
  {ExitCode.FAILED:<3} failed; a retry would not change it (a bug, a missing file, config)
  {ExitCode.USAGE:<3} usage: a wrong command line
  {ExitCode.INVALID_DATA:<3} invalid data: the GX gate or a data check failed
  {ExitCode.TRANSIENT:<3} transient: a locked repository or database, a DVC remote, the
      network; a retry may succeed
"""


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *self.lazy]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module, attribute = self.lazy[name].split(":")
        return getattr(importlib.import_module(module), attribute)

    def invoke(self, ctx: click.Context):
        """Run the command; an exception leaves with the exit code its type means."""
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            code = exit_code_of(exc)
            record_failure(code, type(exc).__name__, f"{type(exc).__name__}: {exc}")
            if code == ExitCode.FAILED:
                raise  # a bug or an unforeseen failure: its traceback, exit 1
            if code == ExitCode.TRANSIENT:
                logging.getLogger("genops").warning("transient failure", exc_info=exc)
            click.secho(f"{code.name.lower()}: {type(exc).__name__}: {exc}", fg="red", err=True)
            sys.exit(int(code))


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    epilog=EXIT_CODES,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--params",
    "params_file",
    default="params.yaml",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The DVC params file.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, params_file: Path, verbose: bool) -> None:
    """genops: train, judge, register and serve generative digit models.

    \b
    data, validate ...     the dvc.yaml stages, data to Bento (`dvc repro` runs them)
    rollback, history ...  the registry by hand
    flow                   the pipeline as a Prefect flow: run, serve, register, deploy
    drift                  served scores vs the champion's calibration
    bento                  the BentoML model store and the Bento
    stack                  the loopback PostgreSQL/S3/MLflow/Prefect stack
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("great_expectations", "alembic", "mlflow", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = {"params_file": params_file}
