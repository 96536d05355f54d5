"""The `mlflow` source's private download cache: only folders nobody else can change.

A cached bundle is served only when every folder from the cache root down to it belongs to
us and is writable by nobody else, and the bundle itself passes the registry's check
(models.registry_copy.cache_problem). A cache root someone else created first (e.g. in the
shared temp folder) is never used, nor anything in it.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from pathlib import Path

from models.bundle import BundleMeta
from models.registry_copy import cache_problem

log = logging.getLogger("genops.serving")
ENV_CACHE = "GENOPS_MODEL_CACHE"


def cache_root(configured: Path | str | None = None) -> Path:
    """The private cache root: `configured`, else GENOPS_MODEL_CACHE, else the default."""
    return private_cache_root(Path(configured or os.environ.get(ENV_CACHE) or default_cache_dir()))


def default_cache_dir() -> Path:
    """`$TMPDIR/genops-models-<uid>`: per user, so nobody else can plant bundles in it."""
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"genops-models-{user}"


def _not_ours(path: Path) -> str | None:
    """Why `path` (a folder of the cache) could be changed by someone else, or None."""
    if not hasattr(os, "getuid"):
        return None
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a real folder"
    if st.st_uid != os.getuid():
        return f"{path} belongs to uid {st.st_uid}, not to us"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others"
    return None


def private_cache_root(root: Path) -> Path:
    """`root` if it is ours and private (or can be made so), else a fresh private folder.

    A cache root that someone else created first (e.g. in the shared temp folder) could be used
    to swap files between our check and our load, so it is never used; neither are its contents.
    """
    root = Path(root)
    try:
        if not root.exists():
            private_dir(root)
        problem = _not_ours(root)
    except OSError as exc:
        problem = str(exc)
    if problem is None:
        return root
    fresh = Path(tempfile.mkdtemp(prefix="genops-models-"))
    log.warning("model cache %s is not private (%s): using %s instead", root, problem, fresh)
    return fresh


def tree_problem(root: Path, directory: Path) -> str | None:
    """Why a folder between the cache root and `directory` could be changed by someone else."""
    root, directory = Path(root), Path(directory)
    try:
        parts = directory.relative_to(root).parts
    except ValueError:
        return f"{directory} is outside the cache {root}"
    path = root
    for part in ("", *parts[:-1]):
        path = path / part if part else path
        try:
            problem = _not_ours(path)
        except OSError as exc:
            problem = str(exc)
        if problem:
            return problem
    return None


def private_dir(path: Path) -> None:
    """Create `path` (mode 0700) if it is missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def untrusted(root: Path, directory: Path, expected: BundleMeta) -> str | None:
    """Why the cached bundle `directory` must not be served as `expected`, or None if it may."""
    return tree_problem(root, directory) or cache_problem(directory, expected)
