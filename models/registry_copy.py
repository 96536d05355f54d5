"""Copy a registered MLflow model version into a local bundle folder, and judge such a copy;
and the way back, `register_folder`, for bundles built outside the pipeline (benchmarks, tests).

The registry-to-bundle copier that both floors above use: serving's `mlflow` source fills
its private cache with it (serving.sources), and the drift flow takes the anomaly champion's
bundle the same way (pipelines.orchestration.drift_flow). A copy is all or nothing (assembled
beside its destination, then renamed into place) and checked against the registry's tags:
the registry is the authority on name, version and weights sha256, never the folder itself.

`mlflow` is imported lazily, by the functions that talk to the registry.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from models import spec
from models.bundle import (
    BundleMeta,
    check_model_files,
    meta_from_tags,
    read_meta,
    verify_weights,
    write_meta,
)
from models.spec import (
    BUNDLE_FILES,
    META_FILE,
    MODEL_CARD_DIR,
    MODEL_CARD_FILES,
    MODEL_CARD_TAG,
    MODEL_FILES,
    TASKS,
    redact_text,
    redact_uri,
)

log = logging.getLogger("genops.registry")

# role ("generation", "anomaly") -> the registered model whose champion serves it
TASK_MODELS = {name: task.registered_model for name, task in TASKS.items()}


def meta_from_version(mv: Any, role: str) -> BundleMeta:
    """BundleMeta from a registered version's tags (family, weights_sha256, metric.<name>...)."""
    task = role.removeprefix(spec.CHALLENGERS_ROLE_PREFIX)
    tasks = (task,) if task in TASK_MODELS else ()
    source = redact_uri(str(mv.source))  # stored in meta.json and shown by /metadata
    return meta_from_tags(mv.name, str(mv.version), dict(mv.tags or {}), tasks, source)


def fetch_card(mv: Any, bundle: Path, tracking_uri: str | None = None) -> bool:
    """Download the version's model card (tag `model_card`) into `bundle/card`; best effort.

    The card is for people (shown sandboxed by the page), not for serving: a version without
    one, or a failed download, is logged and served all the same.
    """
    import mlflow

    path = (mv.tags or {}).get(MODEL_CARD_TAG)
    if not path or not getattr(mv, "run_id", None):
        return False
    staging = Path(tempfile.mkdtemp(dir=bundle.parent, prefix=f".{bundle.name}.card."))
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path=path,
                dst_path=str(staging),
                tracking_uri=tracking_uri or spec.tracking_uri(),
            )
        )
        if not all((local / name).is_file() for name in MODEL_CARD_FILES):
            raise FileNotFoundError(f"card artifact lacks {MODEL_CARD_FILES}")
        card = bundle / MODEL_CARD_DIR
        if card.exists():
            shutil.rmtree(card)
        shutil.copytree(local, card)
        return True
    except Exception as exc:
        log.warning("no model card for %s v%s: %s", mv.name, mv.version, redact_text(str(exc)))
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def materialize_version(
    mv: Any, role: str, dst: Path, tracking_uri: str | None = None, verify: bool = True
) -> Path:
    """Download a version's artifact folder into `dst` as a bundle; all or nothing.

    The bundle is assembled in a staging folder beside `dst` and renamed into place, so
    `dst` is never a half download. A folder already at `dst` is moved aside first (it is
    only replaced when it was not trusted). With `verify`, raise ValueError unless the
    weights match the version's weights_sha256 tag.
    """
    import mlflow

    meta = meta_from_version(mv, role)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=str(mv.source),
            dst_path=str(staging / "download"),
            tracking_uri=tracking_uri or spec.tracking_uri(),
        )
        bundle = staging / "bundle"
        bundle.mkdir()
        check_model_files(Path(local), f"{mv.name} v{mv.version}")
        for name in MODEL_FILES:
            shutil.copyfile(Path(local) / name, bundle / name)
            os.chmod(bundle / name, 0o644)
        if verify:
            verify_weights(bundle, meta.weights_sha256)
        fetch_card(mv, bundle, tracking_uri)
        write_meta(bundle, meta)  # last: a folder with meta.json is complete
        os.chmod(bundle, 0o755)
        if dst.exists() or dst.is_symlink():
            os.replace(dst, staging / "replaced")  # atomic; removed with the staging folder
        try:
            os.replace(bundle, dst)
        except OSError:  # another worker finished the same download first: check its work
            if not (dst / META_FILE).is_file():
                raise
            problem = cache_problem(dst, meta) if verify else None
            if problem:
                raise ValueError(f"{dst} appeared meanwhile, not trusted: {problem}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst


def cache_problem(directory: Path, expected: BundleMeta) -> str | None:
    """Why a cached bundle folder must not be served for `expected`, or None if it may.

    The registry's tags are the authority, never the folder's own meta.json: a folder
    someone else created (or a half-written one) is not trusted on its own word.
    """
    directory = Path(directory)
    missing = [name for name in BUNDLE_FILES if not (directory / name).is_file()]
    if missing:
        return f"incomplete, no {missing}"
    if hasattr(os, "getuid"):
        for path in (directory, *(directory / name for name in BUNDLE_FILES)):
            st = path.lstat()
            if st.st_uid != os.getuid() or stat.S_ISLNK(st.st_mode):
                return f"{path.name} is not a file of ours"
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return f"{path.name} is writable by others"
    try:
        cached = read_meta(directory)
    except (OSError, ValueError) as exc:
        return f"unreadable meta: {exc}"
    ours = (cached.name, cached.version, cached.weights_sha256)
    theirs = (expected.name, expected.version, expected.weights_sha256)
    if ours != theirs:
        return f"meta says {ours}, the registry says {theirs}"
    try:
        verify_weights(directory, expected.weights_sha256)
    except (OSError, ValueError) as exc:
        return str(exc)
    return None


def register_folder(
    client: Any, experiment: str, name: str, bundle: Path, tags: dict[str, str] | None = None
) -> str:
    """Log a bundle folder as a run's artifact and register it under `name` with the lineage
    tags the serving side reads (family, weights sha256) plus `tags`; return the version."""
    from models.spec import REGISTERED_ARTIFACT_PATH, Tag

    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(bundle), REGISTERED_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    if not client.search_registered_models(f"name='{name}'"):
        client.create_registered_model(name)
    meta = read_meta(bundle)
    lineage = {Tag.FAMILY: meta.family, Tag.WEIGHTS_SHA256: meta.weights_sha256}
    source = f"{run.info.artifact_uri}/{REGISTERED_ARTIFACT_PATH}"
    version = client.create_model_version(name, source, run.info.run_id,
                                          tags=lineage | (tags or {}))  # fmt: skip
    return str(version.version)
