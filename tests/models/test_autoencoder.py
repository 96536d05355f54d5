"""Autoencoder-specific tests (tiny seeded configs, real digits, CPU).

What every family promises (shapes, save/load, seeds, argument checks, resume, batch-independent
scores, capabilities) is tested once for all families in test_contract.py.
"""

from __future__ import annotations

import pytest
import torch

from models.autoencoder.model import Autoencoder, AutoencoderConfig
from models.layers import LatentGaussianMixture
from tests.models.contract import make, run_steps

# the contract suite's tiny autoencoder corrupts its inputs; these tests train on clean ones
CLEAN = {"denoise_std": 0.0, "mask_prob": 0.0}
TINY_MLP = {"arch": "mlp", "hidden_dims": (64, 32), "latent_dim": 8}


@pytest.fixture(scope="module")
def trained(real_digits) -> Autoencoder:
    """150 steps on 1,000 real digits (all classes)."""
    images, labels = real_digits
    model = make("autoencoder", **CLEAN)
    assert isinstance(model, Autoencoder)
    run_steps(model, images[::5], labels[::5], range(150), batch=64, seed=0)
    return model


def test_textbook_mlp_shape(small_batch):
    model = make("autoencoder", base={}, arch="mlp", hidden_dims=(256, 128), latent_dim=32).eval()
    assert isinstance(model, Autoencoder)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 256), (256, 128), (128, 32), (32, 128), (128, 256), (256, 784),
    ]  # fmt: skip
    images = small_batch[0][:3]
    assert model.reconstruct(images).shape == images.shape
    assert model.encode(images).shape == (3, 32)


@pytest.mark.parametrize(
    "extra",
    [  # the default tiny config is covered by test_contract.py
        {"loss": "mse"},
        {"denoise_std": 0.3, "mask_prob": 0.2},
        {"bf16_autocast": False, "channels_last": False},
        TINY_MLP,
    ],
)
def test_loss_falls_on_a_tiny_batch(extra, small_batch):
    images, labels = small_batch
    model = make("autoencoder", **(CLEAN | extra))
    logs, _, _ = run_steps(model, images, labels, range(40), batch=32, seed=0)
    losses = [entry["loss"] for entry in logs]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("arch", "resnet"),
        ("latent_dim", 0),
        ("hidden_dims", ()),
        ("channels", (8, 16, 32)),
        ("loss", "l1"),
        ("denoise_std", -0.1),
        ("mask_prob", 1.0),
        ("lr", 0.0),
        ("latent_prior", "mixture"),
        ("prior_momentum", 0.0),
    ],
)
def test_invalid_config_raises(field, value):
    with pytest.raises(ValueError, match=field):
        AutoencoderConfig(**{field: value})


def test_noise_scores_higher_than_real_digits(trained, real_digits):
    real = real_digits[0][1::5][:500]  # digits not used for training
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert trained.anomaly_score(noise).mean() > 2 * trained.anomaly_score(real).mean()


def test_one_latent_gaussian_per_class_only_when_conditional(small_batch):
    images, labels = small_batch
    uncond = make("autoencoder", **CLEAN, conditional=False)
    run_steps(uncond, images, labels, range(2), batch=16, seed=0)
    assert not uncond.conditional and uncond.latent_prior.num_components == 1
    assert int(uncond.latent_prior.num_updates[0]) == 2
    cond = make("autoencoder", **CLEAN)
    run_steps(cond, images, labels, range(2), batch=16, seed=0)
    assert cond.conditional and cond.latent_prior.num_components == 10
    assert (cond.latent_prior.num_updates > 0).sum() > 1  # classes with >= 2 images in a batch


def test_conditional_samples_look_like_their_class(trained, real_digits):
    """The mean sample of each requested digit is nearest to that digit's mean real image."""
    images, labels = real_digits
    real_means = torch.stack([images[labels == c].mean(0).flatten() for c in range(10)])
    wanted = torch.arange(10).repeat_interleave(20)
    samples = trained.sample(200, generator=torch.Generator().manual_seed(0), labels=wanted)
    sample_means = samples.view(10, 20, -1).mean(1)
    nearest = torch.cdist(sample_means, real_means).argmin(1)
    assert (nearest == torch.arange(10)).sum() >= 8


def test_latent_prior_first_update_copies_batch_statistics():
    prior = LatentGaussianMixture(num_components=2, dim=3, momentum=0.1)
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    comps = torch.arange(40) % 2
    prior.update(z, comps)
    torch.testing.assert_close(prior.means[1], z[1::2].mean(0))
    torch.testing.assert_close(prior.covs[0], torch.cov(z[0::2].T))
    prior.update(z + 1.0, comps)  # later updates blend in with weight `momentum`
    torch.testing.assert_close(prior.means[1], z[1::2].mean(0) + 0.1)
    draws = prior.sample(
        5000, torch.Generator().manual_seed(0), torch.zeros(5000, dtype=torch.long)
    )
    torch.testing.assert_close(draws.mean(0), prior.means[0], atol=0.1, rtol=0)
