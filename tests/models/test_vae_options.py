"""VAE options: the MLP (pytorch/examples) network, the ex-post fitted sampling prior, free bits,
and configs saved before these options existed (tiny seeded configs, real digits, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from models.io import build_model, load_model, save_model
from models.spec import CONFIG_FILE
from models.vae.config import LEGACY_VALUES, V1_KEYS, VAEConfig
from models.vae.model import VAE
from models.vae.networks import MLPDecoder, MLPEncoder
from tests.models.contract import TINY, make, run_steps

MLP = {"arch": "mlp", "hidden_dim": 32, "latent_dim": 4, "lr": 3e-3, "kl_warmup_steps": 0}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def fitted(real_digits) -> VAE:
    """A tiny conv VAE with per-class Gaussians fitted during 30 steps on 600 digits."""
    images, labels = real_digits
    model = make("vae", sampling_prior="class_gaussians", prior_momentum=0.2)
    run_steps(model, images[::8][:600], labels[::8][:600], range(30), batch=64)
    return model


def test_mlp_arch_is_the_textbook_network_and_round_trips(small_batch, tmp_path):
    images, labels = small_batch
    textbook = build_model("vae", {"arch": "mlp", "hidden_dim": 400, "latent_dim": 20})
    assert isinstance(textbook.encoder, MLPEncoder) and isinstance(textbook.decoder, MLPDecoder)
    assert textbook.num_parameters() == 652_824  # pytorch/examples vae: 784-400-20-400-784
    model = make("vae", base=MLP)
    logs, _, _ = run_steps(model, images, labels, range(30), batch=32)
    assert logs[-1]["recon"] + logs[-1]["kl"] < logs[0]["recon"] + logs[0]["kl"] - 20.0
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config and loaded.config.arch == "mlp"
    torch.testing.assert_close(loaded.sample(6, _gen(3)), model.sample(6, _gen(3)))
    torch.testing.assert_close(loaded.elbo(images[:8]), model.elbo(images[:8]))


def test_fitted_prior_sampling_is_deterministic_per_seed_and_saved(fitted, real_digits, tmp_path):
    a, b, other = fitted.sample(16, _gen(5)), fitted.sample(16, _gen(5)), fitted.sample(16, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, other)
    prior = fitted.latent_prior
    assert prior is not None and prior.num_components == 10
    assert int(prior.num_updates.min()) > 0  # every class was seen
    save_model(fitted, tmp_path)
    loaded = load_model(tmp_path)
    assert torch.equal(loaded.latent_prior.means, prior.means)  # buffers in the safetensors
    torch.testing.assert_close(loaded.sample(16, _gen(5)), a)
    # the ELBO keeps the N(0, I) prior: the same as a twin that samples from N(0, I)
    twin = build_model("vae", {**fitted.config.to_dict(), "sampling_prior": "normal"})
    state = {k: v for k, v in fitted.state_dict().items() if not k.startswith("latent_prior.")}
    twin.load_state_dict(state)
    twin.eval()
    images = real_digits[0][:8]
    torch.testing.assert_close(twin.elbo(images), fitted.elbo(images))
    assert not torch.allclose(twin.sample(16, _gen(5)), a)


def test_fitted_prior_is_the_moments_of_each_class_posterior_means(small_batch):
    """With momentum 1 the fit is the last step's per-class mean and covariance of the
    posterior means (computed before that step's update)."""
    from models.base import Batch

    images, labels = small_batch
    model = make(
        "vae",
        sampling_prior="class_gaussians",
        prior_fit="means",
        prior_momentum=1.0,
        bf16_autocast=False,
    )
    means = model.encode(images)
    model.train()
    model.training_step(Batch(images, labels, 0, _gen(0)), model.configure_optimizers())
    prior = model.latent_prior
    for digit in range(10):
        z = means[labels == digit]
        torch.testing.assert_close(prior.means[digit], z.mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(prior.covs[digit], torch.cov(z.T), atol=1e-5, rtol=1e-4)
    shares = torch.bincount(labels, minlength=10) / len(labels)
    torch.testing.assert_close(prior.weights, shares.float())


def test_a_prior_fitted_to_posterior_samples_is_wider_than_one_fitted_to_means(small_batch):
    from models.base import Batch

    images, labels = small_batch
    covs = {}
    for fit in ("means", "samples"):
        model = make("vae", sampling_prior="gaussian", prior_momentum=1.0, prior_fit=fit)
        model.train()
        model.training_step(Batch(images, labels, 0, _gen(0)), model.configure_optimizers())
        covs[fit] = model.latent_prior.covs[0].diagonal()
    # samples add the posterior variance (about 1 per dimension at initialisation)
    assert bool((covs["samples"] > covs["means"] + 0.5).all())


def test_gaussian_prior_is_one_component_and_labels_not_needed(small_batch):
    images, _ = small_batch
    model = make("vae", sampling_prior="gaussian")
    run_steps(model, images, torch.zeros(len(images), dtype=torch.long), range(5))
    assert model.latent_prior.num_components == 1
    labelled = make("vae", sampling_prior="class_gaussians")
    with pytest.raises(ValueError, match="labels"):
        from models.base import Batch

        labelled.training_step(Batch(images, None, 0, _gen(0)), labelled.configure_optimizers())


def test_free_bits_floor_the_training_kl_only(small_batch):
    images, labels = small_batch
    floor = make("vae", free_bits=2.0)  # 8 latent dims: the loss's KL is at least 16 nats
    logs, _, _ = run_steps(floor, images, labels, range(3))
    for entry in logs:
        assert entry["loss"] >= entry["recon"] + 16.0 - 1e-3
        assert entry["kl"] < 16.0  # the logged KL is the true one, far below the floor early


def test_a_config_saved_before_the_options_loads_with_its_old_behaviour(small_batch, tmp_path):
    images, labels = small_batch
    old = make("vae", sampling_prior="normal", arch="conv", free_bits=0.0)
    run_steps(old, images, labels, range(3))
    save_model(old, tmp_path)
    payload = json.loads((tmp_path / CONFIG_FILE).read_text())
    payload["config"] = {k: v for k, v in payload["config"].items() if k in V1_KEYS}
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))  # as the old code wrote it
    loaded = load_model(tmp_path)
    for key, value in LEGACY_VALUES.items():
        assert getattr(loaded.config, key) == value
    assert loaded.latent_prior is None
    torch.testing.assert_close(loaded.sample(8, _gen(1)), old.sample(8, _gen(1)))
    # a partial dict (params.yaml) takes the current defaults instead
    assert VAEConfig.from_dict({"latent_dim": 8}).sampling_prior == VAEConfig().sampling_prior


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("arch", "resnet"),
        ("sampling_prior", "flow"),
        ("prior_momentum", 0.0),
        ("prior_fit", "modes"),
        ("free_bits", -1.0),
    ],
)
def test_invalid_new_options_raise(field, value):
    with pytest.raises(ValueError, match=field):
        VAEConfig(**{**TINY["vae"], field: value})
