"""The set of models one service instance serves, loaded from a source as one immutable unit.

A reload builds a whole new `Catalog` and then swaps one reference, so a request that took
the old catalog finishes on the old models and never sees a half-loaded set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from serving.bundle import ServedModel, load_bundle
from serving.sources import ANOMALY, GENERATION, ModelSource

log = logging.getLogger("genops.serving")

REQUIRED_ROLES = (GENERATION, ANOMALY)
CHAMPION = "champion"


class UnknownModel(LookupError):
    """A request named a model that this service does not serve."""


@dataclass(frozen=True)
class Catalog:
    """Loaded models by role, and why any role is not being served."""

    source: str
    fingerprint: str
    roles: Mapping[str, ServedModel] = field(default_factory=dict)
    errors: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = REQUIRED_ROLES
    loaded_at: float = 0.0

    @property
    def ready(self) -> bool:
        return all(role in self.roles for role in self.required)

    @property
    def families(self) -> dict[str, ServedModel]:
        return {
            role.removeprefix("families/"): m
            for role, m in self.roles.items()
            if role.startswith("families/")
        }

    def model_names(self) -> list[str]:
        return [CHAMPION, *sorted(self.families)]

    def resolve(self, task: str, name: str | None) -> ServedModel:
        """The task's champion (name None or "champion") or a family's latest by family name."""
        if name is None or name == CHAMPION:
            if task not in self.roles:
                reason = self.errors.get(task, "not loaded")
                raise UnknownModel(f"no {task} champion is being served ({reason})")
            return self.roles[task]
        families = self.families
        if name not in families:
            raise UnknownModel(f"unknown model {name!r}; known: {self.model_names()}")
        return families[name]

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "ready": self.ready,
            "loaded_at": self.loaded_at,
            "models": {role: m.describe() for role, m in sorted(self.roles.items())},
            "errors": dict(self.errors),
        }


def empty_catalog(source: str, reason: str) -> Catalog:
    return Catalog(source, "none", errors={r: reason for r in REQUIRED_ROLES})


def load_catalog(source: ModelSource, required: tuple[str, ...] = REQUIRED_ROLES) -> Catalog:
    """Load every bundle the source offers; a bundle that fails to verify is left out (logged).

    Never raises for a bad bundle: the catalog records the reason, and `ready` is False when
    a required role is missing.
    """
    fingerprint = source.fingerprint()
    try:
        bundles = source.bundles()
    except Exception as exc:
        log.error("model source %s is unusable: %s", source.spec, exc)
        return Catalog(
            source.spec,
            fingerprint,
            errors={r: str(exc) for r in required},
            required=required,
            loaded_at=time.time(),
        )
    roles: dict[str, ServedModel] = {}
    errors: dict[str, str] = {}
    cache: dict[tuple[str, str], Any] = {}
    for role, path in sorted(bundles.items()):
        try:
            roles[role] = load_bundle(path, cache)
        except Exception as exc:
            log.error("REFUSING to serve %s from %s: %s", role, path, exc)
            errors[role] = f"{type(exc).__name__}: {exc}"
    for role in required:
        if role not in bundles:
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
        fingerprint,
        MappingProxyType(roles),
        MappingProxyType(errors),
        required,
        time.time(),
    )
