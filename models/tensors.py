"""Tensor rules every family applies at its boundary: shapes, label checks, device, precision.

The bottom of `models/`: it imports only torch, `models.rng` and `models.config` (no torch),
and the contract (`models.base`) and the families build on it.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from torch import Tensor

from models import rng
from models.config import check_bf16_setting

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10


def resolve_device(device: str | torch.device, check_available: bool = True) -> torch.device:
    """ "auto" -> CUDA when available, else the CPU; anything else as torch names it.

    ValueError for a name torch does not know, and (with `check_available`) for a CUDA
    device on a machine without CUDA.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1', "
            f"got {device!r}"
        ) from exc
    if check_available and resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available")
    return resolved


# the families' `bf16_autocast` option: on, off, or on where the device has native bf16
Bf16Setting = bool | Literal["auto"]


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether devices of `device_type` compute in bf16 natively: a CUDA GPU that supports it,
    a CPU with AVX512-BF16 or AMX. Elsewhere torch emulates bf16, which is slower than fp32:
    one GAN training step (batch 64, 2 threads) took 1,423 ms in bf16 against 86 ms in fp32 on
    an AVX2-only AMD EPYC (docs/models.md "Speed options")."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)
    return False


def use_bf16(setting: Bf16Setting, device: str | torch.device) -> bool:
    """Resolve a `bf16_autocast` setting on `device`: "auto" means `native_bf16`."""
    check_bf16_setting(setting)
    if setting == "auto":
        return native_bf16(torch.device(device).type)
    return bool(setting)


def bf16_autocast(setting: Bf16Setting, device: str | torch.device) -> torch.autocast:
    """bf16 autocast on `device`'s type when `setting` resolves on (`use_bf16`): the families'
    `bf16_autocast` option, true, false or "auto"."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(setting, device))


def to_channels_last(images: Tensor, enabled: bool) -> Tensor:
    """`images` in channels-last memory format when `enabled` (the `channels_last` option)."""
    return images.contiguous(memory_format=torch.channels_last) if enabled else images


def check_images(images: Tensor) -> Tensor:
    """Validate a batch of images at the model boundary and return it as float32."""
    if images.ndim != 4 or tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise ValueError(f"images must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
    images = images.float()
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    return images


def check_labels(labels: Tensor | None, n: int) -> Tensor | None:
    """None, or `labels` as a long tensor of n class ids in 0..9 (ValueError otherwise)."""
    if labels is None:
        return None
    raw = torch.as_tensor(labels)
    if raw.is_floating_point() or raw.is_complex() or raw.dtype == torch.bool:
        raise ValueError(f"labels must be integer class ids, got dtype {raw.dtype}")
    labels = raw.long().reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"labels: expected {n}, got {labels.numel()}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be in 0..{NUM_CLASSES - 1}")
    return labels


def random_labels(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n class ids drawn uniformly from `generator`: what `sample(labels=None)` uses."""
    return rng.randint(NUM_CLASSES, (n,), generator, device)
