"""What every `genops` command shares: default paths, the params file, failing with a code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from pipelines import settings as P
from pipelines.errors import ExitCode, exit_code_of, record_failure

DATA_DIR = Path("data")
REPORTS = Path("reports")
ARTIFACTS = Path("artifacts")
CHECKPOINTS = Path(".genops") / "checkpoints"


def fail(message: str, code: int = ExitCode.FAILED, error: str = "") -> NoReturn:
    """Print `message` in red on stderr, record the failure for a calling flow and exit with
    `code` (pipelines/errors.py; docs/architecture.md: exit codes)."""
    record_failure(code, error or ExitCode(code).name, message)
    click.secho(message, fg="red", err=True)
    sys.exit(int(code))


def fail_on(exc: BaseException, context: str = "") -> NoReturn:
    """`fail` with the exit code `exc`'s type means; `context` prefixes the message."""
    message = f"{context}: {exc}" if context else str(exc)
    fail(message, exit_code_of(exc), type(exc).__name__)


def params(ctx: click.Context) -> dict:
    """params.yaml (or `genops --params FILE`) as a dict."""
    return P.load_params(ctx.obj["params_file"])
