"""The denoising demonstration: corrupted test digits cleaned up by a model.

One clean test digit per class (the first of each in the split) is corrupted three ways, each
from one seeded numpy Generator, so the same seed gives byte-identical inputs:
  gaussian     additive Gaussian noise, sigma 0.5 in [0, 1] pixel units, clipped to [0, 1]
  salt_pepper  10% of the pixels set to 0 or 1 (half each)
  block        a 10x10 block of pixels zeroed, placed at random around the centre
The model's output is `denoise(images, strength, generator)` where the family declares
`capabilities.denoising` (diffusion: SDEdit at the model's default strength), else
`reconstruct(images)` (the autoencoders and the GAN's encoder-generator round trip).

Metrics, means over the images: `denoise_input_mse/<kind>` (corrupted vs clean) beside
`denoise_mse/<kind>` (model output vs clean), both in [0, 1] pixel units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.base import GenerativeModel
from pipelines.evaluation import plots
from pipelines.evaluation.anomalies import salt_and_pepper

CORRUPTIONS = ("gaussian", "salt_pepper", "block")
GAUSSIAN_SIGMA = 0.5
SALT_PEPPER_RATE = 0.1
BLOCK_SIZE = 10
N_DIGITS = 10  # one per class
SEED = 0


def _gaussian(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    return np.clip(clean + GAUSSIAN_SIGMA * rng.standard_normal(clean.shape), 0.0, 1.0)


def _salt_pepper(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    return salt_and_pepper(rng, clean, SALT_PEPPER_RATE)


def _block(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    out = clean.copy()
    lo, hi = 14 - BLOCK_SIZE // 2 - 4, 14 - BLOCK_SIZE // 2 + 4  # top-left corner, +-4 around
    for image, (top, left) in zip(out, rng.integers(lo, hi + 1, size=(len(out), 2)), strict=True):
        image[..., top : top + BLOCK_SIZE, left : left + BLOCK_SIZE] = 0.0
    return out


_BUILDERS: dict[str, Callable[[np.random.Generator, np.ndarray], np.ndarray]] = {
    "gaussian": _gaussian,
    "salt_pepper": _salt_pepper,
    "block": _block,
}


def corrupt(clean: np.ndarray, seed: int = SEED) -> dict[str, np.ndarray]:
    """Each corruption of `clean` (N, 1, 28, 28) float in [0, 1], float32, drawn in order."""
    rng = np.random.default_rng(seed)
    clean = np.asarray(clean, dtype=np.float64)
    return {kind: _BUILDERS[kind](rng, clean).astype(np.float32) for kind in CORRUPTIONS}


def pick_digits(labels: Tensor | np.ndarray, n: int = N_DIGITS) -> np.ndarray:
    """Indices of the first image of each digit 0..9 present, topped up in order to `n`."""
    labels = np.asarray(labels).reshape(-1)
    first = [int(np.flatnonzero(labels == d)[0]) for d in range(10) if (labels == d).any()]
    rest = [i for i in range(len(labels)) if i not in set(first)]
    return np.asarray((first + rest)[:n], dtype=np.int64)


def cleaner(
    model: GenerativeModel, seed: int = SEED, strength: float | None = None
) -> Callable[[Tensor], Tensor]:
    """The model's way of cleaning images: `denoise` where declared, else `reconstruct`.

    `strength` goes to `denoise` (None: the family's default); `reconstruct` has none.
    """
    if model.capabilities.denoising:
        generator = torch.Generator().manual_seed(seed)
        return lambda x: model.denoise(x, strength, generator)
    if model.capabilities.reconstruction:
        return model.reconstruct
    raise ValueError(f"{model.family} can neither denoise nor reconstruct")


@dataclass(frozen=True)
class Denoised:
    """Clean digits, their corruptions, the model's outputs and per-image MSEs, by kind."""

    clean: np.ndarray  # (N, 1, 28, 28)
    corrupted: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    input_mse: dict[str, np.ndarray]  # (N,) corrupted vs clean
    output_mse: dict[str, np.ndarray]  # (N,) output vs clean

    def metrics(self) -> dict[str, float]:
        out = {f"denoise_input_mse/{k}": float(v.mean()) for k, v in self.input_mse.items()}
        return out | {f"denoise_mse/{k}": float(v.mean()) for k, v in self.output_mse.items()}


def _mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.square(a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1).mean(1)


def run_denoising(
    model: GenerativeModel,
    images: Tensor,
    labels: Tensor,
    seed: int = SEED,
    strength: float | None = None,
) -> Denoised:
    """Corrupt one test digit per class and clean all corruptions in one model call."""
    clean = images[torch.from_numpy(pick_digits(labels))].numpy().astype(np.float32)
    corrupted = corrupt(clean, seed)
    batch = torch.from_numpy(np.concatenate([corrupted[k] for k in CORRUPTIONS]))
    with torch.no_grad():
        cleaned = cleaner(model, seed, strength)(batch.to(model.device)).float().cpu().numpy()
    outputs = dict(zip(CORRUPTIONS, np.split(cleaned, len(CORRUPTIONS)), strict=True))
    return Denoised(
        clean=clean,
        corrupted=corrupted,
        outputs=outputs,
        input_mse={k: _mse(v, clean) for k, v in corrupted.items()},
        output_mse={k: _mse(v, clean) for k, v in outputs.items()},
    )


def write_figure(model: GenerativeModel, denoised: Denoised, path: Path) -> Path:
    """Clean digits, then each corruption above the model's cleaned output, with the MSEs."""
    how = "denoise (default strength)" if model.capabilities.denoising else "reconstruct"
    rows = []
    for kind in CORRUPTIONS:
        rows.append((kind, denoised.corrupted[kind], denoised.input_mse[kind]))
        rows.append(("→ model", denoised.outputs[kind], denoised.output_mse[kind]))
    return plots.denoising(denoised.clean, rows, path, f"{model.family}: {how}")
