"""Nearest-neighbour one-class scorer: the strongest scorer of the one-class protocol here.

An image's score is its mean cosine distance to its `k` nearest normal training images, after
a Gaussian blur (tolerates stroke-width and sub-pixel differences) and minimised over small
translations of the query (tolerates off-centre digits). No training, no randomness: the
"model" is the normal class's training images.

The defaults (k=3, blur 1.0 px, shift 1 px, cosine) were chosen on the validation split
(fit on a digit's training images, AUROC of that digit vs the rest of the *validation*
split), never on the test split; docs/one_class.md lists the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class KnnConfig:
    """`k` neighbours, Gaussian `blur` sigma in pixels (0 = none), query `shift` in pixels
    (the minimum over the (2*shift+1)^2 translations), `cosine` or Euclidean distance."""

    k: int = 3
    blur: float = 1.0
    shift: int = 1
    cosine: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k!r}")
        if not 0.0 <= self.blur <= 5.0:
            raise ValueError(f"blur must be in [0, 5] pixels, got {self.blur!r}")
        if not 0 <= self.shift <= 4:
            raise ValueError(f"shift must be in 0..4 pixels, got {self.shift!r}")


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (N, 1, H, W) images, zero padding; sigma 0 is the identity."""
    if sigma <= 0:
        return images
    r = max(1, int(3 * sigma))
    g = torch.exp(-(torch.arange(-r, r + 1, dtype=images.dtype) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    x = F.conv2d(F.pad(images, (r, r, 0, 0)), g.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r)), g.view(1, 1, -1, 1))


def translations(images: Tensor, shift: int) -> Tensor:
    """(N, 1, H, W) -> (S, N, 1, H, W), S = (2*shift+1)^2 zero-filled translations."""
    h, w = images.shape[-2:]
    p = shift
    padded = F.pad(images, (p, p, p, p))
    moves = range(-shift, shift + 1)
    return torch.stack(
        [padded[..., p - dy : p - dy + h, p - dx : p - dx + w] for dy in moves for dx in moves]
    )


class KnnScorer:
    """`fit` on normal images, then `score` any images (higher = more anomalous)."""

    def __init__(self, config: KnnConfig | None = None) -> None:
        self.config = config or KnnConfig()
        self._bank: Tensor | None = None

    def _features(self, images: Tensor) -> Tensor:
        x = gaussian_blur(images.float(), self.config.blur).flatten(-3)
        return F.normalize(x, dim=-1) if self.config.cosine else x

    def fit(self, images: Tensor) -> KnnScorer:
        if images.ndim != 4 or images.shape[0] < self.config.k:
            raise ValueError(f"need (N>=k, 1, H, W) normal images, got {tuple(images.shape)}")
        self._bank = self._features(images)
        return self

    @torch.no_grad()
    def score(self, images: Tensor, batch_size: int = 256) -> np.ndarray:
        if self._bank is None:
            raise ValueError("call fit() before score()")
        out = []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            moved = translations(batch, self.config.shift)  # (S, n, 1, H, W)
            s, n = moved.shape[:2]
            feats = self._features(moved.flatten(0, 1)).view(s, n, -1)
            if self.config.cosine:  # unit vectors: 1 - cos, one matmul per translation
                dist = 1.0 - torch.stack([f @ self._bank.T for f in feats]).amax(0)
            else:
                dist = torch.stack([torch.cdist(f, self._bank) for f in feats]).amin(0)
            out.append(dist.topk(self.config.k, dim=1, largest=False).values.mean(1))
        return torch.cat(out).numpy().astype(np.float64)
