"""The generation task's gate: both models draw fresh samples, judged in the judge's features.

`pipelines.evaluation.sequential` holds the statistics; this module loads what they need (the
challenger's bundle, the champion's registered version, the judge and the real test features)
and turns a model into a feature sampler. FD-judge stays the leaderboard's headline; the gate
decides on the sequential test of FD-judge over fresh blocks, whose error rates are measured
(docs/gate.md).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models.io import load_model
from pipelines.evaluation.sequential import (
    FeatureSampler,
    SequentialConfig,
    SequentialResult,
    sequential_test,
)
from pipelines.stages.evaluate import download_registered

log = logging.getLogger(__name__)


def feature_sampler(model: Any, judge: Any, batch: int = 500) -> FeatureSampler:
    """draw(n, seed): judge features of n fresh samples of `model` drawn with that seed, with
    balanced labels (0..9 in turn, as the leaderboard's FD-judge draws them; unconditional
    models ignore them): random labels add the label mix's noise, 5x the block variance."""
    import torch

    from pipelines.evaluation.judge import judge_outputs

    def draw(n: int, seed: int) -> np.ndarray:
        generator = torch.Generator(device=model.device).manual_seed(int(seed))
        feats = []
        with torch.no_grad():
            for start in range(0, n, batch):
                count = min(batch, n - start)
                labels = (torch.arange(start, start + count) % 10).to(model.device)
                images = model.sample(count, generator=generator, labels=labels)
                feats.append(judge_outputs(judge, images.clamp(0, 1).float().cpu())[0])
        return np.concatenate(feats)

    model.eval()
    return draw


def run_generation_gate(
    candidate_dir: Path,
    champion_mv: Any,
    judge_dir: Path,
    real_features: np.ndarray,
    margin: float,
    cfg: SequentialConfig,
) -> SequentialResult:
    """The sequential test of the challenger (its bundle) against the champion version."""
    import torch

    from pipelines.evaluation.judge import load_judge
    from pipelines.training.resources import available_cores

    torch.set_num_threads(available_cores())
    judge = load_judge(judge_dir)
    candidate = load_model(Path(candidate_dir))
    with tempfile.TemporaryDirectory(prefix="genops-champion-") as tmp:
        champion = download_registered(champion_mv, Path(tmp) / "model")
    result = sequential_test(
        feature_sampler(candidate, judge), feature_sampler(champion, judge),
        real_features, margin, cfg,
    )  # fmt: skip
    log.info("generation gate: %s", result.summary())
    return result
