"""Failure classes and exit codes: how a `genops` command fails, and how a flow reads it.

A leaf module (the standard library only), so every stage may import it without widening its
`dvc.yaml` deps. The codes, documented in docs/architecture.md and `genops --help`:

    0   OK            success
    1   FAILED        a failure a retry would not change (a bug, a missing file, a config error)
    2   USAGE         wrong command line (click's own code)
    3   INVALID_DATA  the data is unusable: the GX gate failed, a malformed IDX file
    75  TRANSIENT     a retry may succeed: a locked repository or SQLite database, a DVC remote,
                      a network or timeout error (EX_TEMPFAIL from sysexits.h)

`dvc repro` does not pass its stage command's exit code through (it exits 255 on any failure),
so a `genops` command also records its failure in the JSON file named by $GENOPS_FAILURE_RECORD
when that is set; the pipeline flow sets it per stage and reads it after a failed `dvc repro`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path

FAILURE_RECORD_ENV = "GENOPS_FAILURE_RECORD"


class ExitCode(IntEnum):
    """The exit codes of every `genops` command."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INVALID_DATA = 3
    TRANSIENT = 75  # os.EX_TEMPFAIL


class GenopsError(RuntimeError):
    """A failure of ours; its class says which exit code it means."""

    exit_code: ExitCode = ExitCode.FAILED


class InvalidData(GenopsError):
    """The data cannot be used: never retried."""

    exit_code = ExitCode.INVALID_DATA


class DataValidationFailed(InvalidData):
    """The GX gate failed; the message is its summary."""


class TransientError(GenopsError):
    """A lock, a remote or the network: worth a retry."""

    exit_code = ExitCode.TRANSIENT


class TransientStageError(TransientError):
    """A DVC stage (or the data pull) failed for a transient reason."""


class StageFailed(GenopsError):
    """A DVC stage failed for a reason that a retry would not change."""


class ChampionMissing(GenopsError):
    """No anomaly champion to compare with (drift watch): never retried."""


class ServiceUnreachable(TransientError, ConnectionError):
    """A service's /metrics could not be read (refused, timeout, 5xx): retried."""


class RetrainRequestFailed(GenopsError):
    """Drift was found but the retrain deployment could not be asked to run."""


_SQLITE_BUSY = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it, as a traceback shows it (SQLAlchemy's `.orig` too)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the driver's error
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield orig
            seen.add(id(orig))
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _is_transient_link(exc: BaseException) -> bool:
    if isinstance(exc, TransientError | TimeoutError | ConnectionError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.OperationalError) and code in _SQLITE_BUSY


def exit_code_of(exc: BaseException) -> ExitCode:
    """The exit code an exception means, from its type and the types of its causes.

    Transient anywhere in the chain wins (a data error caused by a dropped connection is worth
    a retry); else the first of our classes in the chain says; else FAILED.
    """
    chain = list(_chain(exc))
    if any(_is_transient_link(link) for link in chain):
        return ExitCode.TRANSIENT
    for link in chain:
        if isinstance(link, GenopsError):
            return link.exit_code
    return ExitCode.FAILED


def is_transient(exc: BaseException | None) -> bool:
    """Locks, remotes, networks and timeouts are transient; data, config and bugs are not."""
    return exc is not None and exit_code_of(exc) == ExitCode.TRANSIENT


@dataclass(frozen=True)
class FailureRecord:
    """What a failed `genops` command left for its caller: code, exception class, message."""

    code: int
    error: str
    message: str

    @property
    def exit_code(self) -> ExitCode:
        try:
            return ExitCode(self.code)
        except ValueError:
            return ExitCode.FAILED


def record_failure(code: int, error: str, message: str) -> None:
    """Write the failure to $GENOPS_FAILURE_RECORD (atomically), when the caller set it."""
    target = os.environ.get(FAILURE_RECORD_ENV)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = FailureRecord(int(code), error, message[-8000:])
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(record), fh)
    os.replace(tmp, path)


def read_failure(path: Path) -> FailureRecord | None:
    """The record a failed command wrote at `path`, or None (none written, or unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return FailureRecord(int(data["code"]), str(data["error"]), str(data["message"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
