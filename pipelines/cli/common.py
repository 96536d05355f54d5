"""What every `genops` command shares: default paths, the params file, failing with a message."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pipelines import settings as P

DATA_DIR = Path("data")
REPORTS = Path("reports")
ARTIFACTS = Path("artifacts")
CHECKPOINTS = Path(".genops") / "checkpoints"


def fail(message: str, code: int = 1) -> None:
    """Print `message` in red on stderr and exit with `code` (docs/architecture.md: exit codes)."""
    click.secho(message, fg="red", err=True)
    sys.exit(code)


def params(ctx: click.Context) -> dict:
    """params.yaml (or `genops --params FILE`) as a dict."""
    return P.load_params(ctx.obj["params_file"])
