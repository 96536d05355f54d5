"""The project's shared names and rules, defined once on the ground floor.

`pipelines/` (which writes the registry and the bundles) and `serving/` (which reads them) both
import from here and never retype a name: the family list, the tasks with their metrics and
directions, the registered-model names and the alias, the tag keys on a registered version, the
bundle layout, the ranking rule, the project root and the tracking-URI rule.

This module imports nothing heavy (no torch, no MLflow) so any layer can use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ---- families ---------------------------------------------------------------------------------
# family name -> "module:Class"; imported lazily so a service loads only what it serves.
FAMILY_CLASSES: dict[str, str] = {
    "autoencoder": "models.autoencoder.model:Autoencoder",
    "vae": "models.vae.model:VAE",
    "gan": "models.gan.model:GAN",
    "diffusion": "models.diffusion.model:Diffusion",
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_CLASSES)


def check_family(family: str) -> str:
    """Return `family` or raise ValueError naming the known ones."""
    if family not in FAMILY_CLASSES:
        raise ValueError(f"unknown model family {family!r}; known: {list(FAMILIES)}")
    return family


# ---- tasks, registered models, alias ----------------------------------------------------------
ALIAS = "champion"
CHALLENGER = "challenger"  # the alias of a task's challenger: served beside the champion
MODEL_PREFIX = "genops-"
GENERATION, ANOMALY = "generation", "anomaly"


@dataclass(frozen=True)
class Task:
    """A task the registry keeps a champion for, and the metric that decides it."""

    name: str
    metric: str
    higher_is_better: bool

    @property
    def registered_model(self) -> str:
        return f"{MODEL_PREFIX}{self.name}"

    def improvement(self, candidate: float, champion: float) -> float:
        """How much better the candidate is (positive = better), in metric units."""
        return candidate - champion if self.higher_is_better else champion - candidate


# The one home of each task's deciding metric and its direction: the metric table
# (pipelines/evaluation/metric_table.py) builds these metrics' rows from here.
TASKS: dict[str, Task] = {
    GENERATION: Task(GENERATION, "fd_judge", higher_is_better=False),
    ANOMALY: Task(ANOMALY, "anomaly_auroc_mean", higher_is_better=True),
}


# ---- composites: models assembled from trained families, never trained themselves ------------
# They are evaluated, registered, gated and served like a family, but have no training stage
# (so they are not in FAMILIES, which training, the contract suite and per-family serving roles
# iterate). name -> "module:Class", and the tasks each competes in: the ensemble's `sample` only
# delegates to a member, so it never competes for generation.
COMPOSITE_CLASSES: dict[str, str] = {"ensemble": "models.ensemble.model:Ensemble"}
COMPOSITE_TASKS: dict[str, tuple[str, ...]] = {"ensemble": (ANOMALY,)}
MODEL_CLASSES: dict[str, str] = FAMILY_CLASSES | COMPOSITE_CLASSES
MODELS: tuple[str, ...] = tuple(MODEL_CLASSES)  # every evaluable model: families, then composites


def check_model(name: str) -> str:
    """Return `name` (a family or a composite) or raise ValueError naming the known ones."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; known: {list(MODELS)}")
    return name


def competes(name: str, task: str) -> bool:
    """Whether model `name` may be ranked and gated for `task` (every family competes in all)."""
    return name in FAMILY_CLASSES or task in COMPOSITE_TASKS.get(name, ())


def family_model_name(family: str) -> str:
    """The registered model that holds every evaluated candidate of `family` (or composite)."""
    return f"{MODEL_PREFIX}{check_model(family)}"


# ---- tag keys on a registered version (written by pipelines, read by serving) ------------------
class Tag:
    FAMILY = "family"
    DATA_VERSION = "data_version"
    WEIGHTS_SHA256 = "weights_sha256"
    # the bundle's config.json: with the weights, what the model *is* (an ensemble's views,
    # combination and member calibrations live there, not in its weights)
    CONFIG_SHA256 = "config_sha256"
    # the weights less the state a model derives from the rest (models.io.state_sha256): equal
    # with other weights, the same learned model saved in another format (a format upgrade)
    STATE_SHA256 = "state_sha256"
    PARAMS_HASH = "params_hash"
    GIT_COMMIT = "git_commit"
    JUDGE_VERSION = "judge_version"
    METRIC_PREFIX = "metric."
    PROMOTION_PREFIX = "promotion."
    LINEAGE = (
        FAMILY, DATA_VERSION, WEIGHTS_SHA256, CONFIG_SHA256, STATE_SHA256, PARAMS_HASH,
        GIT_COMMIT, JUDGE_VERSION,
    )  # fmt: skip


def metric_tag(metric: str) -> str:
    return f"{Tag.METRIC_PREFIX}{metric}"


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The numeric `metric.<name>` tags of a registered version."""
    out: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith(Tag.METRIC_PREFIX):
            try:
                out[key.removeprefix(Tag.METRIC_PREFIX)] = float(value)
            except (TypeError, ValueError):
                continue
    return out


# ---- served Prometheus metrics (written by serving's /metrics, read by the drift watch) --------
SCORE_HISTOGRAM = "genops_anomaly_score"  # per (family, version): the raw_score /score served
ANOMALY_COUNTER = "genops_anomalies"  # per (family, version): images /score flagged (…_total)


# ---- bundle layout: what one registered version / served model folder holds --------------------
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CALIBRATION_FILE = "calibration.json"
META_FILE = "meta.json"
# what a registered version's artifact folder must hold to be evaluated or served
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, CALIBRATION_FILE)
BUNDLE_FILES = (*MODEL_FILES, META_FILE)
FAMILIES_ROLE_PREFIX = "families/"
REGISTERED_ARTIFACT_PATH = "model"  # the artifact folder of an evaluate run that gets registered


CHALLENGERS_ROLE_PREFIX = "challengers/"


def family_role(family: str) -> str:
    """The serving role of a family's latest version: "families/<family>"."""
    return f"{FAMILIES_ROLE_PREFIX}{family}"


def challenger_role(task: str) -> str:
    """The serving role of a task's challenger (`<registered model>@challenger`)."""
    return f"{CHALLENGERS_ROLE_PREFIX}{task}"


# ---- ranking ----------------------------------------------------------------------------------
def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def rank(
    names: Iterable[str], value: Callable[[str], Any], higher_is_better: bool
) -> list[tuple[str, float | None]]:
    """Names ordered best first by `value(name)`; missing or non-finite values come last
    (as None), ties broken by name. The one ranking rule of the leaderboard and the gate."""

    def key(name: str) -> tuple[int, float, str]:
        v = value(name)
        if not _finite(v):
            return (1, 0.0, name)
        return (0, -float(v) if higher_is_better else float(v), name)

    ordered = sorted(names, key=key)
    return [(n, float(value(n)) if _finite(value(n)) else None) for n in ordered]


# ---- project root and the tracking-URI rule ---------------------------------------------------
ROOT_ENV = "GENOPS_ROOT"
MLFLOW_STATE_DIR = ".mlflow"


def project_root(root: Path | str | None = None) -> Path:
    """An explicit root, else $GENOPS_ROOT, else the working directory."""
    return Path(root or os.environ.get(ROOT_ENV) or ".").resolve()


def tracking_uri(root: Path | str | None = None) -> str:
    """$MLFLOW_TRACKING_URI when set, else the project's SQLite store `<root>/.mlflow/mlflow.db`."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{project_root(root) / MLFLOW_STATE_DIR / 'mlflow.db'}"


def uses_embedded_store() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


# ---- showing and storing URIs: never their credentials ------------------------------------------
def redact_uri(uri: str) -> str:
    """`uri` without user:password, query string and fragment (what may be shown or stored).

    A URI with none of these (e.g. `sqlite:////abs/mlflow.db`) is returned exactly as given.
    """
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if "@" not in parts.netloc and not parts.query and not parts.fragment:
        return uri
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_text(text: str) -> str:
    """`text` with every URI in it redacted (error messages may quote a URI with its secrets)."""
    import re

    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+", lambda m: redact_uri(m.group(0)), text)


# ---- model cards (written by the pipeline for every registered version, shown by the service) ---
MODEL_CARD_DIR = "card"  # in a served bundle folder, and the leaf of the card's artifact path
MODEL_CARD_FILES = ("card.md", "card.html")
MODEL_CARD_TAG = "model_card"  # on a registered version: the card's artifact path in its run


def model_card_artifact_path(name: str, version: str) -> str:
    """Where the card of registered version `name` v`version` lives in its run's artifacts."""
    return f"model_cards/{name}/v{version}/{MODEL_CARD_DIR}"


def mlflow_client(uri: str | None = None) -> Any:
    """An MlflowClient whose tracking *and* registry URI are `uri` (default: the rule above).

    Passing only `tracking_uri` is not enough: MLflow then takes the registry URI from the
    process-wide `mlflow.set_registry_uri`, which another store may have set earlier.
    """
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
