"""Failures have types: exit codes by exception class, and a real failing `dvc repro` stage.

`dvc repro` exits 255 whatever its command's code, so the flow reads the failure record the
`genops` command leaves ($GENOPS_FAILURE_RECORD); these tests run real DVC over real commands.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipelines.errors import (
    FAILURE_RECORD_ENV,
    DataValidationFailed,
    ExitCode,
    ServiceUnreachable,
    StageFailed,
    TransientStageError,
    exit_code_of,
    is_transient,
    read_failure,
)

ROOT = Path(__file__).resolve().parents[3]


def _locked_database_error(tmp_path: Path) -> sqlite3.OperationalError:
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path)
    holder.execute("create table t (x)")
    holder.execute("begin exclusive")
    try:
        sqlite3.connect(path, timeout=0).execute("select * from t")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        holder.close()
    raise AssertionError("the exclusive lock did not block a reader")


def test_exit_codes_follow_exception_types(tmp_path):
    locked = _locked_database_error(tmp_path)
    assert exit_code_of(locked) == ExitCode.TRANSIENT
    assert exit_code_of(sqlite3.OperationalError("no such table: t")) == ExitCode.FAILED
    assert is_transient(TimeoutError()) and is_transient(ConnectionRefusedError())
    assert is_transient(ServiceUnreachable("5xx")) and is_transient(TransientStageError("x"))
    assert exit_code_of(DataValidationFailed("bad")) == ExitCode.INVALID_DATA
    assert not is_transient(ValueError("bad config"))
    assert not is_transient(FileNotFoundError("model/train_metrics.json")), "a missing file"
    assert not is_transient(StageFailed("a bug")) and not is_transient(None)


def test_a_transient_cause_makes_the_failure_transient(tmp_path):
    locked = _locked_database_error(tmp_path)
    try:
        try:
            raise locked
        except sqlite3.OperationalError as exc:
            raise RuntimeError("(sqlite3.OperationalError) wrapped by a library") from exc
    except RuntimeError as wrapped:
        assert exit_code_of(wrapped) == ExitCode.TRANSIENT
    try:
        try:
            raise ConnectionRefusedError(111, "refused")
        except ConnectionRefusedError:
            raise DataValidationFailed("could not read the data") from None  # cause suppressed
    except DataValidationFailed as suppressed:
        assert exit_code_of(suppressed) == ExitCode.INVALID_DATA


def test_the_cli_exits_with_the_code_and_records_it(tmp_path, monkeypatch):
    from pipelines.cli import LazyGroup

    group = LazyGroup(name="genops", lazy={})

    @group.command()
    def unreachable() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    @group.command()
    def bug() -> None:
        raise KeyError("a bug")

    record = tmp_path / "failure.json"
    monkeypatch.setenv(FAILURE_RECORD_ENV, str(record))
    result = CliRunner().invoke(group, ["unreachable"])
    assert result.exit_code == ExitCode.TRANSIENT, result.output
    failure = read_failure(record)
    assert failure is not None and failure.exit_code == ExitCode.TRANSIENT
    assert failure.error == "ConnectionRefusedError"
    result = CliRunner().invoke(group, ["bug"])
    assert isinstance(result.exception, KeyError), "a bug keeps its traceback"
    assert read_failure(record).exit_code == ExitCode.FAILED


# ---- real DVC stages that fail -----------------------------------------------------------
@pytest.fixture
def failing_project(tmp_path: Path) -> Path:
    """A DVC project whose stages are real `genops` commands that fail, and one non-genops."""
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train-images-idx3-ubyte").write_text("not an IDX file\n")
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    stages = {
        "bad-data": {"cmd": "genops validate --data-dir data --report-dir reports/validation"},
        "no-params": {"cmd": "genops --params missing.yaml validate"},
        "unreachable": {"cmd": "genops rollback --task anomaly --version 1"},
        "silent": {"cmd": "python -c 'raise SystemExit(75)'"},  # not ours: no record
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True, env=_dvc_env())
    return root


def _dvc_env() -> dict[str, str]:
    import os
    import sys

    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def test_dvc_repro_masks_the_exit_code(failing_project):
    proc = subprocess.run(
        ["dvc", "repro", "--single-item", "bad-data"],
        cwd=failing_project,
        env=_dvc_env(),
        capture_output=True,
    )
    assert proc.returncode == 255, "DVC passes the command's exit code through now: use it"


def test_failing_stages_are_classified_by_their_record(failing_project, monkeypatch):
    from pipelines.orchestration.pipeline_flow import FAILURES_DIR, run_stage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    root = str(failing_project)
    with pytest.raises(DataValidationFailed, match="bad magic number"):
        run_stage.fn(root, "bad-data")
    with pytest.raises(TransientStageError, match="MlflowException"):
        run_stage.fn(root, "unreachable")
    with pytest.raises(StageFailed, match="FileNotFoundError"):
        run_stage.fn(root, "no-params")
    with pytest.raises(StageFailed, match="no failure recorded"):
        run_stage.fn(root, "silent")
    stale = failing_project / FAILURES_DIR / "silent.json"
    stale.write_text('{"code": 75, "error": "Old", "message": "an earlier attempt"}')
    with pytest.raises(StageFailed, match="no failure recorded"):
        run_stage.fn(root, "silent")  # a record left by an earlier attempt is not read
