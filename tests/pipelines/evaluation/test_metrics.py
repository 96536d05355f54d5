"""Known answers for the metrics, calibration at the target FPR, evaluate_model smoke tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from models.base import Capabilities, GenerativeModel, ModelConfig
from models.calibration import Calibration
from models.tensors import check_images
from pipelines.evaluation import metrics as M
from pipelines.evaluation.denoising import CORRUPTIONS
from pipelines.evaluation.evaluator import (
    EvalConfig,
    evaluate_model,
    load_reference,
    numeric_metrics,
    real_reference,
    save_reference,
    score_images,
)
from pipelines.evaluation.judge import train_judge
from pipelines.evaluation.plots import project_2d, training_curves

RNG = np.random.default_rng(0)


# ---- sample-quality metrics ------------------------------------------------------------------
def test_frechet_distance_of_a_set_with_itself_is_zero():
    feats = RNG.normal(size=(300, 16))
    assert M.frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    feats = RNG.normal(size=(300, 8))
    shift = np.arange(8) / 4.0
    assert M.frechet_distance(feats, feats + shift) == pytest.approx(shift @ shift, rel=1e-5)


def test_frechet_distance_noise_vs_digits_is_far_larger_than_digits_vs_digits(real_digits):
    def pooled(images):  # 7x7 average-pooled pixels as cheap features
        return torch.nn.functional.avg_pool2d(images, 4).flatten(1).double().numpy()

    images, _ = real_digits
    idx = torch.randperm(5000, generator=torch.Generator().manual_seed(1))
    digits_a, digits_b = pooled(images[idx[:400]]), pooled(images[idx[400:800]])
    noise = pooled(torch.rand(400, 1, 28, 28, generator=torch.Generator().manual_seed(2)))
    same = M.frechet_distance(digits_a, digits_b)
    assert M.frechet_distance(digits_a, noise) > 20 * same > 0


def test_precision_recall_of_a_set_with_itself_is_one_and_disjoint_is_zero():
    feats = RNG.normal(size=(200, 5))
    assert M.precision_recall(feats, feats, k=3) == (1.0, 1.0)
    assert M.precision_recall(feats, feats + 100.0, k=3) == (0.0, 0.0)
    with pytest.raises(ValueError):
        M.precision_recall(feats, feats, k=0)


def test_precision_recall_of_a_collapsed_generator_has_precision_but_no_recall():
    real = RNG.normal(size=(300, 2))
    fake = np.repeat(real[:1], 50, axis=0) + RNG.normal(scale=1e-3, size=(50, 2))
    precision, recall = M.precision_recall(real, fake, k=3)
    assert precision == 1.0 and recall < 0.1


def test_mode_coverage_of_uniform_and_collapsed_histograms():
    uniform = np.eye(10)[np.arange(1000) % 10]
    cov = M.mode_coverage(uniform)
    assert cov["kl_to_uniform"] == pytest.approx(0.0, abs=1e-12)
    assert cov["classes_covered"] == 10 and cov["shares"] == [0.1] * 10
    collapsed = M.mode_coverage(np.eye(10)[np.full(100, 3)])
    assert collapsed["classes_covered"] == 1
    assert collapsed["kl_to_uniform"] == pytest.approx(np.log(10))
    # 4.9% of the samples is below half the fair share (5%): not covered
    skewed = np.eye(10)[np.r_[np.full(49, 0), np.full(951, 1)]]
    assert M.mode_coverage(skewed)["classes_covered"] == 1


def test_inception_score_confidence_and_label_agreement():
    confident = np.eye(10)[np.arange(500) % 10]
    assert M.inception_score(confident) == pytest.approx(10.0, rel=1e-6)
    assert M.inception_score(np.full((50, 10), 0.1)) == pytest.approx(1.0)
    assert M.mean_confidence(confident) == 1.0
    assert M.label_agreement(confident, np.arange(500) % 10) == 1.0
    assert M.label_agreement(confident, (np.arange(500) + 1) % 10) == 0.0


# ---- anomaly metrics -------------------------------------------------------------------------
def test_auroc_aupr_known_answers():
    normal, anomaly = np.linspace(0, 1, 50), np.linspace(2, 3, 30)
    assert M.auroc(normal, anomaly) == 1.0
    assert M.aupr(normal, anomaly) == pytest.approx(1.0)
    assert M.auroc(anomaly, normal) == 0.0
    assert M.auroc(np.ones(40), np.ones(25)) == 0.5
    with pytest.raises(ValueError):
        M.auroc(np.array([0.0, np.nan]), anomaly)


def test_tpr_fpr_at_threshold_use_strict_greater_than():
    scores = np.array([0.1, 0.5, 0.5, 0.9])
    assert M.tpr_at_threshold(scores, 0.5) == 0.25
    assert M.fpr_at_threshold(scores, 0.0) == 1.0


@pytest.mark.parametrize("target", [0.01, 0.05, 0.2])
def test_calibration_threshold_gives_about_the_target_fpr_on_its_own_scores(target):
    scores = RNG.gamma(2.0, size=2000)
    cal = Calibration.fit(scores, target)
    fpr = M.fpr_at_threshold(scores, cal.threshold)
    assert target - 1 / scores.size <= fpr <= target


# ---- plots helpers ---------------------------------------------------------------------------
def test_pca_projection_keeps_distances_of_planar_data_and_curves_plot(tmp_path):
    plane = RNG.normal(size=(100, 2))
    rotation, _ = np.linalg.qr(RNG.normal(size=(6, 6)))
    lifted = np.c_[plane, np.zeros((100, 4))] @ rotation
    xy = project_2d(lifted)
    dist = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(xy), dist(plane), atol=1e-9)
    history = [{"step": s, "loss": 1 / (s + 1), "val_acc": s / 10} for s in range(10)]
    path = training_curves(history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- evaluate_model smoke test with a stand-in model -----------------------------------------
@dataclass(frozen=True)
class StandInConfig(ModelConfig):
    conditional: bool = False
    latent_dim: int = 3


class StandIn(GenerativeModel):
    """Tiny untrained linear autoencoder with every optional extra."""

    family = "stand_in"
    config_cls = StandInConfig

    def __init__(self, config: StandInConfig) -> None:
        super().__init__(config)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.enc = nn.Linear(784, config.latent_dim)
            self.dec = nn.Linear(config.latent_dim + 10, 784)
        self.sample_kwargs: list[dict[str, Any]] = []

    def configure_optimizers(self):
        return {"all": torch.optim.Adam(self.parameters())}

    def training_step(self, batch, optimizers):
        return {"loss": 0.0}

    def validation_loss(self, images, labels):
        return {"loss": 0.0}

    def _decode(self, z: Tensor, labels: Tensor | None) -> Tensor:
        onehot = torch.zeros(z.shape[0], 10)
        if labels is not None:
            onehot[torch.arange(z.shape[0]), labels] = 1.0
        return torch.sigmoid(self.dec(torch.cat([z, onehot], 1))).view(-1, 1, 28, 28)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            conditional=self.config.conditional,
            sampling_steps=True,
            reconstruction=True,
            likelihood=True,
            encoder=True,
            interpolation=True,
        )

    def _sample(self, n, generator, labels, steps):
        self.sample_kwargs.append({"steps": steps})
        return self._decode(torch.randn(n, self.config.latent_dim, generator=generator), labels)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.enc(check_images(images).flatten(1))
        return mu, torch.zeros_like(mu)

    def reconstruct(self, images: Tensor) -> Tensor:
        return self._decode(self.encode(images)[0], None)

    def anomaly_score(self, images: Tensor) -> Tensor:
        return (self.reconstruct(images) - images).square().flatten(1).mean(1)

    def elbo(self, images: Tensor) -> Tensor:
        return -784 * self.anomaly_score(images)

    def iwae_bound(self, images: Tensor, k: int = 64) -> Tensor:
        return self.elbo(images)

    def interpolate(self, a: Tensor, b: Tensor, steps: int = 6) -> Tensor:
        w = torch.linspace(0, 1, steps)[:, None]
        return self._decode((1 - w) * self.encode(a)[0] + w * self.encode(b)[0], None)


class MinimalConditional(GenerativeModel):
    """Conditional stand-in with only the required contract (no extras, no `steps`)."""

    family = "minimal"
    config_cls = StandInConfig

    def __init__(self, config: StandInConfig) -> None:
        super().__init__(config)
        self.inner = StandIn(config)
        self.sample_kwargs: list[dict[str, Any]] = []

    configure_optimizers = StandIn.configure_optimizers
    training_step = StandIn.training_step
    validation_loss = StandIn.validation_loss

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(conditional=True)

    def _sample(self, n, generator, labels, steps):
        self.sample_kwargs.append({} if steps is None else {"steps": steps})
        return self.inner._sample(n, generator, labels, None)

    def anomaly_score(self, images: Tensor) -> Tensor:
        return self.inner.anomaly_score(images)


@pytest.fixture(scope="module")
def eval_setup(real_digits):
    images, labels = real_digits
    idx = torch.randperm(5000, generator=torch.Generator().manual_seed(3))
    parts = {"train": idx[:400], "val": idx[400:480], "test": idx[480:560]}
    splits = {k: (images[v], labels[v]) for k, v in parts.items()}
    judge, _ = train_judge(*splits["train"], *splits["val"], epochs=1, max_steps=4,
                           progress=False)  # fmt: skip
    cfg = EvalConfig(n_samples=40, sample_batch_size=16, anomaly_per_kind=4, score_batch_size=32,
                     sample_steps=7, n_plot=16)  # fmt: skip
    return judge, splits, cfg


HEADLINE_KEYS = {
    "fd_judge", "fd_judge_real_reference", "precision", "recall", "inception_score",
    "classes_covered", "kl_to_uniform", "anomaly_auroc_mean", "threshold", "test_fpr", "params",
    "sample_ms_per_image", "score_ms_per_image", "mean_confidence", "anomaly_auroc_pooled",
}  # fmt: skip


def test_evaluate_model_full_extras(eval_setup, tmp_path):
    judge, splits, cfg = eval_setup
    model = StandIn(StandInConfig())
    result = evaluate_model(model, judge, splits, cfg, tmp_path)
    assert HEADLINE_KEYS | {"elbo_nats", "recon_mse", "anomaly_auroc/shapes"} <= set(result)
    assert "label_agreement" not in result and result["family"] == "stand_in"
    assert all(np.isfinite(v) for v in numeric_metrics(result).values())
    assert result["params"] == model.num_parameters()
    assert {kw["steps"] for kw in model.sample_kwargs} == {7}  # sample_steps passed through
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"samples.png", "reconstructions.png", "latent_scatter.png", "interpolation.png",
            "roc.png", "score_histograms.png", "denoising.png"} <= plots  # fmt: skip
    assert "class_grid.png" not in plots
    for kind in CORRUPTIONS:  # the denoising demonstration's numbers (reconstruct here)
        assert result[f"denoise_input_mse/{kind}"] > 0 and result[f"denoise_mse/{kind}"] > 0
    # the saved per-image test scores and calibration are what the model/threshold give
    saved = np.load(tmp_path / "test_scores.npy")
    np.testing.assert_array_equal(saved, score_images(model, splits["test"][0], 32))
    assert Calibration.load(tmp_path).threshold == result["threshold"]
    assert (tmp_path / "metrics.json").is_file()


def test_evaluate_model_minimal_conditional_with_cached_reference(eval_setup, tmp_path):
    judge, splits, cfg = eval_setup
    reference = real_reference(judge, splits["train"][0], splits["test"][0], cfg)
    cached = load_reference(save_reference(reference, tmp_path / "ref.npz"))
    assert set(cached) == set(reference)
    model = MinimalConditional(StandInConfig(conditional=True))
    result = evaluate_model(model, judge, splits, cfg, tmp_path / "out", reference=cached)
    assert HEADLINE_KEYS | {"label_agreement"} <= set(result)
    assert not {"elbo_nats", "recon_mse"} & set(result)
    assert 0.0 <= result["label_agreement"] <= 1.0
    assert model.sample_kwargs and all("steps" not in kw for kw in model.sample_kwargs)
    assert result["fd_judge_real_reference"] == pytest.approx(
        float(reference["fd_judge_real_reference"])
    )
    plots = {p.name for p in (tmp_path / "out" / "plots").iterdir()}
    assert "class_grid.png" in plots and not {"reconstructions.png", "denoising.png"} & plots
    assert not any(key.startswith("denoise") for key in result)
    stale = EvalConfig(**{**cfg.to_dict(), "n_samples": 30})
    with pytest.raises(ValueError, match="recompute"):
        evaluate_model(model, judge, splits, stale, tmp_path / "stale", reference=cached)


def test_eval_config_validates_and_rejects_unknown_keys():
    with pytest.raises(ValueError, match="target_fpr"):
        EvalConfig(target_fpr=1.5)
    with pytest.raises(ValueError, match="sample_steps"):
        EvalConfig(sample_steps=0)
    with pytest.raises(ValueError, match="unknown"):
        EvalConfig.from_dict({"n_sample": 10})
    assert EvalConfig.from_dict({"n_samples": 20}).n_samples == 20


def test_stratified_slice_keeps_class_shares_is_seeded_and_all_when_uncapped():
    import torch

    from pipelines.evaluation.evaluator import stratified_slice

    labels = torch.from_numpy(np.repeat(np.arange(10), [980, 1135, 1032, 1010, 982, 892, 958,
                                                         1028, 974, 1009]))  # fmt: skip
    idx = stratified_slice(labels, 3000, seed=1)
    assert len(idx) == 3000 and len(set(idx.tolist())) == 3000 and bool((idx[1:] > idx[:-1]).all())
    counts = np.bincount(labels[idx].numpy(), minlength=10)
    expected = np.bincount(labels.numpy(), minlength=10) * 3000 / len(labels)
    assert np.abs(counts - expected).max() < 1.0
    assert torch.equal(idx, stratified_slice(labels, 3000, seed=1))
    assert not torch.equal(idx, stratified_slice(labels, 3000, seed=2))
    assert torch.equal(stratified_slice(labels, None, seed=1), torch.arange(len(labels)))
    assert torch.equal(stratified_slice(labels, 20_000, seed=1), torch.arange(len(labels)))
