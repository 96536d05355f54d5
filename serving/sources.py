"""Where the service finds its model bundles: a BentoML model, the MLflow registry, or a folder.

Chosen by `GENOPS_MODEL_SOURCE`:
    bento[:<tag>]  default inside a built Bento: the BentoML model `genops-models` (or <tag>),
                   a snapshot written by `genops bento import-models`
    mlflow         development: champions and per-family latest straight from the registry
    dir:<path>     a local folder (tests, air-gapped hosts)

Every source resolves to the same layout of bundle folders (see serving.bundle):
    generation/           the `genops-generation@champion` bundle
    anomaly/              the `genops-anomaly@champion` bundle
    challengers/<task>/   the `genops-<task>@challenger` bundle, where the task has one
    families/<family>/    the highest version of `genops-<family>`
and each task's live canary, if any (models.canary: a registered-model tag in MLflow,
`canary.json` in a folder); a change of canary changes the fingerprint, so every worker
reloads to it like to an alias move.

`mlflow` is imported lazily and only by the mlflow paths: a Bento serving from its own model
store needs neither MLflow nor a tracking server. The `mlflow` source copies versions with
models.registry_copy (shared with the drift flow) into the private cache of
serving.model_cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import spec
from models.bundle import BundleMeta
from models.canary import CANARY_FILE, CANARY_TAG, Canary
from models.registry_copy import TASK_MODELS, fetch_card, materialize_version, meta_from_version
from models.spec import (
    ALIAS,
    ANOMALY,
    BUNDLE_FILES,
    CHALLENGER,
    FAMILIES,
    FAMILIES_ROLE_PREFIX,
    GENERATION,
    MODEL_CARD_DIR,
    challenger_role,
    family_model_name,
    family_role,
    redact_text,
    redact_uri,
)
from serving.model_cache import cache_root, private_dir, untrusted

log = logging.getLogger("genops.serving")

ENV_SOURCE = "GENOPS_MODEL_SOURCE"
BENTO_MODEL = "genops-models"


@dataclass(frozen=True)
class Snapshot:
    """One read of a source: the bundles it offers now and the fingerprint of exactly those.

    `expected` is the source's own word on each role's identity (for the registry: the
    registered name, version and weights sha256); a loaded bundle that disagrees is refused.
    `errors` says why a role the source lists has no bundle (e.g. a failed download).
    `canaries` are the tasks' live canaries (task -> Canary).
    """

    fingerprint: str
    bundles: Mapping[str, Path]
    expected: Mapping[str, BundleMeta] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    canaries: Mapping[str, Canary] = field(default_factory=dict)


class ModelSource(ABC):
    """Resolves roles ("generation", "anomaly", "families/<f>") to local bundle folders."""

    spec: str

    @abstractmethod
    def fingerprint(self) -> str:
        """A cheap string that changes whenever the set of served bundles changes."""

    @abstractmethod
    def bundles(self) -> dict[str, Path]:
        """Role -> local bundle folder (downloaded first where needed)."""

    def canaries(self) -> dict[str, Canary]:
        """Task -> its live canary (none by default)."""
        return {}

    def snapshot(self) -> Snapshot:
        """Fingerprint, then bundles: a change in between only causes one more reload."""
        fingerprint = self.fingerprint()
        return Snapshot(fingerprint, self.bundles(), canaries=self.canaries())


class DirSource(ModelSource):
    """A folder with generation/, anomaly/, challengers/<task>/ and families/<family>/ bundle
    subfolders."""

    def __init__(self, root: Path, spec: str | None = None) -> None:
        self.root = Path(root)
        self.spec = spec or f"dir:{self.root}"

    def bundles(self) -> dict[str, Path]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model source folder {self.root} does not exist")
        found = {role: self.root / role for role in (GENERATION, ANOMALY)}
        found |= {challenger_role(t): self.root / challenger_role(t) for t in (GENERATION, ANOMALY)}
        families = self.root / FAMILIES_ROLE_PREFIX.rstrip("/")
        if families.is_dir():
            for sub in sorted(p for p in families.iterdir() if p.is_dir()):
                found[family_role(sub.name)] = sub
        return {role: path for role, path in found.items() if path.is_dir()}

    def canaries(self) -> dict[str, Canary]:
        """`canary.json` at the root: {task: {"version", "share", "started_at"}}."""
        path = self.root / CANARY_FILE
        if not path.is_file():
            return {}
        records = json.loads(path.read_text())
        return {task: Canary.loads(task, record) for task, record in records.items()}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        try:
            bundles = self.bundles()
        except FileNotFoundError:
            return "missing"
        with contextlib.suppress(FileNotFoundError):
            digest.update(b"canary:" + (self.root / CANARY_FILE).read_bytes())
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
        self.tracking_uri = tracking_uri or spec.tracking_uri()
        self.cache_dir = cache_root(cache_dir)
        shown = redact_uri(self.tracking_uri)
        self.spec = f"mlflow:{shown}"
        self.namespace = hashlib.sha256(shown.encode()).hexdigest()[:16]

    def bundle_dir(self, name: str, version: str) -> Path:
        """Where version `version` of registered model `name` is cached."""
        return self.cache_dir / self.namespace / name / str(version)

    def fingerprint(self) -> str:
        client = mlflow_client(self.tracking_uri)
        return versions_fingerprint(registry_versions(client=client), registry_canaries(client))

    def bundles(self) -> dict[str, Path]:
        return dict(self.snapshot().bundles)

    def snapshot(self) -> Snapshot:
        """One registry read: the fingerprint always describes the versions downloaded."""
        client = mlflow_client(self.tracking_uri)
        versions, canaries = registry_versions(client=client), registry_canaries(client)
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
        fingerprint = versions_fingerprint(versions, canaries)
        return Snapshot(fingerprint, bundles, expected, errors, canaries)

    def _cached(self, mv: Any, role: str, meta: BundleMeta) -> Path:
        dst = self.bundle_dir(mv.name, str(mv.version))
        if dst.exists():
            problem = untrusted(self.cache_dir, dst, meta)
            if problem is None:
                if not (dst / MODEL_CARD_DIR).is_dir():  # the card may be logged after caching
                    fetch_card(mv, dst, self.tracking_uri)
                return dst
            log.warning("not trusting cached %s (%s): downloading it again", dst, problem)
        private_dir(self.cache_dir)
        return materialize_version(mv, role, dst, self.tracking_uri, verify=True)


def versions_fingerprint(
    versions: Mapping[str, Any], canaries: Mapping[str, Canary] | None = None
) -> str:
    """`role=name:version,...` of registry versions (sorted by role), then `canary:<task>=
    v<version>@<share>` of each live canary."""
    found = [f"{role}={mv.name}:{mv.version}" for role, mv in sorted(versions.items())]
    found += [f"canary:{c.label()}" for _, c in sorted((canaries or {}).items())]
    return ",".join(found)


def mlflow_client(tracking_uri: str | None = None) -> Any:
    from models.spec import mlflow_client as client

    return client(tracking_uri or spec.tracking_uri())


def registry_canaries(client: Any) -> dict[str, Canary]:
    """Task -> the canary recorded on its registered model (`CANARY_TAG`); an unreadable
    record is logged and ignored (no canary rather than a wrong one)."""
    from mlflow.exceptions import MlflowException

    found: dict[str, Canary] = {}
    for task, name in TASK_MODELS.items():
        try:
            text = (client.get_registered_model(name).tags or {}).get(CANARY_TAG)
        except MlflowException:
            continue
        if text:
            try:
                found[task] = Canary.loads(task, text)
            except ValueError as exc:
                log.error("ignoring the canary of %s: %s", name, exc)
    return found


def registry_versions(tracking_uri: str | None = None, client: Any = None) -> dict[str, Any]:
    """Role -> MLflow ModelVersion: both champions (by alias), each task's challenger where
    it has one, and each family's latest."""
    from mlflow.exceptions import MlflowException

    client = client or mlflow_client(tracking_uri)
    found: dict[str, Any] = {}
    for role, name in TASK_MODELS.items():
        try:
            found[role] = client.get_model_version_by_alias(name, ALIAS)
        except MlflowException as exc:
            log.warning("no %s@%s in the registry: %s", name, ALIAS, exc)
        with contextlib.suppress(MlflowException):  # most of the time there is none
            found[challenger_role(role)] = client.get_model_version_by_alias(name, CHALLENGER)
    for family in FAMILIES:
        try:
            versions = client.search_model_versions(f"name='{family_model_name(family)}'")
        except MlflowException:
            versions = []
        if versions:
            found[family_role(family)] = max(versions, key=lambda mv: int(mv.version))
    return found


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
