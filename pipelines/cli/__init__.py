"""`genops`: the one entry point (click) to everything the product does.

Each command lives in the module named in COMMANDS and is imported only when it runs (or when
`--help` lists it), so `genops validate` loads the GX gate and not torch, and a `dvc.yaml`
stage depends on this file, its command's module and what that command imports
(tests/pipelines/stages/test_dvc_deps.py).

Exit codes (pipelines/errors.py): 0 success, 1 a failure a retry would not change,
2 usage, 3 invalid data, 75 transient (retry may succeed).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import click

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
    "one-class": "pipelines.cli.research:one_class_cmd",
}


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


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
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
    """genops: train, judge, register and serve generative digit models."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("great_expectations", "alembic", "mlflow", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = {"params_file": params_file}
