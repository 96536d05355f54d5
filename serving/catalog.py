"""The set of models one service instance serves, loaded from a source as one immutable unit.

A reload builds a whole new `Catalog` and then swaps one reference, so a request that took
the old catalog finishes on the old models and never sees a half-loaded set. The catalog's
fingerprint is the one of the source snapshot it was loaded from, so it names exactly the
versions it serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from models.canary import Canary
from models.spec import (
    ALIAS,
    ANOMALY,
    CHALLENGER,
    FAMILIES_ROLE_PREFIX,
    GENERATION,
    challenger_role,
    redact_text,
)
from serving.bundle import ServedModel, load_bundle
from serving.errors import ModelNotFound, NotReady
from serving.sources import ModelSource, Snapshot

log = logging.getLogger("genops.serving")

REQUIRED_ROLES = (GENERATION, ANOMALY)
CHAMPION = ALIAS


@dataclass(frozen=True)
class Route:
    """Who answers one request: `served`, and when that is a canary, the champion to fall
    back on (`fallback`) should it fail. `canary` is the task's live canary, whoever answers
    (its requests are measured for both sides). `task`: set on a request for the task's
    champion (canary or not), whose latency is measured always: the canary's baseline."""

    served: ServedModel
    fallback: ServedModel | None = None
    canary: Canary | None = None
    task: str | None = None

    @property
    def role(self) -> str:
        return "canary" if self.fallback is not None else CHAMPION


@dataclass(frozen=True)
class Catalog:
    """Loaded models by role, and why any role is not being served."""

    source: str
    fingerprint: str
    roles: Mapping[str, ServedModel] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = REQUIRED_ROLES
    loaded_at: float = 0.0
    canaries: Mapping[str, Canary] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return all(role in self.roles for role in self.required)

    @property
    def families(self) -> dict[str, ServedModel]:
        return {
            role.removeprefix(FAMILIES_ROLE_PREFIX): m
            for role, m in self.roles.items()
            if role.startswith(FAMILIES_ROLE_PREFIX)
        }

    def challenger(self, task: str) -> ServedModel | None:
        """The task's challenger (`<registered model>@challenger`), when one is served."""
        return self.roles.get(challenger_role(task))

    def canary(self, task: str) -> Canary | None:
        """The task's canary, only while its version is the challenger served here."""
        canary, challenger = self.canaries.get(task), self.challenger(task)
        if canary is None or challenger is None or challenger.meta.version != canary.version:
            return None
        return canary

    def route(self, task: str, name: str | None, client: str) -> Route:
        """`resolve`, except that a request for the champion (name None or "champion") from a
        client the task's canary takes (models.canary: sticky by client key) goes to the
        challenger, with the champion as its fallback."""
        served = self.resolve(task, name)
        if name not in (None, CHAMPION):
            return Route(served)
        canary = self.canary(task)
        if canary is not None and canary.takes(client):
            return Route(self.roles[challenger_role(task)], served, canary, task)
        return Route(served, None, canary, task)

    def model_names(self, task: str | None = None) -> list[str]:
        challenged = task is None or self.challenger(task) is not None
        return [CHAMPION, *([CHALLENGER] if challenged else []), *sorted(self.families)]

    def resolve(self, task: str, name: str | None) -> ServedModel:
        """The task's champion (name None or "champion"), its challenger ("challenger"), or a
        family's latest by family name.

        NotReady when the champion is not loaded (why is in /metadata, not in the answer);
        ModelNotFound for a family this catalog does not serve, or a challenger the task has
        not got.
        """
        if name is None or name == CHAMPION:
            if task not in self.roles:
                raise NotReady(f"no {task} model is being served (see `errors` in /metadata)")
            return self.roles[task]
        if name == CHALLENGER:
            found = self.challenger(task)
            if found is None:
                raise ModelNotFound(
                    f"the {task} task has no challenger; known: {self.model_names(task)}"
                )
            return found
        families = self.families
        if name not in families:
            raise ModelNotFound(f"unknown model {name!r}; known: {self.model_names(task)}")
        return families[name]

    def versions(self) -> dict[str, str]:
        """Role -> "name:version" of every served model."""
        return {role: f"{m.meta.name}:{m.meta.version}" for role, m in sorted(self.roles.items())}

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "ready": self.ready,
            "loaded_at": self.loaded_at,
            "versions": self.versions(),
            "models": {role: m.describe() for role, m in sorted(self.roles.items())},
            "errors": dict(self.errors),
            "canaries": {
                task: {**asdict(c), "live": self.canary(task) is not None}
                for task, c in sorted(self.canaries.items())
            },
        }


def empty_catalog(source: str, reason: str) -> Catalog:
    return Catalog(source, "none", errors={r: reason for r in REQUIRED_ROLES})


def load_catalog(source: ModelSource, required: tuple[str, ...] = REQUIRED_ROLES) -> Catalog:
    """Load every bundle the source offers; a bundle that fails to verify is left out (logged).

    Never raises for a bad bundle: the catalog records the reason, and `ready` is False when
    a required role is missing.
    """
    try:
        snapshot = source.snapshot()
    except Exception as exc:
        reason = redact_text(str(exc))
        log.error("model source %s is unusable: %s", source.spec, reason)
        return Catalog(
            source.spec,
            "unreadable",
            errors={r: reason for r in required},
            required=required,
            loaded_at=time.time(),
        )
    roles: dict[str, ServedModel] = {}
    errors: dict[str, str] = {}
    cache: dict[Any, Any] = {}
    for role, reason in sorted(snapshot.errors.items()):
        reason = redact_text(reason)
        log.error("REFUSING to serve %s: %s", role, reason)
        errors[role] = reason
    for role, path in sorted(snapshot.bundles.items()):
        try:
            roles[role] = _load_role(snapshot, role, path, cache)
        except Exception as exc:
            log.error("REFUSING to serve %s from %s: %s", role, path, redact_text(str(exc)))
            errors[role] = redact_text(f"{type(exc).__name__}: {exc}")
    _probe_costs(roles)
    for role in required:
        if role not in snapshot.bundles:
            errors.setdefault(role, f"missing from model source {source.spec}")
    for role, m in sorted(roles.items()):
        log.info(
            "serving %s: %s v%s (%s, sha256 %s)",
            role,
            m.meta.name,
            m.meta.version,
            m.meta.family,
            m.meta.weights_sha256[:12],
        )
    return Catalog(
        source.spec,
        snapshot.fingerprint,
        MappingProxyType(roles),
        MappingProxyType(errors),
        required,
        time.time(),
        MappingProxyType(dict(snapshot.canaries)),
    )


def _probe_costs(roles: Mapping[str, ServedModel]) -> None:
    """Time each network once, so admission control starts from measured speeds."""
    probed: set[int] = set()
    for role, served in sorted(roles.items()):
        if id(served.model) in probed:
            continue
        probed.add(id(served.model))
        try:
            served.probe()
        except Exception as exc:  # a model that cannot run a probe still serves; log why
            log.warning("could not time %s: %s", role, exc)


def _load_role(snapshot: Snapshot, role: str, path: Path, cache: dict[Any, Any]) -> ServedModel:
    """Load one bundle; refuse it unless it is the version the source said it would be."""
    served = load_bundle(path, cache)
    expected = snapshot.expected.get(role)
    if expected is not None:
        got = (served.meta.name, served.meta.version, served.meta.weights_sha256)
        want = (expected.name, expected.version, expected.weights_sha256)
        if got != want:
            raise ValueError(f"bundle is {got}, the source expects {want}")
    return served
