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
