"""Lineage by image hash: a champion is never measured on digits it trained or calibrated on,
across data versions (a re-split read back from the real DVC cache)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from pipelines.data.dataset import SplitConfig, build_subset, load_split
from pipelines.data.lineage import (
    Refusal,
    champion_overlap,
    image_hashes,
    version_images,
    write_unseen,
)
from pipelines.data.versioning import data_version, dvc


def test_image_hashes_are_equal_for_equal_bytes_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    again = images.copy()
    again[3, 0, 0] ^= 1
    a, b = image_hashes(images), image_hashes(again)
    assert list(a == b) == [True, True, True, False, True] and len(set(a)) == 5


@pytest.fixture()
def resplit(tmp_path):
    """A DVC project whose data v1 is re-split (same 5,000 digits, another seed) into v2."""
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc("init", "-q", cwd=root)
    build_subset(root / "data", SplitConfig(source="mnist-5k", seed=1))
    dvc("add", "-q", "data", cwd=root)
    v1 = data_version(root)
    v1_train, _ = load_split(root / "data", "train")
    build_subset(root / "data", SplitConfig(source="mnist-5k", seed=2))
    dvc("add", "-q", "data", cwd=root)
    return root, v1, v1_train


def test_a_resplit_is_found_and_only_unseen_digits_are_kept(resplit, tmp_path):
    root, v1, v1_train = resplit
    seen = version_images(v1, root)
    assert seen is not None and np.array_equal(seen["train"], v1_train)
    overlap, test_mask, val_mask = champion_overlap(v1, root / "data", root)
    assert overlap.known and overlap.any and overlap.test_total == 500
    # a random re-split: ~80 % of the new test digits were v1 training digits, ~10 % v1 val
    assert 0.8 < overlap.test_seen / overlap.test_total < 0.95, overlap.describe()
    assert overlap.test_unseen == int(test_mask.sum()) and "test digits" in overlap.describe()
    unseen = write_unseen(root / "data", tmp_path / "unseen", test_mask, val_mask)
    test, _ = load_split(unseen, "test")
    val, _ = load_split(unseen, "val")
    trained = set(image_hashes(seen["train"]).tolist())
    assert not set(image_hashes(test).tolist()) & (trained | set(image_hashes(seen["val"])))
    assert not set(image_hashes(val).tolist()) & trained
    assert len(test) == overlap.test_unseen and len(load_split(unseen, "train")[0]) > 3000


def test_the_same_split_has_no_overlap_and_an_unknown_version_is_not_known(resplit):
    root, _, _ = resplit
    current = data_version(root)
    overlap, test_mask, _ = champion_overlap(current, root / "data", root)
    assert overlap.known and not overlap.any and test_mask.all()
    missing, mask, _ = champion_overlap("0123456789abcdef0123456789abcdef.dir", root / "data", root)
    assert not missing.known and mask is None and "not in the DVC cache" in missing.describe()
    refusal = Refusal(missing.describe(), missing.to_dict())
    assert not refusal.clears(-1.0) and "champion kept" in refusal.summary(0.0)


def test_the_gate_refuses_when_too_few_unseen_digits_are_left(resplit, tmp_path):
    """The promotion step's comparison: lineage first; a re-split of 5,000 digits leaves ~50
    test digits the v1 champion never saw, below a min_unseen of 100: refused, champion kept."""
    from types import SimpleNamespace

    from models.spec import Tag
    from pipelines.stages.register import GateConfig, _compare

    root, v1, _ = resplit
    champion = SimpleNamespace(tags={Tag.DATA_VERSION: v1}, name="genops-anomaly", version="1")
    result, how, overlap = _compare(
        champion, task_name="anomaly", family="autoencoder", evidence=None, params={},
        settings=GateConfig(min_unseen=100), eval_root=tmp_path, data_dir=root / "data",
        judge_dir=tmp_path,
    )  # fmt: skip
    assert isinstance(result, Refusal) and not result.clears(-1.0) and how == "refused (lineage)"
    assert "too few unseen digits" in result.reason and overlap["test_seen"] > 400
    unknown = SimpleNamespace(tags={Tag.DATA_VERSION: "f" * 32 + ".dir"}, name="g", version="1")
    result, how, overlap = _compare(
        unknown, task_name="generation", family="gan", evidence=None, params={},
        settings=GateConfig(), eval_root=tmp_path, data_dir=root / "data", judge_dir=tmp_path,
    )  # fmt: skip
    assert isinstance(result, Refusal) and "not in the DVC cache" in result.reason
    assert overlap["known"] is False
