"""Package served models into the BentoML model store and build the Bento.

    genops bento import-models [--tracking-uri URI]   # registry -> BentoML store
    genops bento build [--bentofile serving/bentofile.yaml]
    genops bento import-dir <folder>                  # a dir: source -> store

(the commands live in pipelines/cli/bento.py: serving never imports pipelines).

The pipeline calls `import_from_registry()` and then `build_bento()` (or runs
`bentoml build -f serving/bentofile.yaml .`): the Bento then carries the `genops-models`
snapshot and serves with no MLflow server, from `GENOPS_MODEL_SOURCE=bento` (its default).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models import spec
from models.registry_copy import materialize_version
from models.spec import MODEL_CARD_DIR, redact_text, redact_uri
from serving.bundle import copy_bundle, load_bundle
from serving.catalog import REQUIRED_ROLES
from serving.sources import BENTO_MODEL, DirSource, registry_versions

log = logging.getLogger("genops.serving")
REPO = Path(__file__).resolve().parents[1]


def _store_snapshot(staged: Path, model_name: str, origin: str) -> str:
    """Verify every staged bundle loads, then save the folder as one BentoML model version.

    `origin` is shown in the model's labels and metadata, so it is stored redacted.
    """
    import bentoml

    origin = redact_text(origin)
    bundles = DirSource(staged).bundles()
    missing = [role for role in REQUIRED_ROLES if role not in bundles]
    if missing:
        raise LookupError(f"cannot build a servable snapshot: missing {missing} in {origin}")
    metas = {role: load_bundle(path).meta for role, path in sorted(bundles.items())}
    labels = {"origin": origin[:63].replace("/", "_").replace(":", "_") or "unknown"}
    for role in REQUIRED_ROLES:
        labels[f"{role}_family"] = metas[role].family
        labels[f"{role}_version"] = metas[role].version
    metadata: dict[str, Any] = {
        "origin": origin,
        "bundles": {role: m.to_dict() for role, m in metas.items()},
    }
    with bentoml.models.create(model_name, labels=labels, metadata=metadata) as model:
        for role, path in bundles.items():
            copy_bundle(path, Path(model.path) / role)  # re-verifies the sha256 on the copy
            if (path / MODEL_CARD_DIR).is_dir():
                shutil.copytree(path / MODEL_CARD_DIR, Path(model.path) / role / MODEL_CARD_DIR)
    log.info("stored %s with %s", model.tag, sorted(metas))
    return str(model.tag)


def import_from_registry(tracking_uri: str | None = None, model_name: str = BENTO_MODEL) -> str:
    """Copy both champions and each family's latest version from MLflow into the BentoML store.

    Each version's artifact folder is downloaded, its weights are checked against the version's
    `weights_sha256` tag and its meta.json is written from the tags (name, version, family,
    data_version, git_commit, params_hash, metric.*). Raises LookupError when a champion alias
    is missing and ValueError on a checksum mismatch. Returns the new tag, e.g.
    "genops-models:abc123"; `bentoml build` then packs `genops-models:latest`.
    """
    uri = tracking_uri or spec.tracking_uri()
    versions = registry_versions(uri)
    with tempfile.TemporaryDirectory(prefix="genops-import-") as tmp:
        for role, mv in versions.items():
            materialize_version(mv, role, Path(tmp) / role, uri)
        return _store_snapshot(Path(tmp), model_name, f"mlflow:{redact_uri(uri)}")


def import_from_dir(folder: Path, model_name: str = BENTO_MODEL) -> str:
    """Store a `dir:` source folder (generation/, anomaly/, families/<f>/) as a BentoML model."""
    return _store_snapshot(Path(folder), model_name, f"dir:{Path(folder).resolve()}")


def build_bento(
    bentofile: Path = REPO / "serving" / "bentofile.yaml", build_ctx: Path = REPO
) -> str:
    """`bentoml build -f <bentofile> <build_ctx>` as a function; returns the Bento tag."""
    import bentoml

    bento = bentoml.bentos.build_bentofile(str(bentofile), build_ctx=str(build_ctx))
    return str(bento.tag)
