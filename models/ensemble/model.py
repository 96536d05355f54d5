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

The encoder-kNN view (`config.encoder_knn` = k > 0, docs/anomaly.md sixth pass): the ensemble's
own statistic beside its members', calibrated and combined like one: the mean cosine distance of
an image to its k nearest training digits in the autoencoder member's encoder trunk (its
convolutional features before the bottleneck, unit length). The bank, the training digits'
features in fp16, is saved with the ensemble's weights (`knn_bank`) and searched in two stages
(models.gan.neighbours). It is fitted on the training split (the digits the autoencoder itself
was trained on) and calibrated on validation normals, like everything else here.

The format view (`config.format_side` > 0, docs/anomaly.md eleventh pass): the image's distance
from MNIST's format (models.digit_format: its ink's bounding box against the training digits'
20 px, and its centre of mass against the field's centre), calibrated and combined like a
member. It reads pixels only, fitted on the training split (the reference side) and calibrated
on validation normals, at a share of the false-positive budget (`format_share`, docs/anomaly.md
"Fourteenth pass"; the share is the `target_fpr` its saved calibration records).

The class-entropy view (`config.class_entropy`, docs/anomaly.md "Sixteenth pass"): the entropy
of the conditional GAN member's encoder's class prediction (a figure that is no digit tends to
get a flat one), calibrated and combined like a member, at a share of the false-positive budget
(`entropy_share`).

The label-surprise view (`config.label_surprise`, docs/anomaly.md "Eighteenth pass"): a letter is
often a *confident* wrong digit, which the class entropy misses. This view asks whether the
encoder's belief agrees with the image's neighbours: 1 - the mean, over the GAN member's
`score_k` nearest training digits in D's features (the very neighbours its Dknn score uses), of
the encoder's probability of that digit's label. A digit's neighbours carry the label the
encoder believes (near 0); a figure whose nearest digits are other digits than the encoder
sees, or a mix, scores high. The labels of the GAN's feature bank, one per row in the order
`fit_scorer` saw the training split, are saved with the ensemble's weights (`bank_labels`);
`fit_ensemble` checks that the bank is that split's before it pairs them. Calibrated and
combined like a member, at a share of the budget (`surprise_share`).

View-only members (`config.view_only`, docs/anomaly.md eighth pass): a member kept for a view
alone. The default ensemble keeps the autoencoder for its encoder (the view's features) but
leaves its reconstruction score out: max(GAN Dknn, encoder kNN) ranked the tuned suite above the
mean of all three. A view-only member's own score is never computed, calibrated or combined.

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
from models.digit_format import format_distance, reference_side
from models.ensemble.config import (
    CLASS_ENTROPY,
    ENCODER_KNN,
    FORMAT,
    LABEL_SURPRISE,
    EnsembleConfig,
    calibration_from_dict,
    calibration_to_dict,
)
from models.gan.model import entropy_of_logits
from models.gan.neighbours import IndexedBank, coarse_index, index_matches, mean_cosine_distance
from models.io import build_model
from models.spec import FAMILIES
from models.tensors import check_images


class Ensemble(IndexedBank, GenerativeModel):
    """Members as submodules (`members.<family>.*` in the state dict) plus their calibrations."""

    family = "ensemble"
    config_cls = EnsembleConfig

    def __init__(self, config: EnsembleConfig) -> None:
        super().__init__(config)
        names = config.ordered_members()
        self.members = nn.ModuleDict({f: build_model(f, config.members[f]) for f in names})
        self.calibrations: dict[str, Calibration] = {
            f: calibration_from_dict(dict(config.calibrations[f])) for f in config.statistics()
        }
        if config.encoder_knn:  # filled by fit_ensemble, saved; its length is the bank's
            self.register_buffer("knn_bank", torch.zeros(0, 0, dtype=torch.float16))
            # the search's coarse index: derived from the bank at fit, saved with it; a file
            # from before it was saved derives it at load (DERIVED_STATE, ensure_index)
            self.register_buffer("knn_proj", torch.zeros(0, 0))
            self.register_buffer("knn_coarse", torch.zeros(0, 0).half())
        if config.label_surprise:  # the GAN bank's labels, filled by fit_ensemble, saved
            self.register_buffer("bank_labels", torch.zeros(0, dtype=torch.long))
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

    # the encoder-kNN bank and the buffers a file may lack (saved before the coarse index
    # was), derived at load (models.gan.neighbours.IndexedBank)
    BANK, DERIVED_STATE = "knn_bank", ("knn_proj", "knn_coarse")

    def _bank_on(self) -> bool:
        return bool(self.config.encoder_knn)

    def _index_dims(self) -> int:
        return self.config.knn_coarse_dims

    def _derive_index(self) -> None:
        self.set_knn_bank(self.knn_bank)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        saved = state_dict.get(prefix + "bank_labels") if self.config.label_surprise else None
        if saved is not None:  # its length is the GAN bank's
            self.bank_labels = torch.empty_like(saved, device=self.bank_labels.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    @torch.no_grad()
    def set_knn_bank(self, bank: Tensor, index: tuple[Tensor, Tensor] | None = None) -> None:
        """Keep `bank` (N, F) unit-length encoder features as the encoder-kNN bank (fp16) and
        index it for the search: `index` (proj, coarse) when it fits the bank, else derived."""
        self.knn_bank = bank.half().to(self.device)
        dims = self.config.knn_coarse_dims
        if index is not None and index_matches(self.knn_bank, *index, dims):
            self.knn_proj, self.knn_coarse = (t.to(self.device) for t in index)
        elif self.knn_bank.shape[0]:
            self.knn_proj, self.knn_coarse = coarse_index(self.knn_bank, dims)
        self._index_checked = True

    def encoder_knn_scores(self, images: Tensor) -> Tensor:
        """(N,) the encoder-kNN view's raw statistic: mean cosine distance to the
        `encoder_knn` nearest training digits in the autoencoder's encoder trunk."""
        k, bank = self.config.encoder_knn, self.knn_bank
        if bank.shape[0] < k:
            raise RuntimeError(
                f"ensemble: encoder_knn={k} needs a bank of at least {k} training digits, has "
                f"{bank.shape[0]}: fit it with fit_ensemble(..., train_images=...)"
            )
        self.ensure_index()
        features = encoder_features(self.members["autoencoder"], images)
        return mean_cosine_distance(
            features, bank, self.knn_proj, self.knn_coarse, k, self.config.knn_candidates
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
        """Each member's calibrated atypicality (N,) float64 of `images` (and the encoder-kNN,
        format, class-entropy and label-surprise views', when on), in `config.statistics()`
        order. The GAN's neighbour search and its encoder's class prediction run once each,
        whichever of its score and its views read them."""
        images = check_images(images)
        pixels = images.detach().cpu().numpy()
        raw: dict[str, Tensor | np.ndarray] = {}
        reads_gan = self.config.label_surprise or self.config.class_entropy
        gan = self.members["gan"] if reads_gan else None
        rows = logits = None
        if self.config.label_surprise:
            raw["gan"], rows = gan.dknn_with_rows(images)
        if reads_gan:
            logits = gan.class_logits(images)
        for name, member in self.members.items():
            if name in self.config.view_only:  # serves a view only: its own score is unused
                continue
            if name not in raw:
                raw[name] = member.anomaly_score(images)
        if self.config.encoder_knn:
            raw[ENCODER_KNN] = self.encoder_knn_scores(images)
        if self.config.format_side:
            raw[FORMAT] = format_distance(pixels, self.config.format_side)
        if self.config.class_entropy:
            raw[CLASS_ENTROPY] = entropy_of_logits(logits)
        if self.config.label_surprise:
            raw[LABEL_SURPRISE] = surprise_of_labels(logits, self.bank_labels, rows)
        out = {}
        for name in self.config.statistics():
            scores = raw[name]
            if isinstance(scores, Tensor):
                scores = scores.detach().cpu().numpy()
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


@torch.no_grad()
def encoder_features(autoencoder: GenerativeModel, images: Tensor) -> Tensor:
    """(N, F) unit-length fp32 features of `images` in the autoencoder's encoder trunk (its
    convolutional features before the bottleneck, flattened; an MLP encoder's last hidden
    layer)."""
    trunk = autoencoder.encoder.features(autoencoder._prepare(images))
    return torch.nn.functional.normalize(trunk.flatten(1).float(), dim=1)


def surprise_of_labels(logits: Tensor, labels: Tensor, rows: Tensor) -> Tensor:
    """(N,) 1 - the mean encoder probability (`logits` (N, 10)) of the `labels` of each
    image's nearest bank rows (`rows` (N, k))."""
    probs = logits.float().softmax(dim=1)
    return 1.0 - probs.gather(1, labels.to(rows.device)[rows]).mean(dim=1)


@torch.no_grad()
def label_surprise_of(gan: GenerativeModel, labels: Tensor, images: Tensor) -> Tensor:
    """(N,) the label surprise of `images`: the conditional dknn `gan`'s encoder against the
    labels of their nearest training digits in its D features (`labels`: one per bank row)."""
    if labels.shape[0] != gan.score_bank.shape[0]:
        raise RuntimeError(
            f"ensemble: label_surprise has {labels.shape[0]} labels for a GAN bank of "
            f"{gan.score_bank.shape[0]} rows: fit it with fit_ensemble(..., train_labels=...)"
        )
    return surprise_of_labels(gan.class_logits(images), labels, gan.neighbour_rows(images))


@torch.no_grad()
def check_bank_labels(gan: GenerativeModel, train: Tensor, labels: Tensor, rows: int = 64) -> None:
    """Raise ValueError unless the GAN's feature bank is `train` in order (so that `labels`,
    the training split's, label its rows): as many rows, and D's features of `rows` spread
    training digits equal to their bank rows (fp16, as the bank keeps them)."""
    bank = gan.score_bank
    if labels.shape[0] != train.shape[0] or bank.shape[0] != train.shape[0]:
        raise ValueError(
            f"label_surprise: the GAN's feature bank has {bank.shape[0]} rows, the training "
            f"split {train.shape[0]} images and {labels.shape[0]} labels: they must be one set"
        )
    idx = torch.linspace(0, train.shape[0] - 1, min(rows, train.shape[0])).long()
    features = gan._features(train[idx].to(gan.device)).half().float()
    if not torch.allclose(features, bank[idx].float(), atol=2e-3):
        raise ValueError(
            "label_surprise: the GAN's feature bank is not these training images in this "
            "order (its rows differ from D's features of them): its labels cannot be paired"
        )


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
    encoder_knn: int = 0,
    train_images: Tensor | None = None,
    knn_coarse_dims: int = 128,
    knn_candidates: int = 256,
    view_only: tuple[str, ...] = (),
    format_test: bool = False,
    format_share: float = 1.0,
    class_entropy: bool = False,
    entropy_share: float = 1.0,
    label_surprise: bool = False,
    surprise_share: float = 1.0,
    train_labels: Tensor | None = None,
) -> Ensemble:
    """An ensemble of trained `members` (family -> model), each calibrated on `val_images`
    (validation normals only) with evaluation's own `Calibration.fit` and FPR split. With
    `encoder_knn` = k > 0, the encoder-kNN view too: its bank is the autoencoder member's
    features of `train_images` (the training split), calibrated on `val_images` likewise.
    Members in `view_only` are kept (their weights, for the view) but their own scores are not
    calibrated or combined. `format_test` adds the format view, its reference side the median
    of `train_images`, calibrated on `val_images` likewise, at `format_share` of the
    false-positive budget (its atypicality passes 1 only where the view alone would flag that
    share of the normals: a smaller share leaves the union's budget to the other views).
    `class_entropy` adds the class-entropy view (the conditional GAN member's encoder),
    calibrated on `val_images` likewise at `entropy_share` of the budget. `label_surprise` adds
    the label-surprise view (the conditional dknn GAN member's bank, labelled by `train_labels`,
    the labels of `train_images`), at `surprise_share` of the budget."""
    shares = (("format_share", format_share), ("entropy_share", entropy_share),
              ("surprise_share", surprise_share))  # fmt: skip
    for name, share in shares:
        if not 0.0 < share <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {share}")
    if class_entropy and ("gan" not in members or not members["gan"].config.conditional):
        raise ValueError("class_entropy needs a conditional gan member (its encoder's classes)")
    val_images = check_images(torch.as_tensor(val_images)).cpu()
    pixels = val_images.numpy()
    knn_bank = None
    if label_surprise:
        gan = members.get("gan")
        if gan is None or not gan.config.conditional or gan.config.score != "dknn":
            raise ValueError("label_surprise needs a conditional gan member with score dknn")
        if train_images is None or train_labels is None:
            raise ValueError("label_surprise needs the train_images and their train_labels")
    reads_train = (encoder_knn or format_test or label_surprise) and train_images is not None
    train = check_images(torch.as_tensor(train_images)).cpu() if reads_train else None
    if encoder_knn:
        if "autoencoder" not in members or train is None:
            raise ValueError("encoder_knn needs an autoencoder member and the train_images")
        ae = members["autoencoder"].eval()
        knn_bank = torch.cat([encoder_features(ae, train[i : i + batch_size].to(ae.device)).cpu()
                              for i in range(0, len(train), batch_size)]).half()  # fmt: skip
        proj, coarse = coarse_index(knn_bank, knn_coarse_dims)
    format_side = 0.0
    if format_test:
        if train is None:
            raise ValueError("format_test needs the train_images (its reference side)")
        format_side = reference_side(train.numpy())
        if format_side <= 0:
            raise ValueError("format_test: the training images have no ink to measure")
    bank_labels = None
    if label_surprise:
        bank_labels = torch.as_tensor(train_labels).long().reshape(-1).cpu()
        if bank_labels.numel() and not 0 <= int(bank_labels.min()) <= int(bank_labels.max()) <= 9:
            raise ValueError("label_surprise: train_labels must be digit classes 0-9")
        check_bank_labels(members["gan"].eval(), train, bank_labels)

    def scores_of(name: str) -> np.ndarray:
        chunks = []
        with torch.no_grad():
            for start in range(0, len(val_images), batch_size):
                batch = val_images[start : start + batch_size]
                if name == FORMAT:
                    s = torch.from_numpy(format_distance(batch.numpy(), format_side))
                elif name == LABEL_SURPRISE:
                    gan = members["gan"].eval()
                    s = label_surprise_of(gan, bank_labels, batch.to(gan.device))
                elif name == CLASS_ENTROPY:
                    s = members["gan"].eval().class_entropy(batch.to(members["gan"].device))
                elif name == ENCODER_KNN:
                    f = encoder_features(members["autoencoder"], batch)
                    s = mean_cosine_distance(f.cpu(), knn_bank, proj, coarse, encoder_knn,
                                             knn_candidates)  # fmt: skip
                else:
                    s = members[name].eval().anomaly_score(batch.to(members[name].device))
                chunks.append(s.detach().cpu().reshape(-1))
        return torch.cat(chunks).numpy()

    calibrations: dict[str, dict[str, Any]] = {}
    stats = []
    names = [f for f in FAMILIES if f in members and f not in view_only]
    names += [ENCODER_KNN] if encoder_knn else []
    names += [FORMAT] if format_side else []
    names += [CLASS_ENTROPY] if class_entropy else []
    names += [LABEL_SURPRISE] if label_surprise else []
    shares = {FORMAT: format_share, CLASS_ENTROPY: entropy_share, LABEL_SURPRISE: surprise_share}
    for name in names:  # the order anomaly_score combines in (EnsembleConfig.statistics)
        scores = scores_of(name)
        share = shares.get(name, 1.0)
        calibration = Calibration.fit(
            scores, target_fpr * share, low_fpr * share, pixels, energy_fpr * share
        )
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
        encoder_knn=encoder_knn,
        knn_coarse_dims=knn_coarse_dims,
        knn_candidates=knn_candidates,
        view_only=tuple(f for f in FAMILIES if f in view_only),
        format_side=format_side,
        class_entropy=class_entropy,
        label_surprise=label_surprise,
    )
    ensemble = Ensemble(config)
    for name, member in members.items():
        ensemble.members[name].load_state_dict(member.state_dict(), strict=True)
    if knn_bank is not None:
        ensemble.set_knn_bank(knn_bank, (proj, coarse))
    if bank_labels is not None:
        ensemble.bank_labels = bank_labels.to(ensemble.device)
    return ensemble.eval()
