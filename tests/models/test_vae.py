"""VAE-specific tests (tiny seeded configs, real digits, CPU).

What every family promises (shapes, save/load, seeds, argument checks, resume, batch-independent
scores, capabilities) is tested once for all families in test_contract.py.
"""

from __future__ import annotations

import pytest
import torch

from models.vae.model import VAE, VAEConfig
from models.vae.objective import kl_weight
from tests.models.contract import make, run_steps


def negative_elbo(logs: list[dict[str, float]]) -> list[float]:
    """Each step's unweighted negative ELBO (nats per image) from the logged terms."""
    return [entry["recon"] + entry["kl"] for entry in logs]


@pytest.fixture(scope="module")
def trained(real_digits) -> VAE:
    """150 steps on 1,000 real digits (all classes), the KL weight warmed up over 50."""
    images, labels = real_digits
    model = make("vae", kl_warmup_steps=50)
    assert isinstance(model, VAE)
    run_steps(model, images[::5], labels[::5], range(150), batch=64, seed=0)
    return model


def test_interpolation_runs_between_the_two_reconstructions(trained, real_digits):
    images = real_digits[0][:7]
    recon = trained.reconstruct(images)
    path = trained.interpolate(images[0], images[1], steps=6)  # (1, 28, 28) inputs work too
    assert path.shape == (6, 1, 28, 28) and path.min() >= 0.0 and path.max() <= 1.0
    torch.testing.assert_close(path[[0, -1]], recon[:2])
    assert trained.encode(images).shape == (7, 8)
    torch.testing.assert_close(trained.anomaly_score(images), -trained.elbo(images))


@pytest.mark.parametrize(
    "extra",
    # the default tiny config is covered by test_contract.py
    [{"decoder": "gaussian"}, {"beta": 4.0}, {"bf16_autocast": False, "channels_last": False}],
)
def test_loss_falls_on_a_tiny_batch(extra, small_batch):
    images, labels = small_batch
    model = make("vae", kl_warmup_steps=0, **extra)
    logs, _, _ = run_steps(model, images, labels, range(40), batch=32, seed=0)
    losses = negative_elbo(logs)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 20.0  # nats per image


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latent_dim", 0),
        ("channels", (8,)),
        ("hidden_dim", -1),
        ("decoder", "poisson"),
        ("gaussian_std", 0.0),
        ("beta", -1.0),
        ("kl_warmup_steps", -5),
        ("lr", 2.0),
        ("elbo_samples", 0),
        ("max_iwae_k", 0),
        ("eval_seed", -1),
    ],
)
def test_invalid_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        VAEConfig(**{field: value})


def test_invalid_arguments_raise(trained, small_batch):
    images = small_batch[0]
    with pytest.raises(ValueError, match="k must be"):
        trained.iwae_bound(images[:2], k=65)
    with pytest.raises(ValueError, match="steps"):
        trained.interpolate(images[0], images[1], steps=1)
    with pytest.raises(ValueError, match="shape"):
        trained.anomaly_score(torch.rand(2, 28, 28))


def test_noise_scores_higher_than_real_digits(trained, real_digits):
    real = real_digits[0][1::5][:500]  # digits not used for training
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert trained.anomaly_score(noise).mean() > 2 * trained.anomaly_score(real).mean()


def test_validation_loss_is_the_negative_elbo_in_nats(trained, real_digits):
    images, labels = real_digits[0][1::50], real_digits[1][1::50]
    metrics = trained.validation_loss(images, labels)
    assert set(metrics) >= {"loss", "elbo", "recon", "kl"}
    assert metrics["loss"] == pytest.approx(-metrics["elbo"])
    assert metrics["elbo"] == pytest.approx(-(metrics["recon"] + metrics["kl"]), rel=1e-5)
    assert metrics["kl"] > 0 and 40.0 < metrics["loss"] < 400.0  # Bernoulli nats per digit
    assert metrics["loss"] == pytest.approx(float(trained.anomaly_score(images).mean()), rel=1e-5)


def test_iwae_bound_tightens_with_k(trained, real_digits):
    images = real_digits[0][1::100]
    elbo = trained.elbo(images).mean()
    iwae_1, iwae_64 = trained.iwae_bound(images, 1).mean(), trained.iwae_bound(images, 64).mean()
    assert iwae_64 > iwae_1 and iwae_64 > elbo


def test_kl_warmup_is_linear():
    assert kl_weight(0, beta=2.0, warmup_steps=100) == pytest.approx(0.02)
    assert kl_weight(49, beta=2.0, warmup_steps=100) == pytest.approx(1.0)
    assert kl_weight(99, beta=2.0, warmup_steps=100) == kl_weight(5000, 2.0, 100) == 2.0
    assert kl_weight(0, beta=0.5, warmup_steps=0) == 0.5
