"""The stack's family workers split the machine's cores (devstack.stack.core_shares, _spawn)."""

from __future__ import annotations

import os
import sys

from devstack import stack


def test_core_shares_split_the_cores_between_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert stack.core_shares(2) == [{0, 2, 4}, {1, 3}]
    assert stack.core_shares(1) == [None]  # one worker keeps every core
    assert stack.core_shares(6) == [None] * 6  # fewer cores than workers: no split


def test_a_spawned_worker_runs_on_its_share(tmp_path):
    core = min(os.sched_getaffinity(0))
    code = "import os; print(sorted(os.sched_getaffinity(0)))"
    proc = stack._spawn([sys.executable, "-c", code], tmp_path / "log", dict(os.environ),
                        tmp_path, {core})  # fmt: skip
    assert proc.wait(timeout=60) == 0
    assert (tmp_path / "log").read_text().strip() == f"[{core}]"
