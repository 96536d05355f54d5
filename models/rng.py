"""Random draws that follow the models' device rule, in one place.

Noise is drawn on the generator's device (on `device` when there is no generator) and then
moved to `device`: a CPU generator gives the same numbers whether the model runs on the CPU
or a GPU, and a generator on the model's device costs no copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _source(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


def randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard normal float32 noise of `shape` on `device`."""
    out = torch.randn(tuple(shape), generator=generator, device=_source(generator, device))
    return out.to(device)


def rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) float32 noise of `shape` on `device`."""
    out = torch.rand(tuple(shape), generator=generator, device=_source(generator, device))
    return out.to(device)


def randint(
    high: int, shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """Uniform int64 values in 0..high-1 of `shape` on `device`."""
    source = _source(generator, device)
    out = torch.randint(0, high, tuple(shape), generator=generator, device=source)
    return out.to(device)
