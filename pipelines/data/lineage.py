"""No model is measured on images it trained or calibrated on, across data versions too.

A registered version's lineage names the data version it was trained on (the DVC hash of data/).
The gate reads that version's train and validation images back from the DVC cache, hashes every
image, and compares them with the current test and validation splits. When they overlap (a
re-split of the same digits, a new import that contains old ones), both models are measured only
on what neither has seen: the test digits outside the champion's train + validation splits, and
the validation digits (where thresholds are calibrated) outside its training split. Too little
left, or a champion whose data cannot be found, and the gate refuses with the reason.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.data.dataset import (
    SPLITS,
    images_path,
    labels_path,
    load_pair,
    load_split,
    write_idx,
)

METHOD_REFUSED = "refused-lineage"


def image_hashes(images: np.ndarray) -> np.ndarray:
    """One 16-hex-digit blake2b hash per uint8 image (N, 28, 28): equal bytes, equal hash."""
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), -1)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in flat])


def _cache_file(root: Path, md5: str) -> Path:
    return Path(root) / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def version_images(version: str, root: Path = Path(".")) -> dict[str, np.ndarray] | None:
    """The train and val images of a DVC data version, read from the local DVC cache
    (None when that version is not there: not a DVC hash, or never added here)."""
    if not version.endswith(".dir"):
        return None
    manifest = _cache_file(root, version)
    if not manifest.is_file():
        return None
    files = {e["relpath"]: e["md5"] for e in json.loads(manifest.read_text())}
    out = {}
    for split in ("train", "val"):
        names = (images_path(Path(), split).name, labels_path(Path(), split).name)
        paths = [_cache_file(root, files.get(name, "")) for name in names]
        if not all(name in files for name in names) or not all(p.is_file() for p in paths):
            return None
        out[split] = load_pair(*paths)[0]
    return out


@dataclass(frozen=True)
class Overlap:
    """How much of the current test and validation splits the champion has seen."""

    champion_data_version: str
    test_total: int
    test_seen: int  # in the champion's train or val split
    val_total: int
    val_seen: int  # in the champion's train split
    known: bool = True  # False: the champion's data was not found

    @property
    def any(self) -> bool:
        return self.test_seen > 0 or self.val_seen > 0

    @property
    def test_unseen(self) -> int:
        return self.test_total - self.test_seen

    @property
    def val_unseen(self) -> int:
        return self.val_total - self.val_seen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if not self.known:
            return f"the champion's data {self.champion_data_version} is not in the DVC cache"
        return (
            f"champion saw {self.test_seen:,} of {self.test_total:,} test digits "
            f"({self.test_seen / max(self.test_total, 1):.1%}) and {self.val_seen:,} of "
            f"{self.val_total:,} validation digits in training"
        )


def champion_overlap(
    champion_version: str, data_dir: Path, root: Path = Path(".")
) -> tuple[Overlap, np.ndarray | None, np.ndarray | None]:
    """(overlap, unseen test mask, unseen val mask) of the current data against the data
    version the champion was trained on; masks are None when that data is not found."""
    test, _ = load_split(data_dir, "test")
    val, _ = load_split(data_dir, "val")
    seen = version_images(champion_version, root)
    if seen is None:
        return Overlap(champion_version, len(test), 0, len(val), 0, known=False), None, None
    trained = set(image_hashes(seen["train"]).tolist())
    calibrated = trained | set(image_hashes(seen["val"]).tolist())
    test_mask = ~np.isin(image_hashes(test), list(calibrated))
    val_mask = ~np.isin(image_hashes(val), list(trained))
    overlap = Overlap(champion_version, len(test), int((~test_mask).sum()), len(val),
                      int((~val_mask).sum()))  # fmt: skip
    return overlap, test_mask, val_mask


def write_unseen(
    data_dir: Path, out_dir: Path, test_mask: np.ndarray, val_mask: np.ndarray
) -> Path:
    """A copy of the splits with the seen test and validation digits left out."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    masks = {"test": test_mask, "val": val_mask}
    for split in SPLITS:
        images, labels = load_split(data_dir, split)
        keep = masks.get(split, np.ones(len(images), dtype=bool))
        write_idx(images_path(out_dir, split), images[keep])
        write_idx(labels_path(out_dir, split), labels[keep])
    return out_dir


@dataclass
class Refusal:
    """The gate's answer when it cannot compare fairly: the champion is kept, with the reason."""

    reason: str
    overlap: dict[str, Any]
    metric: str = "none"
    method: str = METHOD_REFUSED
    candidate: float = math.nan
    champion: float = math.nan

    def clears(self, margin: float) -> bool:
        return False

    def summary(self, margin: float) -> str:
        return f"refused, champion kept: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "method": self.method, "reason": self.reason}
