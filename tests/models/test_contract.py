"""The GenerativeModel contract, checked the same way for all four families (tiny CPU configs).

Family-specific behaviour (objectives, monitors, config fields, sample quality) is tested in
the `test_<family>.py` files; everything every family promises is tested here once.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.base import Capabilities, GenerativeModel
from models.io import build_model, load_model, save_model
from models.tensors import random_labels
from tests.models.contract import FAMILIES, TINY, assert_resume_bit_identical, make, run_steps

TRAIN_STEPS = {"autoencoder": 40, "vae": 40, "gan": 14, "diffusion": 30}
# how "the loss falls" is read: (source, key); the GAN's validation loss is its encoder's
LOSS_PROBE = {"gan": ("train", "d_loss")}
SCORE_ATOL = {"vae": 1e-3}  # nats per image: hundreds, so float32 sums differ in the 4th digit


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch(real_digits) -> tuple[torch.Tensor, torch.Tensor]:
    """64 fixed real digits, ~6 of each class."""
    images, labels = real_digits
    idx = torch.arange(0, 5000, 78)[:64]
    return images[idx], labels[idx]


@pytest.fixture(scope="module", params=FAMILIES)
def trained(request, batch) -> tuple[GenerativeModel, float, float]:
    """(model after a few dozen steps, loss before, loss after) for each family."""
    family = request.param
    images, labels = batch
    model = make(family).eval()
    source, key = LOSS_PROBE.get(family, ("val", "loss"))

    def val_loss() -> float:
        with torch.no_grad():
            return model.validation_loss(images, labels)[key]

    before = val_loss() if source == "val" else None
    logs, _, _ = run_steps(model, images, labels, range(TRAIN_STEPS[family]), batch=32)
    if source == "train":
        values = [entry[key] for entry in logs if key in entry]
        return model, values[0], sum(values[-3:]) / 3
    return model, before, val_loss()


def test_training_lowers_the_loss(trained) -> None:
    model, before, after = trained
    assert torch.isfinite(torch.tensor([before, after])).all()
    assert after < 0.8 * before, f"{model.family}: loss {before:.4g} -> {after:.4g}"


def test_outputs_have_the_contract_shapes_dtypes_and_ranges(trained, batch) -> None:
    model = trained[0]
    images = batch[0][:7]
    samples = model.sample(5, generator=_gen(0))
    scores = model.anomaly_score(images)
    assert samples.shape == (5, 1, 28, 28) and samples.dtype == torch.float32
    assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert scores.shape == (7,) and scores.is_floating_point() and torch.isfinite(scores).all()
    assert samples.device == scores.device == model.device


def test_capabilities_are_declared_and_truthful(trained, batch) -> None:
    model = trained[0]
    caps = model.capabilities
    assert isinstance(caps, Capabilities) and caps == model.capabilities
    assert caps.conditional == getattr(model.config, "conditional", False) == model.conditional
    assert caps.reconstruction == model.has_reconstruction
    images = batch[0][:4]

    if caps.reconstruction:
        recon = model.reconstruct(images)
        assert recon.shape == images.shape and recon.min() >= 0 and recon.max() <= 1
    else:
        with pytest.raises(NotImplementedError):
            model.reconstruct(images)
    if caps.encoder:
        z = model.encode(images)
        assert z.ndim == 2 and z.shape[0] == 4 and torch.isfinite(z).all()
    else:
        with pytest.raises(NotImplementedError):
            model.encode(images)
    if caps.likelihood:
        for values in (model.elbo(images), model.iwae_bound(images, 4)):
            assert values.shape == (4,) and torch.isfinite(values).all()
    else:
        with pytest.raises(NotImplementedError):
            model.elbo(images)
    if caps.interpolation:
        path = model.interpolate(images[:1], images[1:2], 5)
        assert path.shape == (5, 1, 28, 28) and path.min() >= 0 and path.max() <= 1
    else:
        with pytest.raises(NotImplementedError):
            model.interpolate(images[:1], images[1:2], 5)
    if caps.denoising:
        cleaned = model.denoise(images, 0.3, _gen(4))
        assert cleaned.shape == images.shape and cleaned.min() >= 0 and cleaned.max() <= 1
        assert torch.equal(cleaned, model.denoise(images, 0.3, _gen(4)))  # seeded
        assert model.denoise(images, None, _gen(4)).shape == images.shape  # family default
        for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
            with pytest.raises(ValueError, match="strength"):
                model.denoise(images, bad, _gen(4))
    else:
        with pytest.raises(NotImplementedError):
            model.denoise(images, 0.3, _gen(4))
    if caps.sampling_steps:
        one, three = (model.sample(2, _gen(1), steps=k) for k in (1, 3))
        assert one.shape == three.shape == (2, 1, 28, 28) and not torch.equal(one, three)
        if caps.max_sampling_steps is not None:
            model.sample(1, _gen(1), steps=caps.max_sampling_steps)
            with pytest.raises(ValueError, match="steps"):
                model.sample(1, _gen(1), steps=caps.max_sampling_steps + 1)
    else:
        with pytest.raises(ValueError, match="steps"):
            model.sample(2, _gen(1), steps=3)
    if caps.conditional:
        asked = torch.tensor([0, 1, 2, 3])
        assert model.sample(4, _gen(2), labels=asked).shape == (4, 1, 28, 28)
        assert not torch.equal(
            model.sample(4, _gen(2), labels=asked), model.sample(4, _gen(2), labels=asked.flip(0))
        )


def test_save_load_round_trip_gives_identical_outputs(trained, batch, tmp_path) -> None:
    model = trained[0]
    digest = save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", expected_sha256=digest)
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.capabilities == model.capabilities and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images = batch[0][:8]
    assert torch.equal(loaded.sample(6, _gen(7)), model.sample(6, _gen(7)))
    assert torch.equal(loaded.anomaly_score(images), model.anomaly_score(images))
    if model.capabilities.reconstruction:
        assert torch.equal(loaded.reconstruct(images), model.reconstruct(images))
    if model.capabilities.likelihood:
        assert torch.equal(loaded.elbo(images), model.elbo(images))


def test_same_seed_gives_same_samples(trained) -> None:
    model = trained[0]
    a, b, c = model.sample(8, _gen(3)), model.sample(8, _gen(3)), model.sample(8, _gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("family", "conditional"),
    [(f, c) for f in FAMILIES for c in (True, False) if not (f == "vae" and c)],
)
def test_labels_none_draws_uniform_labels_and_unconditional_models_ignore_labels(
    family: str, conditional: bool
) -> None:
    """The one meaning of labels=None (see `GenerativeModel.sample`)."""
    overrides = {"conditional": conditional} if family != "vae" else {}
    model = make(family, **overrides).eval()
    assert model.capabilities.conditional == conditional
    explicit = torch.tensor([7, 1, 1, 0, 9])
    if conditional:
        gen = _gen(5)
        drawn = random_labels(5, gen, model.device)  # advances `gen` exactly as sample() does
        assert torch.equal(model.sample(5, _gen(5)), model.sample(5, gen, labels=drawn))
        assert not torch.equal(model.sample(5, _gen(5), labels=explicit), model.sample(5, _gen(5)))
    else:
        assert torch.equal(model.sample(5, _gen(5), labels=explicit), model.sample(5, _gen(5)))


BAD_SAMPLE_ARGS = [
    pytest.param({"n": 3.0}, "n must", id="n-float"),
    pytest.param({"n": 0}, "n must", id="n-zero"),
    pytest.param({"n": -2}, "n must", id="n-negative"),
    pytest.param({"n": True}, "n must", id="n-bool"),
    pytest.param({"n": "3"}, "n must", id="n-str"),
    pytest.param({"n": 3, "labels": torch.tensor([1, 2])}, "labels", id="labels-count"),
    pytest.param({"n": 2, "labels": torch.tensor([3, 10])}, "labels", id="labels-range"),
    pytest.param({"n": 2, "labels": torch.tensor([-1, 0])}, "labels", id="labels-negative"),
    pytest.param({"n": 2, "labels": torch.tensor([1.5, 2.0])}, "labels", id="labels-float"),
    pytest.param({"n": 2, "steps": 0}, "steps", id="steps-zero"),
    pytest.param({"n": 2, "steps": 2.0}, "steps", id="steps-float"),
    pytest.param({"n": 2, "steps": True}, "steps", id="steps-bool"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("kwargs", "match"), BAD_SAMPLE_ARGS)
def test_invalid_sample_arguments_raise_value_error(family: str, kwargs: dict, match: str) -> None:
    model = make(family).eval()
    with pytest.raises(ValueError, match=match):
        model.sample(generator=_gen(0), **kwargs)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "diffusion"])
def test_steps_are_refused_by_families_without_sampling_steps(family: str) -> None:
    model = make(family).eval()
    assert not model.capabilities.sampling_steps
    with pytest.raises(ValueError, match="steps"):
        model.sample(2, _gen(0), steps=10)


def test_anomaly_scores_are_deterministic_and_batch_independent(trained, batch) -> None:
    model = trained[0]
    noise = torch.rand(2, 1, 28, 28, generator=_gen(9))
    images = torch.cat([batch[0][:6], noise])
    together = model.anomaly_score(images)
    one_by_one = torch.cat([model.anomaly_score(img[None]) for img in images])
    atol = SCORE_ATOL.get(model.family, 1e-6)
    assert torch.isfinite(together).all()
    assert torch.equal(together, model.anomaly_score(images))
    torch.testing.assert_close(one_by_one, together, rtol=1e-5, atol=atol)
    torch.testing.assert_close(model.anomaly_score(images.flip(0)).flip(0), together,
                               rtol=1e-5, atol=atol)  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_from_a_checkpoint_is_bit_identical(family: str, batch) -> None:
    """Weights, optimizers and generator after 5 steps + 5 resumed = 10 straight (the GAN
    crosses into its encoder phase on the way)."""
    images, labels = batch[0][:16], batch[1][:16]
    overrides = {"encoder_start_step": 4} if family == "gan" else {}
    assert_resume_bit_identical(lambda seed: make(family, seed, **overrides), images, labels)


@pytest.mark.parametrize("family", FAMILIES)
def test_unknown_config_keys_are_refused_by_name(family: str) -> None:
    with pytest.raises(ValueError, match="not_a_field"):
        build_model(family, TINY[family] | {"not_a_field": 1})
    config = build_model(family, TINY[family]).config
    assert dataclasses.is_dataclass(config) and config.from_dict(config.to_dict()) == config


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", FAMILIES)
def test_a_cuda_model_computes_and_returns_on_its_device(family: str, batch) -> None:
    """The device rule: inputs from anywhere, outputs on the model's device, and a CPU
    generator draws the same noise whichever device the model is on."""
    images, labels = batch[0][:16], batch[1][:16]
    cpu = make(family)
    run_steps(cpu, images, labels, range(2))
    gpu = make(family)
    gpu.load_state_dict(cpu.state_dict())
    gpu.to("cuda").eval()
    assert gpu.device.type == "cuda"
    drawn = gpu.sample(4, _gen(0))
    assert drawn.device == gpu.device
    torch.testing.assert_close(drawn.cpu(), cpu.sample(4, _gen(0)), rtol=0, atol=2e-2)
    scores = gpu.anomaly_score(images[:4])  # CPU input
    assert scores.device == gpu.device
    torch.testing.assert_close(scores.cpu(), cpu.anomaly_score(images[:4]), rtol=2e-2, atol=1e-3)
    if gpu.capabilities.reconstruction:
        assert gpu.reconstruct(images[:4]).device == gpu.device
    on_device = torch.Generator(device="cuda").manual_seed(1)
    assert gpu.sample(2, on_device).device == gpu.device
    logs, _, _ = run_steps(gpu, images.cuda(), labels.cuda(), range(2),
                           generator=torch.Generator(device="cuda").manual_seed(2))  # fmt: skip
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logs)


def test_every_registered_family_has_a_tiny_profile() -> None:
    """A family registered in models/spec.py runs this suite only with a tests/profile.py entry."""
    from tests.profile import TINY_PARAMS

    assert set(TINY) == set(FAMILIES), "add the family's tiny model config to tests/profile.py"
    missing = [f for f in FAMILIES if "model" not in TINY_PARAMS.get(f, {})]
    assert not missing, f"add a `{missing}: model:` section to tests/profile.py TINY_PARAMS"
