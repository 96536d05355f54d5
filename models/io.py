"""Save and load models as safetensors weights + a JSON config. No pickle anywhere.

Layout of a saved model directory:
    config.json        {"format_version": 1, "family": ..., "config": {...}, "extra": {...}}
    model.safetensors  the state dict (parameters and buffers, EMA included)
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from models.base import GenerativeModel
from models.spec import CONFIG_FILE, MODEL_CLASSES, WEIGHTS_FILE, check_model

FORMAT_VERSION = 1


def family_class(family: str) -> type[GenerativeModel]:
    """The class of a family or a composite (e.g. the ensemble), imported on first use."""
    module_name, class_name = MODEL_CLASSES[check_model(family)].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_model(family: str, config: dict[str, Any] | None = None) -> GenerativeModel:
    """Build a fresh model of `family` from a plain config dict (validated)."""
    cls = family_class(family)
    return cls(cls.config_cls.from_dict(config))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, then os.replace: never a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; published files are world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _contiguous_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors: give it clean copies
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: GenerativeModel, directory: Path, extra: dict[str, Any] | None = None) -> str:
    """Write weights + config into `directory` atomically; return the weights sha256."""
    directory = Path(directory)
    weights = directory / WEIGHTS_FILE
    data = safetensors_bytes(_contiguous_state(model), metadata={"family": model.family})
    atomic_write_bytes(weights, data)
    payload = {
        "format_version": FORMAT_VERSION,
        "family": model.family,
        "config": model.config.to_dict(),
        "extra": extra or {},
    }
    atomic_write_json(directory / CONFIG_FILE, payload)
    return sha256_file(weights)


def read_config(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}")
    payload = json.loads(path.read_text())
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {payload.get('format_version')!r}")
    return payload


def load_model(directory: Path, expected_sha256: str | None = None) -> GenerativeModel:
    """Rebuild the class from config.json, then load safetensors weights (strict).

    With `expected_sha256`, refuse (ValueError) when the weights file does not match.
    The model is returned in eval mode on the CPU.
    """
    directory = Path(directory)
    payload = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if expected_sha256 is not None:
        actual = sha256_file(weights)
        if actual != expected_sha256:
            raise ValueError(
                f"weights checksum mismatch for {weights}: expected {expected_sha256}, got {actual}"
            )
    model = build_model(payload["family"], payload["config"])
    load_weights_streamed(model, weights)
    model.eval()
    return model


# safetensors' dtype names -> torch's (the ones a state dict of ours can hold)
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_header(f: Any, path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's tensor table ({name: {"dtype", "shape", "data_offsets"}}, without
    its metadata) and the offset where the tensors' bytes start, read from the open binary file
    `f` (left after the header). ValueError when `path` is not a safetensors file."""
    total = Path(path).stat().st_size
    try:
        size = int.from_bytes(f.read(8), "little")
        if not 2 <= size <= total - 8:
            raise ValueError(f"header length {size} does not fit a {total}-byte file")
        header = json.loads(f.read(size))
        if not isinstance(header, dict):
            raise ValueError("the header is not a table")
        header.pop("__metadata__", None)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a safetensors file: {exc}") from exc
    return header, 8 + size


def derived_keys(model: torch.nn.Module) -> set[str]:
    """The state-dict keys a weights file may lack because the model derives them from the
    rest (a module's `DERIVED_STATE`: the neighbour searches' coarse indexes, saved only since
    2026-12): a file from before still loads, and `ensure_indexes` derives them."""
    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        for name in getattr(module, "DERIVED_STATE", ())
    }


def derived_names() -> set[str]:
    """Every family's `DERIVED_STATE` names (a tensor's last key component): what a weights
    file may hold or lack without being another model."""
    return {
        name
        for family in MODEL_CLASSES
        for name in getattr(family_class(family), "DERIVED_STATE", ())
    }


def state_sha256(weights: Path) -> str:
    """The sha256 of a weights file's tensors less the derived ones (`derived_names`: the
    neighbour searches' coarse indexes): each kept tensor's name, dtype, shape and bytes, read
    from the file a chunk at a time. Two files with equal `state_sha256` hold the same learned
    state, whichever of them also saved the index (a format upgrade: the same model)."""
    weights, derived = Path(weights), derived_names()
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        header, start = safetensors_header(f, weights)
        keys = [k for k in sorted(header) if k.rsplit(".", 1)[-1] not in derived]
        hash_tensors(digest, f, header, start, {k: k for k in keys})
    return digest.hexdigest()


def hash_tensors(
    digest: Any, f: Any, header: dict[str, Any], start: int, names: dict[str, str]
) -> None:
    """Feed `digest` each tensor of `names` (file key -> the name hashed), in that order: the
    name, dtype, shape, then its bytes read from the open safetensors file `f` (`header`,
    data `start`) 16 MiB at a time, so a digest never holds a whole weights file."""
    for key, name in names.items():
        entry = header[key]
        digest.update(f"|{name}|{entry['dtype']}|{entry['shape']}|".encode())
        begin, end = entry["data_offsets"]
        f.seek(start + begin)
        for at in range(begin, end, 1 << 24):
            digest.update(f.read(min(1 << 24, end - at)))


def ensure_indexes(model: torch.nn.Module) -> None:
    """Check every derived index against what it is derived from; derive it where it is
    absent or does not match (`ensure_index` of each module that has one)."""
    for module in model.modules():
        ensure = getattr(module, "ensure_index", None)
        if callable(ensure):
            ensure()


def load_weights_streamed(model: torch.nn.Module, weights: Path) -> None:
    """`model.load_state_dict(load_file(weights), strict=True)`, one tensor at a time: each is
    read from the file, copied into the module (whose layout it keeps, so outputs are
    bit-identical) and dropped before the next, so a load holds the module plus one tensor,
    not the module plus the whole file (a 542 MB ensemble peaked at twice its size). Keys the
    model derives (`derived_keys`) may be absent; every derived index is then checked against
    its source and derived where needed (`ensure_indexes`).

    Raises ValueError when the file is not a safetensors file of exactly this state dict."""
    weights = Path(weights)
    total = weights.stat().st_size
    with weights.open("rb") as f:
        header, start = safetensors_header(f, weights)
        expected = set(model.state_dict())
        missing = sorted(expected - set(header) - derived_keys(model))
        unexpected = sorted(set(header) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{weights}: does not match the {type(model).__name__} it configures: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        for key in sorted(header, key=lambda k: header[k]["data_offsets"][0]):
            entry = header[key]
            dtype, shape = _DTYPES.get(entry["dtype"]), tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            count = int(torch.Size(shape).numel())
            if dtype is None or not 0 <= begin <= end <= total - start:
                raise ValueError(f"{weights}: tensor {key!r} has a bad dtype or offsets")
            if end - begin != count * torch.empty(0, dtype=dtype).element_size():
                raise ValueError(f"{weights}: tensor {key!r} has {end - begin} bytes for {shape}")
            f.seek(start + begin)
            data = bytearray(f.read(end - begin))
            tensor = (
                torch.frombuffer(data, dtype=dtype).reshape(shape)
                if count
                else torch.empty(shape, dtype=dtype)
            )
            model.load_state_dict({key: tensor}, strict=False)
            del data, tensor
    ensure_indexes(model)


def load_extra(directory: Path) -> dict[str, Any]:
    """The free-form metadata saved beside the config (e.g. calibrated threshold)."""
    return read_config(directory).get("extra", {})
