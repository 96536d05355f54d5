"""The ensemble: one anomaly score from the four families' calibrated scores.

The families fail on different inputs (docs/anomaly.md), so the ensemble scores an image with
every member and combines what each member's calibrated verdict thresholds: its *atypicality*
(`Calibration.statistic`: distance from the validation normals' median in units of that
member's threshold distance, input energy included; > 1 exactly where the member alone would
flag the image). The mean (or the max) of those is the ensemble's score; evaluation then
calibrates it on validation normals like any family's score.

Nothing here is fitted on anomalies or test images: `fit_ensemble` sees validation normals
only (each member's calibration, fitted exactly as evaluation fits a family's).

The floor. A member's atypicality is already two-sided (too hard *and* too easy, input energy
included), so a *low* combined score only says "typical on every side". Evaluation calibrates
every model's score with the same two-sided rule (`Calibration.fit`), whose low side would flag
the most typical validation digits and rank very typical test digits as anomalous. Raising
every score below the validation normals' median to that median makes that side exactly
neutral: the low threshold is the floor (nothing lies strictly below it) and the floored
scores sit at the median, atypicality 0. Ranks above the median are untouched.

Capabilities are the members', declared not invented: `sample` delegates to one member
(`config.sampler`, the GAN by default: the ensemble competes in the anomaly task only,
`models.spec.COMPOSITE_TASKS`), `reconstruct` to the autoencoder (or the first member that
reconstructs). It is not trained: its members are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.base import Batch, Capabilities, GenerativeModel, Optimizers
from models.calibration import Calibration
from models.ensemble.config import EnsembleConfig, calibration_from_dict, calibration_to_dict
from models.io import build_model
from models.spec import FAMILIES
from models.tensors import check_images


class Ensemble(GenerativeModel):
    """Members as submodules (`members.<family>.*` in the state dict) plus their calibrations."""

    family = "ensemble"
    config_cls = EnsembleConfig

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__(config)
        names = config.ordered_members()
        self.members = nn.ModuleDict({f: build_model(f, config.members[f]) for f in names})
        self.calibrations: dict[str, Calibration] = {
            f: calibration_from_dict(dict(config.calibrations[f])) for f in names
        }
        reconstructing = [f for f in names if self.members[f].capabilities.reconstruction]
        self._reconstructor = reconstructing[0] if reconstructing else None

    @property
    def sampler(self) -> GenerativeModel:
        return self.members[self.config.sampler]

    @property
    def capabilities(self) -> Capabilities:
        # no sampling steps, likelihood, encoder or interpolation of its own; conditional
        # sampling exactly when the sampling member is conditional
        return Capabilities(
            conditional=self.sampler.capabilities.conditional,
            reconstruction=self._reconstructor is not None,
        )

    # ---- training: none (the members are trained by their own stages) ------------------------
    def configure_optimizers(self) -> Optimizers:
        return {}

    def training_step(self, batch: Batch, optimizers: Optimizers) -> dict[str, float]:
        raise ValueError("an ensemble is not trained: train its member families, then fit it")

    def validation_loss(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        return {"loss": float(self.anomaly_score(images).double().mean())}

    # ---- generation: delegated ----------------------------------------------------------------
    def _sample(
        self, n: int, generator: torch.Generator | None, labels: Tensor | None, steps: int | None
    ) -> Tensor:
        # `sample` validated the arguments against the ensemble's capabilities, which are the
        # sampler's (steps is always None: the sampler uses its configured default)
        return self.sampler._sample(n, generator, labels, None)

    # ---- scoring --------------------------------------------------------------------------
    def member_statistics(self, images: Tensor) -> dict[str, np.ndarray]:
        """Each member's calibrated atypicality (N,) float64 of `images`."""
        images = check_images(images)
        pixels = images.detach().cpu().numpy()
        out = {}
        for name, member in self.members.items():
            scores = member.anomaly_score(images).detach().cpu().numpy()
            out[name] = self.calibrations[name].statistic(scores, pixels)
        return out

    def anomaly_score(self, images: Tensor) -> Tensor:
        """The mean (or max, `config.combine`) of the members' atypicalities (N,), floored."""
        stats = np.stack(list(self.member_statistics(images).values()), axis=1)
        combined = combine_statistics(stats, self.config.combine)
        if self.config.floor is not None:
            combined = np.maximum(combined, self.config.floor)
        return torch.as_tensor(combined, dtype=torch.float32, device=self.device)

    def reconstruct(self, images: Tensor) -> Tensor:
        if self._reconstructor is None:
            return super().reconstruct(images)
        return self.members[self._reconstructor].reconstruct(images)


def combine_statistics(stats: np.ndarray, how: str) -> np.ndarray:
    """(N, members) atypicalities -> (N,): their mean or their max."""
    return stats.mean(axis=1) if how == "mean" else stats.max(axis=1)


def fit_ensemble(
    members: Mapping[str, GenerativeModel],
    val_images: Tensor,
    target_fpr: float,
    low_fpr: float = 0.0,
    energy_fpr: float = 0.0,
    combine: str = "mean",
    sampler: str = "gan",
    batch_size: int = 256,
) -> Ensemble:
    """An ensemble of trained `members` (family -> model), each calibrated on `val_images`
    (validation normals only) with evaluation's own `Calibration.fit` and FPR split."""
    val_images = check_images(torch.as_tensor(val_images)).cpu()
    pixels = val_images.numpy()
    calibrations: dict[str, dict[str, Any]] = {}
    stats = []
    for name in [f for f in FAMILIES if f in members]:  # the order anomaly_score sums in
        member = members[name].eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, len(val_images), batch_size):
                batch = val_images[start : start + batch_size].to(member.device)
                chunks.append(member.anomaly_score(batch).detach().cpu().reshape(-1))
        scores = torch.cat(chunks).numpy()
        calibration = Calibration.fit(scores, target_fpr, low_fpr, pixels, energy_fpr)
        calibrations[name] = calibration_to_dict(calibration)
        stats.append(calibration.statistic(scores, pixels))
    # the floor: the validation median ("higher" and float32, so that at least half of the
    # validation scores equal it exactly and their median is the floor itself)
    combined = combine_statistics(np.stack(stats, axis=1), combine)
    floor = float(np.float32(np.quantile(combined, 0.5, method="higher")))
    config = EnsembleConfig(  # plain JSON values: the config equals itself after save -> load
        members={name: json.loads(json.dumps(m.config.to_dict())) for name, m in members.items()},
        calibrations=calibrations,
        combine=combine,
        sampler=sampler,
        floor=floor,
    )
    ensemble = Ensemble(config)
    for name, member in members.items():
        ensemble.members[name].load_state_dict(member.state_dict(), strict=True)
    return ensemble.eval()
