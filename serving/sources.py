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
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from models.calibration import CALIBRATION_FILE
from models.io import CONFIG_FILE, FAMILIES, WEIGHTS_FILE
from serving.bundle import META_FILE, BundleMeta, verify_weights, write_meta

log = logging.getLogger("genops.serving")

ENV_SOURCE = "GENOPS_MODEL_SOURCE"
BENTO_MODEL = "genops-models"
ALIAS = "champion"
GENERATION, ANOMALY = "generation", "anomaly"
TASK_MODELS = {GENERATION: "genops-generation", ANOMALY: "genops-anomaly"}


def family_role(family: str) -> str:
    return f"families/{family}"


def family_model_name(family: str) -> str:
    return f"genops-{family}"


class ModelSource(ABC):
    """Resolves roles ("generation", "anomaly", "families/<f>") to local bundle folders."""

    spec: str

    @abstractmethod
    def fingerprint(self) -> str:
        """A cheap string that changes whenever the set of served bundles changes."""

    @abstractmethod
    def bundles(self) -> dict[str, Path]:
        """Role -> local bundle folder (downloaded first where needed)."""


class DirSource(ModelSource):
    """A folder with generation/, anomaly/ and families/<family>/ bundle subfolders."""

    def __init__(self, root: Path, spec: str | None = None) -> None:
        self.root = Path(root)
        self.spec = spec or f"dir:{self.root}"

    def bundles(self) -> dict[str, Path]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"model source folder {self.root} does not exist")
        found = {role: self.root / role for role in (GENERATION, ANOMALY)}
        families = self.root / "families"
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
            for name in (META_FILE, CONFIG_FILE, WEIGHTS_FILE, CALIBRATION_FILE):
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
    """Development mode: read champions and per-family latest versions from the registry."""

    def __init__(self, tracking_uri: str | None = None, cache_dir: Path | None = None) -> None:
        self.tracking_uri = tracking_uri or default_tracking_uri()
        root = os.environ.get("GENOPS_MODEL_CACHE") or Path(tempfile.gettempdir()) / "genops-models"
        self.cache_dir = Path(cache_dir or root)
        self.spec = f"mlflow:{self.tracking_uri}"

    def fingerprint(self) -> str:
        versions = registry_versions(self.tracking_uri)
        return ",".join(f"{role}={mv.name}:{mv.version}" for role, mv in sorted(versions.items()))

    def bundles(self) -> dict[str, Path]:
        out = {}
        for role, mv in registry_versions(self.tracking_uri).items():
            dst = self.cache_dir / mv.name / str(mv.version)
            try:
                if not (dst / META_FILE).is_file():
                    # unverified here: load_bundle checks the sha256 and reports a mismatch per role
                    materialize_version(mv, role, dst, self.tracking_uri, verify=False)
            except Exception as exc:
                log.error("cannot download %s v%s: %s", mv.name, mv.version, exc)
                continue
            out[role] = dst
        return out


def default_tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the project's SQLite store (same rule as the pipelines)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(os.environ.get("GENOPS_ROOT", ".")).resolve()
    return f"sqlite:///{root / '.mlflow' / 'mlflow.db'}"


def registry_versions(tracking_uri: str | None = None) -> dict[str, Any]:
    """Role -> MLflow ModelVersion: both champions (by alias) and each family's latest."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
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
    tags = dict(mv.tags or {})
    for key in ("family", "weights_sha256"):
        if not tags.get(key):
            raise ValueError(f"{mv.name} v{mv.version} has no {key!r} tag")
    metrics = {}
    for key, value in tags.items():
        if key.startswith("metric."):
            try:
                metrics[key.removeprefix("metric.")] = float(value)
            except ValueError:
                continue
    return BundleMeta(
        name=mv.name,
        version=str(mv.version),
        family=tags["family"],
        weights_sha256=tags["weights_sha256"],
        tasks=(role,) if role in TASK_MODELS else (),
        data_version=tags.get("data_version", "unknown"),
        metrics=metrics,
        git_commit=tags.get("git_commit", "unknown"),
        params_hash=tags.get("params_hash", "unknown"),
        source=str(mv.source),
    )


def materialize_version(
    mv: Any, role: str, dst: Path, tracking_uri: str | None = None, verify: bool = True
) -> Path:
    """Download a version's artifact folder into `dst` as a bundle (atomic rename).

    With `verify`, raise ValueError unless the weights match the version's weights_sha256 tag.
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
        for name in (CONFIG_FILE, WEIGHTS_FILE, CALIBRATION_FILE):
            if not (Path(local) / name).is_file():
                raise FileNotFoundError(f"{mv.name} v{mv.version}: artifact has no {name}")
            shutil.copy2(Path(local) / name, bundle / name)
        if verify:
            verify_weights(bundle, meta.weights_sha256)
        write_meta(bundle, meta)
        if dst.exists():
            shutil.rmtree(dst)
        try:
            os.replace(bundle, dst)
        except OSError:  # another worker finished the same download first
            if not (dst / META_FILE).is_file():
                raise
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
