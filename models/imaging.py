"""Pixel ranges in one place: stored uint8, the contract's [0, 1], and the [-1, 1] the GAN and
diffusion use."""

from __future__ import annotations

import torch
from torch import Tensor


def from_uint8(pixels: Tensor) -> Tensor:
    """uint8 0..255 pixels (any shape) -> float32 [0, 1]; float input is returned as float32."""
    return pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()


def to_signed(images: Tensor) -> Tensor:
    """[0, 1] pixels -> [-1, 1] (what tanh generators and diffusion processes work in)."""
    return images * 2.0 - 1.0


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] network outputs -> float32 [0, 1] images, clamped."""
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
