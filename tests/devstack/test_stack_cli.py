"""`genops stack`: the loopback stack's commands, without starting anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from pipelines.cli import main


def test_status_and_down_without_a_stack(tmp_path):
    state_dir = tmp_path / "stack"
    status = CliRunner().invoke(main, ["stack", "status", "--state-dir", str(state_dir)])
    assert status.exit_code == 1 and json.loads(status.output) == {"running": False}
    down = CliRunner().invoke(main, ["stack", "down", "--state-dir", str(state_dir)])
    assert down.exit_code == 0 and down.output.strip() == "no stack running"


def test_up_options_keep_their_names_and_defaults():
    from devstack.stack import DEFAULT_DIR, POOL

    text = CliRunner().invoke(main, ["stack", "up", "--help"]).output
    options = ("--state-dir", "--workers", "--pool", "--no-prefect", "--ui", "--no-share-cores")
    assert all(option in text for option in options), text
    assert str(DEFAULT_DIR) in text and POOL in text


def test_genops_help_shows_the_whole_product():
    genops = Path(sys.executable).parent / "genops"
    text = subprocess.run([genops, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("validate", "train", "register", "flow", "drift", "bento", "stack", "data"):
        assert f"\n  {command} " in text, command
    assert "75" in text and "Exit codes" in text
