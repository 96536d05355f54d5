"""The literature's one-class MNIST protocol (a benchmark, not part of `dvc repro`).

For each digit d: train a family on the training images of d only, score the whole test
split, and report the AUROC of d (normal) against all other digits (anomalies); then the mean
over the ten digits. Published means: conv AE ~0.90, Deep SVDD 0.948, OCGAN 0.975,
GeoTrans 0.980 (on full MNIST, 6k training images per digit; the default data here has 400).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.data import load_tensors
from pipelines.evaluation.evaluate import score_images
from pipelines.evaluation.metrics import auroc
from pipelines.train import TrainConfig, train

PUBLISHED = {"conv AE": 0.90, "Deep SVDD": 0.948, "OCGAN": 0.975, "GeoTrans": 0.980}


def one_class(
    family: str,
    model_cfg: dict[str, Any],
    cfg: TrainConfig,
    data_dir: Path,
    work_dir: Path,
    digits: tuple[int, ...] = tuple(range(10)),
) -> dict[str, Any]:
    """Per-digit AUROC (digit = normal) and their mean for one family."""
    tx, ty = load_tensors(data_dir, "train")
    vx, vy = load_tensors(data_dir, "val")
    ex, ey = load_tensors(data_dir, "test")
    per_digit: dict[str, float] = {}
    started = time.perf_counter()
    for digit in digits:
        keep, vkeep = ty == digit, vy == digit
        result = train(
            family,
            model_cfg,
            cfg,
            (tx[keep], ty[keep]),
            (vx[vkeep], vy[vkeep]),
            Path(work_dir) / family / str(digit),
        )
        scores = score_images(result.model, ex, 256)
        normal = (ey == digit).numpy()
        per_digit[str(digit)] = float(auroc(scores[normal], scores[~normal]))
        print(f"{family} digit {digit}: AUROC {per_digit[str(digit)]:.4f}", flush=True)
    return {
        "family": family,
        "per_digit_auroc": per_digit,
        "mean_auroc": float(np.mean(list(per_digit.values()))),
        "train_images_per_digit": int((ty == digits[0]).sum()),
        "steps": cfg.steps,
        "seconds": time.perf_counter() - started,
        "threads": torch.get_num_threads(),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    head = "| family | " + " | ".join(str(d) for d in range(10)) + " | mean |"
    lines = [head, "|---" * 12 + "|"]
    for r in results:
        cells = [f"{r['per_digit_auroc'].get(str(d), float('nan')):.3f}" for d in range(10)]
        lines.append(f"| {r['family']} | " + " | ".join(cells) + f" | **{r['mean_auroc']:.3f}** |")
    lines.append("")
    lines.append(
        "Published means (full MNIST): " + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED.items())
    )
    return "\n".join(lines) + "\n"
