"""Contract tests of the autoencoder family (tiny seeded configs, real digits, CPU)."""

from __future__ import annotations

import pytest
import torch

from models.autoencoder.latent_prior import LatentGaussianMixture
from models.autoencoder.model import Autoencoder, AutoencoderConfig
from models.io import build_model, load_model, save_model
from tests.models.contract import assert_resume_bit_identical

TINY_CONV = {"channels": (8, 16), "latent_dim": 8, "lr": 3e-3, "prior_momentum": 0.1}
TINY_MLP = {"arch": "mlp", "hidden_dims": (64, 32), "latent_dim": 8}
TINY = {"conv": TINY_CONV, "mlp": TINY_MLP}


def make(config: dict, seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    model = build_model("autoencoder", config)
    assert isinstance(model, Autoencoder)
    return model


def train(model: Autoencoder, images, labels, steps: int, seed: int = 0, batch: int = 64):
    """A minimal copy of the trainer's loop; returns the logged losses."""
    opts = model.configure_optimizers()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        model.train()
        losses.append(model.training_step(images[idx], labels[idx], opts, step, gen)["loss"])
        model.on_train_step_end(step)
    model.eval()
    return losses


@pytest.fixture(scope="module")
def trained(real_digits) -> Autoencoder:
    """150 steps on 1,000 real digits (all classes)."""
    images, labels = real_digits
    model = make(TINY_CONV)
    train(model, images[::5], labels[::5], steps=150)
    return model


@pytest.mark.parametrize("arch", ["conv", "mlp"])
def test_shapes_and_ranges(arch, small_batch):
    images, labels = small_batch
    model = make(TINY[arch])
    train(model, images, labels, steps=2, batch=16)
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    recon = model.reconstruct(images[:7])
    assert samples.shape == (5, 1, 28, 28) and samples.dtype == torch.float32
    assert recon.shape == (7, 1, 28, 28)
    for out in (samples, recon):
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert model.encode(images[:7]).shape == (7, 8)
    scores = model.anomaly_score(images[:7])
    assert scores.shape == (7,) and torch.isfinite(scores).all()
    assert model.sample(0).shape == (0, 1, 28, 28)


def test_textbook_mlp_shape():
    model = make({"arch": "mlp", "hidden_dims": (256, 128), "latent_dim": 32})
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 256), (256, 128), (128, 32), (32, 128), (128, 256), (256, 784),
    ]  # fmt: skip


def test_save_load_gives_identical_outputs(trained, real_digits, tmp_path):
    images = real_digits[0][:32]
    sha = save_model(trained, tmp_path / "ae")
    loaded = load_model(tmp_path / "ae", expected_sha256=sha)
    assert isinstance(loaded, Autoencoder) and loaded.config == trained.config
    assert torch.equal(loaded.reconstruct(images), trained.reconstruct(images))
    assert torch.equal(loaded.anomaly_score(images), trained.anomaly_score(images))
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert torch.equal(loaded.sample(16, generator=gen()), trained.sample(16, generator=gen()))


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"loss": "mse"},
        {"denoise_std": 0.3, "mask_prob": 0.2},
        {"bf16_autocast": False, "channels_last": False},
        TINY_MLP,
    ],
)
def test_loss_falls_on_a_tiny_batch(extra, small_batch):
    images, labels = small_batch
    model = make(TINY_CONV | extra)
    losses = train(model, images, labels, steps=40, batch=32)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_fixed_seed_gives_identical_samples(trained):
    a = trained.sample(8, generator=torch.Generator().manual_seed(3))
    b = trained.sample(8, generator=torch.Generator().manual_seed(3))
    c = trained.sample(8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


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


def test_unknown_config_key_raises():
    with pytest.raises(ValueError, match="latent_size"):
        build_model("autoencoder", {"latent_size": 8})


def test_scores_are_finite_deterministic_and_batch_independent(trained, real_digits):
    images = torch.cat([real_digits[0][:6], torch.rand(2, 1, 28, 28)])
    batch = trained.anomaly_score(images)
    single = torch.cat([trained.anomaly_score(img[None]) for img in images])
    assert torch.isfinite(batch).all()
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    assert torch.equal(batch, trained.anomaly_score(images))


def test_noise_scores_higher_than_real_digits(trained, real_digits):
    real = real_digits[0][1::5][:500]  # digits not used for training
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert trained.anomaly_score(noise).mean() > 2 * trained.anomaly_score(real).mean()


def test_resume_is_bit_identical(small_batch):
    """Checkpoint after 5 steps (weights, optimizer, generator), resume: same as 10 straight."""
    images, labels = small_batch
    cfg = TINY_CONV | {"denoise_std": 0.2, "mask_prob": 0.1}
    assert_resume_bit_identical(lambda seed=0: make(cfg, seed=seed), images[:16], labels[:16])


def test_labels_only_for_the_conditional_prior(small_batch):
    images, labels = small_batch
    uncond = make(TINY_CONV | {"conditional": False})
    train(uncond, images, labels, steps=2, batch=16)
    assert not uncond.conditional and uncond.latent_prior.num_components == 1
    with pytest.raises(ValueError, match="unconditional"):
        uncond.sample(2, labels=torch.tensor([1, 2]))
    cond = make(TINY_CONV)
    assert cond.conditional
    with pytest.raises(ValueError, match="labels"):
        cond.sample(3, labels=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="labels"):
        cond.sample(1, labels=torch.tensor([10]))


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
