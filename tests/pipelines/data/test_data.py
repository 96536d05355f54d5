"""IDX I/O, deterministic splits and the import command (good and corrupt input)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.data.dataset import (
    DataError,
    SplitConfig,
    build_subset,
    images_path,
    import_idx,
    labels_path,
    load_split,
    read_idx,
    write_idx,
)
from pipelines.errors import ExitCode


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def default_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("default") / "data"
    build_subset(out)
    return out


def test_default_splits_are_byte_for_byte_deterministic(default_data, tmp_path):
    again = tmp_path / "data"
    build_subset(again)
    assert _digest(default_data) == _digest(again)


def test_default_splits_are_stratified_and_disjoint(default_data):
    sizes, seen = {}, []
    for split in ("train", "val", "test"):
        images, labels = load_split(default_data, split)
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        counts = np.bincount(labels, minlength=10)
        assert counts.min() == counts.max(), f"{split} not stratified: {counts}"
        sizes[split] = len(labels)
        seen.extend(hashlib.sha1(i.tobytes()).hexdigest() for i in images)
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    assert len(seen) == len(set(seen)) == 5000


def test_committed_data_dvc_matches_a_rebuild(tmp_path):
    """The hash recorded in data.dvc is what a fresh clone's rebuild of params.yaml's source
    (full MNIST from the cached wheel) produces, byte for byte."""
    import yaml

    from pipelines.data.sources import build_default
    from pipelines.data.versioning import data_version
    from pipelines.settings import load_params, split_config

    root = Path(__file__).resolve().parents[3]
    cfg = split_config(load_params(root / "params.yaml"))
    assert cfg.source == "mnist", "the default data is full MNIST"
    build_default(tmp_path / "data", cfg)
    recorded = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]
    rebuilt = tmp_path / "data"
    assert recorded["nfiles"] == len(list(rebuilt.iterdir()))
    assert recorded["size"] == sum(p.stat().st_size for p in rebuilt.iterdir())
    sizes = {s: len(load_split(rebuilt, s)[1]) for s in ("train", "val", "test")}
    assert sizes == {"train": 54_001, "val": 5_999, "test": 10_000}
    # the DVC directory hash: the same manifest DVC would write for these files
    (tmp_path / "data.dvc").write_text((root / "data.dvc").read_text())
    import subprocess

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    from pipelines.data.versioning import dvc

    dvc("init", "-q", cwd=tmp_path)
    dvc("commit", "--force", "--quiet", "data.dvc", cwd=tmp_path)  # hashes the rebuilt data/
    assert data_version(tmp_path) == recorded["md5"]


def test_split_seed_changes_assignment(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_subset(a, SplitConfig(seed=1))
    build_subset(b, SplitConfig(seed=2))
    assert _digest(a)["test-images-idx3-ubyte"] != _digest(b)["test-images-idx3-ubyte"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_idx_round_trip(tmp_path, dtype):
    array = (np.arange(2 * 5 * 3) % 100).astype(dtype).reshape(2, 5, 3)
    write_idx(tmp_path / "a.idx", array)
    back = read_idx(tmp_path / "a.idx")
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress((tmp_path / "a.idx").read_bytes()))
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), array)


def _write_pair(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    ip, lp = folder / "img.idx", folder / "lbl.idx"
    write_idx(ip, images)
    write_idx(lp, labels)
    if gz:
        for p in (ip, lp):
            p.with_suffix(".idx.gz").write_bytes(gzip.compress(p.read_bytes()))
        ip, lp = ip.with_suffix(".idx.gz"), lp.with_suffix(".idx.gz")
    return ip, lp


@pytest.fixture()
def source_pair(default_data, tmp_path):
    images, labels = load_split(default_data, "train")
    return _write_pair(tmp_path / "src", images[::4], labels[::4], gz=True)


def test_import_valid_gzipped_idx(source_pair, tmp_path):
    out = tmp_path / "data"
    counts = import_idx(out, [source_pair])
    assert sum(counts.values()) == 1000
    assert set(np.unique(load_split(out, "val")[1])) == set(range(10))


def test_import_with_official_test_split(default_data, tmp_path):
    train = _write_pair(tmp_path / "t", *[a[::5] for a in load_split(default_data, "train")])
    test = _write_pair(tmp_path / "e", *load_split(default_data, "test"))
    out = tmp_path / "data"
    counts = import_idx(out, [train], test_pair=test)
    assert counts["test"] == 500 and counts["train"] + counts["val"] == 800
    assert np.array_equal(load_split(out, "test")[0], load_split(default_data, "test")[0])


def _corrupt(kind: str, ip: Path, lp: Path) -> tuple[Path, str]:
    raw = ip.read_bytes() if ip.suffix != ".gz" else gzip.decompress(ip.read_bytes())
    if kind == "bad_magic":
        ip.write_bytes(b"\x12\x34" + raw[2:])
        return ip, "bad magic number"
    if kind == "truncated":
        ip.write_bytes(raw[: len(raw) // 2])
        return ip, "truncated"
    if kind == "count_mismatch":
        labels = read_idx(lp)
        write_idx(lp, labels[:-3])
        return ip, "labels"
    if kind == "wrong_dimensions":
        images = read_idx(ip)
        write_idx(ip, np.zeros((len(images), 32, 32), np.uint8))
        return ip, "wrong dimensions 32x32"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bad_magic", "truncated", "count_mismatch", "wrong_dimensions"])
def test_import_rejects_corrupt_input_and_keeps_data(kind, source_pair, default_data, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(default_data, out)
    before = _digest(out)
    ip, lp = source_pair
    named, phrase = _corrupt(kind, ip, lp)
    with pytest.raises(DataError) as err:
        import_idx(out, [(ip, lp)])
    assert str(named) in str(err.value) and phrase in str(err.value)
    assert _digest(out) == before, "a failed import must leave data/ untouched"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.")], "staging left over"


def test_cli_import_reports_the_file_and_problem(source_pair, default_data, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(default_data, out)
    ip, lp = source_pair
    _corrupt("bad_magic", ip, lp)
    root = Path(__file__).resolve().parents[3]
    result = CliRunner().invoke(
        main,
        [
            "--params",
            str(root / "params.yaml"),
            "data",
            "import",
            "--images",
            str(ip),
            "--labels",
            str(lp),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == ExitCode.INVALID_DATA == 3
    assert "bad magic number" in result.output and str(ip) in result.output
    assert "left unchanged" in result.output
    assert images_path(out, "train").exists() and labels_path(out, "train").exists()


def test_cli_help_on_every_command():
    runner = CliRunner()
    for args in (
        ["--help"],
        ["data", "--help"],
        ["data", "import", "--help"],
        ["validate", "--help"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and "Usage" in result.output, args
