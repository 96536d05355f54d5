"""The ensemble's config: its members' configs and calibrations, and how their scores combine.

Everything an ensemble is lives here and in its one safetensors file (the members' weights,
prefixed `members.<family>.`): `models.io` rebuilds it from this JSON like any family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from models.calibration import Calibration
from models.config import ModelConfig, require
from models.spec import FAMILIES

COMBINES = ("mean", "max")
# the ensemble's own statistic beside its members' (calibrated like a member): the kNN view in
# the autoencoder member's encoder trunk (models.ensemble.model, docs/anomaly.md sixth pass)
ENCODER_KNN = "encoder_knn"
# the format view: an image's distance from MNIST's format (models.digit_format, docs/anomaly.md
# eleventh pass), calibrated like a member
FORMAT = "format"
# the class-entropy view: the entropy of the GAN member's encoder's class prediction (models.gan,
# docs/anomaly.md "Sixteenth pass"), calibrated like a member
CLASS_ENTROPY = "class_entropy"
# the label-surprise view: how little the GAN member's encoder believes the labels of the image's
# nearest training digits in D's features (models.ensemble.model, docs/anomaly.md "Eighteenth
# pass"), calibrated like a member
LABEL_SURPRISE = "label_surprise"
_CALIBRATION_FIELDS = {f.name for f in dataclasses.fields(Calibration)}


def calibration_from_dict(values: dict[str, Any]) -> Calibration:
    """A `Calibration` from its saved fields (the payload of `calibration.json`)."""
    unknown = sorted(set(values) - _CALIBRATION_FIELDS)
    require(not unknown, f"calibration: unknown key(s) {unknown}")
    fields = {k: tuple(float(x) for x in v) if isinstance(v, list | tuple) else v
              for k, v in values.items()}  # fmt: skip
    try:
        return Calibration(**fields)
    except TypeError as exc:
        raise ValueError(f"calibration: {exc}") from exc


def calibration_to_dict(calibration: Calibration) -> dict[str, Any]:
    out = dataclasses.asdict(calibration)
    return out | {key: list(out[key]) for key in ("val_scores", "val_energy", "val_statistic")}


@dataclass(frozen=True)
class EnsembleConfig(ModelConfig):
    """Members (family -> that family's config dict), each member's calibration on validation
    normals (family -> `Calibration` fields), the combination of their calibrated
    atypicalities, and the member `sample` delegates to."""

    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    calibrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    combine: str = "mean"  # of the members' atypicalities: "mean" or "max"
    sampler: str = "gan"  # the member that draws samples (the contract's `sample`)
    # scores below it are raised to it: the median of the combined atypicalities of the
    # validation normals (`fit_ensemble`; None = no floor). Why: models.ensemble.model
    floor: float | None = None
    # the encoder-kNN view: mean cosine distance to the `encoder_knn` nearest training digits in
    # the autoencoder member's encoder trunk (0 = no view); its two-stage search's settings
    encoder_knn: int = 0
    knn_coarse_dims: int = 128
    knn_candidates: int = 256
    # members whose own score is not combined: they serve a view only (the autoencoder behind
    # the encoder-kNN view, docs/anomaly.md eighth pass); they still sample or reconstruct
    view_only: tuple[str, ...] = ()
    # the format view: distance from MNIST's format with this reference longer side (px; the
    # training digits' median, fitted by fit_ensemble); 0 = no view
    format_side: float = 0.0
    # the class-entropy view: the GAN member's encoder's class-prediction entropy (a
    # conditional GAN); False = no view
    class_entropy: bool = False
    # the label-surprise view: 1 - the mean encoder probability of the labels of the GAN
    # member's `score_k` nearest training digits (a conditional dknn GAN; the labels, one per
    # bank row, are saved with the weights as `bank_labels`); False = no view
    label_surprise: bool = False

    def statistics(self) -> list[str]:
        """The combined statistics' names, in the order they are combined: the scored members
        (the project's family order, `view_only` left out), then the encoder-kNN, format,
        class-entropy and label-surprise views when they are on."""
        scored = [f for f in self.ordered_members() if f not in self.view_only]
        views = ([ENCODER_KNN] if self.encoder_knn else []) + ([FORMAT] if self.format_side else [])
        views += [CLASS_ENTROPY] if self.class_entropy else []
        return scored + views + ([LABEL_SURPRISE] if self.label_surprise else [])

    def validate(self) -> None:
        require(bool(self.members), "ensemble.members must name at least one family")
        unknown = sorted(set(self.members) - set(FAMILIES))
        require(not unknown, f"ensemble.members: unknown famil(ies) {unknown}; known: "
                             f"{list(FAMILIES)}")  # fmt: skip
        for name in ("encoder_knn", "knn_coarse_dims", "knn_candidates"):
            value = getattr(self, name)
            low = 0 if name == "encoder_knn" else 1
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                f"ensemble.{name} must be an int >= {low}, got {value!r}",
            )
        require(
            not self.encoder_knn or "autoencoder" in self.members,
            "ensemble.encoder_knn reads the autoencoder member's encoder: add autoencoder to "
            "the members or set encoder_knn: 0",
        )
        require(
            not self.encoder_knn or self.knn_candidates >= self.encoder_knn,
            f"ensemble.knn_candidates must be >= encoder_knn ({self.encoder_knn}), "
            f"got {self.knn_candidates}",
        )
        require(
            isinstance(self.view_only, tuple | list) and set(self.view_only) <= set(self.members),
            f"ensemble.view_only must list members ({sorted(self.members)}), "
            f"got {self.view_only!r}",
        )
        require(
            set(self.view_only) <= ({"autoencoder"} if self.encoder_knn else set()),
            f"ensemble.view_only {sorted(self.view_only)}: only a member a view reads can be "
            "view-only (the autoencoder, under encoder_knn > 0)",
        )
        require(
            isinstance(self.format_side, int | float)
            and not isinstance(self.format_side, bool)
            and 0 <= self.format_side <= 28,
            f"ensemble.format_side must be a number of pixels in [0, 28], got {self.format_side!r}",
        )
        require(
            isinstance(self.class_entropy, bool),
            f"ensemble.class_entropy must be true or false, got {self.class_entropy!r}",
        )
        require(
            not self.class_entropy or bool(self.members.get("gan", {}).get("conditional")),
            "ensemble.class_entropy reads a conditional GAN member's encoder: add a conditional "
            "gan to the members or set class_entropy: false",
        )
        require(
            isinstance(self.label_surprise, bool),
            f"ensemble.label_surprise must be true or false, got {self.label_surprise!r}",
        )
        gan = self.members.get("gan", {})
        require(
            not self.label_surprise
            or (bool(gan.get("conditional")) and gan.get("score") == "dknn"),
            "ensemble.label_surprise reads a conditional GAN member's encoder and its dknn "
            "feature bank: add a conditional gan with score dknn or set label_surprise: false",
        )
        require(bool(self.statistics()), "ensemble: nothing left to combine (every member is "
                                         "view-only and no view is on)")  # fmt: skip
        require(
            set(self.calibrations) == set(self.statistics()),
            f"ensemble.calibrations must cover exactly {sorted(self.statistics())}, "
            f"got {sorted(self.calibrations)}",
        )
        for values in self.calibrations.values():
            calibration_from_dict(dict(values))  # ValueError when malformed
        require(self.combine in COMBINES, f"ensemble.combine must be one of {COMBINES}, "
                                          f"got {self.combine!r}")  # fmt: skip
        require(self.floor is None or self.floor >= 0, f"ensemble.floor must be >= 0, "
                                                       f"got {self.floor}")  # fmt: skip
        require(self.sampler in self.members, f"ensemble.sampler {self.sampler!r} is not a "
                                              f"member ({sorted(self.members)})")  # fmt: skip

    def ordered_members(self) -> list[str]:
        """The members in the project's family order (a fixed order: reproducible sums)."""
        return [f for f in FAMILIES if f in self.members]
