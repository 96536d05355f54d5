"""Where the service finds its model bundles: a BentoML model, the MLflow registry, or a folder.

Chosen by `GENOPS_MODEL_SOURCE`:
    bento[:<tag>]  default inside a built Bento: the BentoML model `genops-models` (or <tag>),
                   a snapshot written by `python -m serving.build import-models`
    mlflow         development: champions and per-family latest straight from the registry
    dir:<path>     a local folder (tests, air-gapped hosts)

Every source resolves to the same layout of bundle folders (see serving.bundle):
    generation/           the `genops-generation@champion` bundle
    anomaly/              the `genops-anomaly@champion` bundle
    families/<family>/    the highest version of `genops-<family>`

`mlflow` is imported lazily and only by the mlflow paths: a Bento serving from its own model
store needs neither MLflow nor a tracking server.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.bundle import (
    BundleMeta,
    check_model_files,
    meta_from_tags,
    read_meta,
    verify_weights,
    write_meta,
)
from models.spec import (
    ALIAS,
    ANOMALY,
    BUNDLE_FILES,
    FAMILIES,
    FAMILIES_ROLE_PREFIX,
    GENERATION,
    META_FILE,
    MODEL_CARD_DIR,
    MODEL_CARD_FILES,
    MODEL_CARD_TAG,
    MODEL_FILES,
    TASKS,
    family_model_name,
    family_role,
    redact_text,
    redact_uri,
    tracking_uri,
)

log = logging.getLogger("genops.serving")

ENV_SOURCE = "GENOPS_MODEL_SOURCE"
ENV_CACHE = "GENOPS_MODEL_CACHE"
BENTO_MODEL = "genops-models"
TASK_MODELS = {name: task.registered_model for name, task in TASKS.items()}
__all__ = ["ANOMALY", "GENERATION", "family_role", "redact_uri"]


@dataclass(frozen=True)
class Snapshot:
    """One read of a source: the bundles it offers now and the fingerprint of exactly those.

    `expected` is the source's own word on each role's identity (for the registry: the
    registered name, version and weights sha256); a loaded bundle that disagrees is refused.
    `errors` says why a role the source lists has no bundle (e.g. a failed download).
    """

    fingerprint: str
    bundles: Mapping[str, Path]
    expected: Mapping[str, BundleMeta] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)


class ModelSource(ABC):
    """Resolves roles ("generation", "anomaly", "families/<f>") to local bundle folders."""

    spec: str

    @abstractmethod
    def fingerprint(self) -> str:
        """A cheap string that changes whenever the set of served bundles changes."""

    @abstractmethod
    def bundles(self) -> dict[str, Path]:
        """Role -> local bundle folder (downloaded first where needed)."""

    def snapshot(self) -> Snapshot:
        """Fingerprint, then bundles: a change in between only causes one more reload."""
        fingerprint = self.fingerprint()
        return Snapshot(fingerprint, self.bundles())


class DirSource(ModelSource):
    """A folder with generation/, anomaly/ and families/<family>/ bundle subfolders."""

    def __init__(self, root: Path, spec: str | None = None) -> None:
        self.root = Path(root)
        self.spec = spec or f"dir:{self.root}"

    def bundles(self) -> dict[str, Path]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model source folder {self.root} does not exist")
        found = {role: self.root / role for role in (GENERATION, ANOMALY)}
        families = self.root / FAMILIES_ROLE_PREFIX.rstrip("/")
        if families.is_dir():
            for sub in sorted(p for p in families.iterdir() if p.is_dir()):
                found[family_role(sub.name)] = sub
        return {role: path for role, path in found.items() if path.is_dir()}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        try:
            bundles = self.bundles()
        except FileNotFoundError:
            return "missing"
        for role, path in sorted(bundles.items()):
            digest.update(role.encode())
            for name in BUNDLE_FILES:
                try:
                    st = (path / name).stat()
                except FileNotFoundError:
                    digest.update(b"-")
                    continue
                digest.update(f"{name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


class BentoSource(ModelSource):
    """The BentoML model-store snapshot (`genops-models:<version>`) that a Bento ships with."""

    def __init__(self, tag: str = f"{BENTO_MODEL}:latest") -> None:
        self.tag = tag
        self.spec = f"bento:{tag}"

    def _model(self) -> Any:
        import bentoml

        return bentoml.models.get(self.tag)

    def fingerprint(self) -> str:
        try:
            return str(self._model().tag)
        except Exception as exc:  # not imported yet: nothing to serve
            return f"missing:{type(exc).__name__}"

    def bundles(self) -> dict[str, Path]:
        model = self._model()
        return DirSource(Path(model.path), spec=str(model.tag)).bundles()


class MlflowSource(ModelSource):
    """Development mode: read champions and per-family latest versions from the registry.

    Downloads are cached under `<cache>/<tracking-server hash>/<name>/<version>/`. A cached
    folder is used only when it is ours (owner, no group/other write) and matches the
    registry: its meta.json names the registered name, version and weights sha256, and the
    weights hash to the registry's `weights_sha256` tag. Anything else is downloaded again.
    """

    def __init__(self, tracking_uri: str | None = None, cache_dir: Path | None = None) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.cache_dir = private_cache_root(
            Path(cache_dir or os.environ.get(ENV_CACHE) or default_cache_dir())
        )
        shown = redact_uri(self.tracking_uri)
        self.spec = f"mlflow:{shown}"
        self.namespace = hashlib.sha256(shown.encode()).hexdigest()[:16]

    def bundle_dir(self, name: str, version: str) -> Path:
        """Where version `version` of registered model `name` is cached."""
        return self.cache_dir / self.namespace / name / str(version)

    def fingerprint(self) -> str:
        return versions_fingerprint(registry_versions(self.tracking_uri))

    def bundles(self) -> dict[str, Path]:
        return dict(self.snapshot().bundles)

    def snapshot(self) -> Snapshot:
        """One registry read: the fingerprint always describes the versions downloaded."""
        versions = registry_versions(self.tracking_uri)
        bundles: dict[str, Path] = {}
        expected: dict[str, BundleMeta] = {}
        errors: dict[str, str] = {}
        for role, mv in sorted(versions.items()):
            try:
                expected[role] = meta_from_version(mv, role)
                bundles[role] = self._cached(mv, role, expected[role])
            except Exception as exc:
                reason = redact_text(f"{type(exc).__name__}: {exc}")
                log.error("cannot fetch %s v%s for %s: %s", mv.name, mv.version, role, reason)
                errors[role] = reason
        return Snapshot(versions_fingerprint(versions), bundles, expected, errors)

    def _cached(self, mv: Any, role: str, meta: BundleMeta) -> Path:
        dst = self.bundle_dir(mv.name, str(mv.version))
        if dst.exists():
            problem = tree_problem(self.cache_dir, dst) or cache_problem(dst, meta)
            if problem is None:
                if not (dst / MODEL_CARD_DIR).is_dir():  # the card may be logged after caching
                    fetch_card(mv, dst, self.tracking_uri)
                return dst
            log.warning("not trusting cached %s (%s): downloading it again", dst, problem)
        _private_dir(self.cache_dir)
        return materialize_version(mv, role, dst, self.tracking_uri, verify=True)


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
            _private_dir(root)
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


def versions_fingerprint(versions: Mapping[str, Any]) -> str:
    """`role=name:version,...` of registry versions (sorted by role)."""
    return ",".join(f"{role}={mv.name}:{mv.version}" for role, mv in sorted(versions.items()))


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


def _private_dir(path: Path) -> None:
    """Create `path` (mode 0700) if it is missing."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the project's SQLite store (the rule in models.spec)."""
    return tracking_uri()


def registry_versions(tracking_uri: str | None = None) -> dict[str, Any]:
    """Role -> MLflow ModelVersion: both champions (by alias) and each family's latest."""
    from mlflow.exceptions import MlflowException

    from models.spec import mlflow_client

    client = mlflow_client(tracking_uri or default_tracking_uri())
    found: dict[str, Any] = {}
    for role, name in TASK_MODELS.items():
        try:
            found[role] = client.get_model_version_by_alias(name, ALIAS)
        except MlflowException as exc:
            log.warning("no %s@%s in the registry: %s", name, ALIAS, exc)
    for family in FAMILIES:
        try:
            versions = client.search_model_versions(f"name='{family_model_name(family)}'")
        except MlflowException:
            versions = []
        if versions:
            found[family_role(family)] = max(versions, key=lambda mv: int(mv.version))
    return found


def meta_from_version(mv: Any, role: str) -> BundleMeta:
    """BundleMeta from a registered version's tags (family, weights_sha256, metric.<name>...)."""
    tasks = (role,) if role in TASK_MODELS else ()
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
                tracking_uri=tracking_uri or default_tracking_uri(),
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
            tracking_uri=tracking_uri or default_tracking_uri(),
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


def source_from_env(spec: str | None = None) -> ModelSource:
    """Parse `GENOPS_MODEL_SOURCE` ("bento[:tag]", "mlflow", "dir:<path>"); default "bento"."""
    spec = (spec if spec is not None else os.environ.get(ENV_SOURCE, "")).strip() or "bento"
    if spec == "bento":
        return BentoSource()
    if spec.startswith("bento:"):
        tag = spec.removeprefix("bento:")
        return BentoSource(tag if ":" in tag else f"{tag}:latest")
    if spec == "mlflow":
        return MlflowSource()
    if spec.startswith("dir:") and len(spec) > 4:
        return DirSource(Path(spec.removeprefix("dir:")).expanduser())
    raise ValueError(
        f"{ENV_SOURCE}={spec!r} is not understood; use 'bento', 'bento:<tag>', 'mlflow' "
        "or 'dir:<path>'"
    )
