"""The Great Expectations gate: passes on the default data, fails clearly on each defect."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.data.dataset import build_subset, images_path, labels_path, load_split, write_idx
from pipelines.data.validation import ValidationConfig, validate_data
from pipelines.errors import ExitCode


@pytest.fixture(scope="module")
def clean_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gx") / "data"
    build_subset(out)
    return out


def _copy(clean: Path, tmp_path: Path) -> Path:
    out = tmp_path / "data"
    shutil.copytree(clean, out)
    return out


def _rewrite(data: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    write_idx(images_path(data, split), images)
    write_idx(labels_path(data, split), labels)


def test_gate_passes_on_default_data(clean_data, tmp_path):
    report = validate_data(clean_data, tmp_path / "report")
    assert report.success, report.summary()
    assert report.rows == {"train": 4000, "val": 500, "test": 500}
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()
    assert (tmp_path / "report" / "summary.json").is_file()


def _wrong_shape(data):
    images, labels = load_split(data, "val")
    padded = np.zeros((len(images), 32, 32), np.uint8)
    padded[:, 2:30, 2:30] = images
    _rewrite(data, "val", padded, labels)
    return "val", "expect_column_values_to_be_in_set", "height"


def _bad_label(data):
    images, labels = load_split(data, "train")
    labels = labels.copy()
    labels[:3] = 12
    _rewrite(data, "train", images, labels)
    return "train", "expect_column_values_to_be_between", "label"


def _missing_class(data):
    images, labels = load_split(data, "test")
    keep = labels != 3
    _rewrite(data, "test", images[keep], labels[keep])
    return "test", "expect_column_distinct_values_to_contain_set", "label"


def _leakage(data):
    train_images, _ = load_split(data, "train")
    images, labels = load_split(data, "test")
    images = images.copy()
    images[:5] = train_images[:5]
    _rewrite(data, "test", images, labels)
    return "all splits", "expect_column_values_to_be_unique", "content_hash"


def _blank(data):
    images, labels = load_split(data, "train")
    images = images.copy()
    images[10:14] = 0
    images[20] = 255
    _rewrite(data, "train", images, labels)
    return "train", "expect_column_values_to_be_between", "ink_mass"


def _imbalanced(data):
    images, labels = load_split(data, "val")
    keep = (labels != 7) | (np.arange(len(labels)) % 10 == 0)
    _rewrite(data, "val", images[keep], labels[keep])
    return "val", "expect_column_values_to_be_between", "class_share"


def _too_few_rows(data):
    images, labels = load_split(data, "test")
    _rewrite(data, "test", images[::10], labels[::10])
    return "test", "expect_table_row_count_to_be_between", "table"


DEFECTS = [_wrong_shape, _bad_label, _missing_class, _leakage, _blank, _imbalanced, _too_few_rows]


@pytest.mark.parametrize("inject", DEFECTS, ids=[d.__name__.strip("_") for d in DEFECTS])
def test_gate_fails_with_a_clear_message(inject, clean_data, tmp_path):
    data = _copy(clean_data, tmp_path)
    split, expectation, target = inject(data)
    report = validate_data(data, tmp_path / "report")
    assert not report.success
    hits = [
        f
        for f in report.failures
        if (f["split"], f["expectation"], f["target"]) == (split, expectation, target)
    ]
    assert hits, report.summary()
    assert f"[{split}] {expectation}({target})" in report.summary()


def test_leakage_message_names_both_splits(clean_data, tmp_path):
    data = _copy(clean_data, tmp_path)
    _leakage(data)
    summary = validate_data(data, tmp_path / "report").summary()
    assert "train#" in summary and "test#" in summary


def test_cli_validate_exits_nonzero_with_summary(clean_data, tmp_path):
    data = _copy(clean_data, tmp_path)
    _bad_label(data)
    root = Path(__file__).resolve().parents[3]
    result = CliRunner().invoke(
        main,
        [
            "--params",
            str(root / "params.yaml"),
            "validate",
            "--data-dir",
            str(data),
            "--report-dir",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == ExitCode.INVALID_DATA == 3
    assert "FAILED" in result.output and "[train]" in result.output


def test_config_rejects_bad_bounds():
    with pytest.raises(ValueError, match="ink_min"):
        ValidationConfig(ink_min=0.7, ink_max=0.6)
    with pytest.raises(ValueError, match="unknown split"):
        ValidationConfig(min_rows={"dev": 3})
