"""The ensemble: the four trained families' calibrated anomaly scores combined in one model."""

from models.ensemble.config import EnsembleConfig
from models.ensemble.model import Ensemble, fit_ensemble

__all__ = ["Ensemble", "EnsembleConfig", "fit_ensemble"]
