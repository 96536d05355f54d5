"""`genops stack up | down | status`: the loopback PostgreSQL/S3/MLflow/Prefect stack.

Developer infrastructure (devstack/), not a dvc.yaml stage: docs/scale-out.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from devstack.stack import DEFAULT_DIR, ENV_FILE, POOL


def _state_dir(command):
    return click.option(
        "--state-dir",
        default=DEFAULT_DIR,
        show_default=True,
        type=click.Path(path_type=Path),
        help="The folder that holds the stack's state, stack.json and stack.env.",
    )(command)


@click.group("stack")
def stack() -> None:
    """Start, stop or check the loopback stack: PostgreSQL, S3 (moto), MLflow, Prefect."""


@stack.command("up")
@_state_dir
@click.option("--workers", type=int, default=2, show_default=True, help="Family workers.")
@click.option("--pool", default=POOL, show_default=True, help="The Prefect work pool.")
@click.option("--no-prefect", is_flag=True, help="PostgreSQL, S3 and MLflow only.")
@click.option("--ui", is_flag=True, help="Serve Prefect's web UI too.")
@click.option(
    "--no-share-cores",
    is_flag=True,
    help="Let every family worker use all cores [default: worker i gets cores[i::workers]].",
)
def stack_up(
    state_dir: Path, workers: int, pool: str, no_prefect: bool, ui: bool, no_share_cores: bool
) -> None:
    """Start the stack, wait until each part answers, write stack.json and stack.env."""
    from devstack.stack import StackConfig, up

    cfg = StackConfig(state_dir=state_dir, prefect=not no_prefect, workers=workers, pool=pool,
                      prefect_ui=ui, share_cores=not no_share_cores)  # fmt: skip
    state = up(cfg)
    click.echo(json.dumps({k: state[k] for k in ("env", "startup_s")}, indent=2))
    click.echo(f"client settings: set -a; . {state_dir / ENV_FILE}; set +a")


@stack.command("down")
@_state_dir
@click.option("--keep-data", is_flag=True, help="Keep the databases.")
def stack_down(state_dir: Path, keep_data: bool) -> None:
    """Stop every part of the stack and remove its state."""
    from devstack.stack import down

    click.echo("stopped" if down(state_dir, keep_data=keep_data) else "no stack running")


@stack.command("status")
@_state_dir
def stack_status(state_dir: Path) -> None:
    """Is every part of the stack answering? Exit 1 when it is not running."""
    from devstack.stack import status

    report = status(state_dir)
    click.echo(json.dumps(report, indent=2))
    sys.exit(0 if report["running"] else 1)
