"""The `system` marker: tests that start a real server are marked, plain unit tests are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    "tests/serving/test_http.py",  # the session `server` fixture
    "tests/serving/test_workers.py",  # a module fixture of its own starts two workers
    "tests/pipelines/orchestration/test_stage_order.py",  # pure
    "tests/serving/test_devserver.py",  # the launcher, tried on a stand-in process
]


def collected(marker: str) -> set[str]:
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*command, "-m", marker, *FILES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {line.split("::")[0] for line in proc.stdout.splitlines() if "::" in line}


def test_server_tests_are_system_and_the_rest_unit():
    assert collected("system") == {FILES[0], FILES[1]}
    assert collected("not system") == {FILES[2], FILES[3]}
