"""The canary record: which challenger version answers what share of a task's champion traffic.

Written by the registry side (`genops canary`, pipelines/registry/canary.py) and read by every
serving source, so the record's shape and where it lives have one home:
    MLflow   a tag `CANARY_TAG` on the task's registered model (JSON, `Canary.dumps`)
    dir:     `CANARY_FILE` at the source root: {task: record}
A record only takes effect while its version is the task's challenger; the service ignores a
record for any other version (the challenger moved on, the canary is stale).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

CANARY_TAG = "genops.canary"  # registered-model tag holding the task's live canary
CANARY_FILE = "canary.json"  # the same, for folder sources: {task: record}
CLIENT_HEADER = "X-Genops-Client"  # the sticky key; the client's address when absent


@dataclass(frozen=True)
class Canary:
    """`share` of the task's champion requests go to challenger `version`, by client key."""

    task: str
    version: str
    share: float
    started_at: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"a canary share must be in (0, 1], got {self.share}")
        if not str(self.version).strip():
            raise ValueError("a canary names the challenger version it sends traffic to")

    def dumps(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "task"}, sort_keys=True)

    @classmethod
    def loads(cls, task: str, text: str | dict[str, Any]) -> Canary:
        """Parse a record (ValueError naming what is wrong)."""
        try:
            raw = json.loads(text) if isinstance(text, str) else dict(text)
            return cls(
                task, str(raw["version"]), float(raw["share"]), float(raw.get("started_at", 0))
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"unreadable canary record for {task}: {text!r} ({exc})") from exc

    def takes(self, client: str) -> bool:
        """Whether this client's requests go to the canary: a hash of (client, task, version),
        so one client sees one version for the whole canary, and a new canary reshuffles."""
        return draw(client, self.task, self.version) < self.share

    def label(self) -> str:
        return f"{self.task}=v{self.version}@{self.share:g}"


def draw(client: str, task: str, version: str) -> float:
    """A uniform number in [0, 1) fixed by (client, task, version)."""
    digest = hashlib.sha256(f"{client}\0{task}\0{version}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
