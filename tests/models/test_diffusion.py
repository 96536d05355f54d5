"""Contract tests of the diffusion family on tiny CPU configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.diffusion import Diffusion, DiffusionConfig
from models.diffusion.process import GaussianDiffusion
from models.diffusion.schedule import alphas_cumprod, ddim_timesteps
from models.io import build_model, load_model, save_model

TINY = dict(
    base_channels=8,
    channel_mults=(1, 2),
    attention=False,
    timesteps=100,
    sample_steps=4,
    score_timesteps=(10, 30),
    score_draws=2,
    score_steps=2,
    lr=1e-2,
    warmup_steps=5,
    ema_decay=0.5,
    bf16_autocast=False,
)


def tiny(**overrides) -> Diffusion:
    torch.manual_seed(0)
    return build_model("diffusion", {**TINY, **overrides})


def train(model: Diffusion, images, labels, steps: int, batch: int = 32, seed: int = 0) -> list:
    opts = model.configure_optimizers()
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        model.train()
        losses.append(model.training_step(images[idx], labels[idx], opts, step, gen)["loss"])
        model.on_train_step_end(step)
    model.eval()
    return losses


@pytest.fixture(scope="module")
def trained(real_digits) -> tuple[Diffusion, float, torch.Tensor, torch.Tensor]:
    """A tiny conditional model after 30 steps on 500 real digits (and its loss before)."""
    images, labels = real_digits
    train_x, train_y = images[::10], labels[::10]
    model = tiny()
    model.eval()
    with torch.no_grad():
        before = model.validation_loss(train_x[:64], train_y[:64])["loss"]
    train(model, train_x, train_y, steps=30)
    return model, before, train_x, train_y


# ---- config ----------------------------------------------------------------------------
def test_default_config_builds_the_registered_family() -> None:
    model = build_model("diffusion", {})
    assert isinstance(model, Diffusion) and model.family == "diffusion"
    assert model.conditional and model.config == DiffusionConfig()
    assert model.num_parameters() == sum(p.numel() for p in model.unet.parameters())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base_channels", 12),
        ("channel_mults", ()),
        ("channel_mults", (1, 2, 2, 2)),
        ("schedule", "sigmoid"),
        ("objective", "x0"),
        ("p_uncond", 1.0),
        ("sample_steps", 0),
        ("sample_steps", 101),
        ("score_timesteps", (100,)),
        ("score_timesteps", ()),
        ("score_draws", 0),
        ("score_steps", 0),
        ("ema_decay", 1.0),
        ("lr", 0.0),
        ("min_snr_gamma", -1.0),
        ("guidance_scale", -0.5),
    ],
)
def test_invalid_config_raises_naming_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**{**TINY, field: value})


def test_attention_needs_the_7x7_level_and_unknown_keys_fail() -> None:
    with pytest.raises(ValueError, match="attention"):
        DiffusionConfig(channel_mults=(1, 2), attention=True)
    with pytest.raises(ValueError, match="unknown config key"):
        DiffusionConfig.from_dict({"channels": 4})
    assert DiffusionConfig.from_dict({"score_timesteps": [5, 9]}).score_timesteps == (5, 9)


# ---- process pieces --------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedules_decrease_inside_unit_interval(schedule: str) -> None:
    ab = alphas_cumprod(schedule, 50)
    assert ab.shape == (50,) and (ab > 0).all() and (ab < 1).all()
    assert (ab[1:] < ab[:-1]).all()


def test_ddim_timesteps_start_at_level_and_decrease() -> None:
    ts = ddim_timesteps(999, 10)
    assert ts[0] == 999 and len(ts) == 10 and ts == sorted(set(ts), reverse=True)
    assert ddim_timesteps(3, 10) == [3, 2, 1, 0]


@pytest.mark.parametrize("objective", ["v", "eps"])
def test_min_snr_weights_and_target_inversion(objective: str) -> None:
    proc = GaussianDiffusion(100, "cosine", objective, min_snr_gamma=5.0)
    t = torch.tensor([1, 50, 99])
    snr = proc.snr[t]
    expected = snr.clamp(max=5) / (snr if objective == "eps" else snr + 1)
    torch.testing.assert_close(proc.loss_weight(t), expected)
    assert (GaussianDiffusion(100, "cosine", objective, 0.0).loss_weight(t) == 1).all()
    x0 = torch.rand(3, 1, 28, 28) * 1.8 - 0.9  # inside [-1, 1]: the x0 clip changes nothing
    noise = torch.randn(3, 1, 28, 28)
    t = torch.tensor([1, 30, 60])
    x_t = proc.q_sample(x0, t, noise)
    recovered, _ = proc.predict_x0_eps(x_t, t, proc.target(x0, t, noise))
    torch.testing.assert_close(recovered, x0, atol=1e-4, rtol=1e-4)


# ---- training ---------------------------------------------------------------------------
def test_loss_falls_on_real_digits(trained) -> None:
    model, before, train_x, train_y = trained
    with torch.no_grad():
        after = model.validation_loss(train_x[:64], train_y[:64])
    assert set(after) >= {"loss", "mse"}
    assert after["loss"] < 0.6 * before


def test_training_is_reproducible_and_resumable(small_batch) -> None:
    images, labels = small_batch
    straight = tiny()
    train(straight, images, labels, steps=4, batch=16)

    first = tiny()
    opts = first.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    for step in range(2):
        idx = torch.randint(0, len(images), (16,), generator=gen)
        first.training_step(images[idx], labels[idx], opts, step, gen)
        first.on_train_step_end(step)
    resumed = tiny(score_seed=0)
    resumed.load_state_dict(first.state_dict())
    opts2 = resumed.configure_optimizers()
    opts2["unet"].load_state_dict(opts["unet"].state_dict())
    gen2 = torch.Generator()
    gen2.set_state(gen.get_state())
    for step in range(2, 4):
        idx = torch.randint(0, len(images), (16,), generator=gen2)
        resumed.training_step(images[idx], labels[idx], opts2, step, gen2)
        resumed.on_train_step_end(step)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


# ---- sampling ---------------------------------------------------------------------------
def test_sample_shapes_ranges_and_seed_determinism(trained) -> None:
    model = trained[0]
    a = model.sample(6, generator=torch.Generator().manual_seed(7))
    b = model.sample(6, generator=torch.Generator().manual_seed(7))
    c = model.sample(6, generator=torch.Generator().manual_seed(8))
    assert a.shape == (6, 1, 28, 28) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert model.sample(0).shape == (0, 1, 28, 28)


def test_ddim_step_counts_guidance_and_default_labels(trained) -> None:
    model = trained[0]
    outs = {s: model.sample(4, torch.Generator().manual_seed(1), steps=s) for s in (1, 3, 7)}
    assert all(o.shape == (4, 1, 28, 28) for o in outs.values())
    assert not torch.equal(outs[1], outs[7])
    # labels=None on a conditional model cycles 0..9
    cycled = model.sample(12, torch.Generator().manual_seed(2))
    explicit = model.sample(12, torch.Generator().manual_seed(2), labels=torch.arange(12) % 10)
    assert torch.equal(cycled, explicit)
    for scale in (0.0, 1.0, 3.0):
        out = model.sample(3, torch.Generator().manual_seed(2), guidance_scale=scale)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs",
    [{"steps": 0}, {"steps": 101}, {"guidance_scale": -1.0}, {"labels": torch.tensor([10, 0])}],
)
def test_invalid_sample_arguments_raise(trained, kwargs) -> None:
    with pytest.raises(ValueError):
        trained[0].sample(2, **kwargs)


def test_conditional_model_honours_the_label() -> None:
    """Class 0 = black images, class 1 = white: the class decides the brightness."""
    model = tiny()
    labels = torch.arange(32) % 2
    images = labels.float().reshape(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    train(model, images, labels, steps=30)
    asked = torch.arange(16) % 2

    def gap(scale: float) -> float:
        out = model.sample(16, torch.Generator().manual_seed(0), labels=asked, guidance_scale=scale)
        brightness = out.mean(dim=(1, 2, 3))
        assert brightness[asked == 1].min() > brightness[asked == 0].max()
        return float(brightness[asked == 1].mean() - brightness[asked == 0].mean())

    assert gap(2.0) > gap(1.0) > 0.2  # guidance sharpens the class


def test_unconditional_model_samples_and_ignores_labels(small_batch) -> None:
    model = tiny(conditional=False)
    assert not model.conditional and model.unet.class_emb is None
    images, labels = small_batch
    train(model, images, labels, steps=2, batch=8)
    a = model.sample(3, torch.Generator().manual_seed(0), labels=torch.tensor([1, 2, 3]))
    b = model.sample(3, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


# ---- scoring ----------------------------------------------------------------------------
def test_anomaly_scores_finite_deterministic_and_batch_independent(trained, small_batch) -> None:
    model = trained[0]
    images = small_batch[0][:6]
    batch = model.anomaly_score(images)
    assert batch.shape == (6,) and torch.isfinite(batch).all()
    torch.testing.assert_close(model.anomaly_score(images), batch, rtol=0, atol=0)
    one_by_one = torch.cat([model.anomaly_score(images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(one_by_one, batch, rtol=1e-5, atol=1e-7)
    reversed_batch = model.anomaly_score(images.flip(0)).flip(0)
    torch.testing.assert_close(reversed_batch, batch, rtol=1e-5, atol=1e-7)


def test_noise_scores_higher_than_real_digits(trained, real_digits) -> None:
    model = trained[0]
    real = real_digits[0][5::100][:32]  # digits it was not trained on
    noise = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    real_scores, noise_scores = model.anomaly_score(real), model.anomaly_score(noise)
    assert noise_scores.min() > real_scores.max()


def test_reconstruct_shape_range_and_fidelity(trained, small_batch) -> None:
    model = trained[0]
    images = small_batch[0][:4]
    recon = model.reconstruct(images)
    assert recon.shape == images.shape and recon.min() >= 0 and recon.max() <= 1
    assert model.has_reconstruction
    assert (recon - images).pow(2).mean() < (images - images.mean()).pow(2).mean()


# ---- persistence and speed options ------------------------------------------------------
def test_save_load_gives_identical_outputs(trained, small_batch, tmp_path) -> None:
    model = trained[0]
    digest = save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", expected_sha256=digest)
    assert isinstance(loaded, Diffusion) and loaded.config == model.config
    images = small_batch[0][:4]
    torch.testing.assert_close(loaded.anomaly_score(images), model.anomaly_score(images))
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(loaded.sample(4, gen_a), model.sample(4, gen_b))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize("option", ["bf16_autocast", "channels_last"])
def test_speed_options_keep_the_model_equivalent(trained, small_batch, option: str) -> None:
    model = trained[0]
    fast = build_model("diffusion", {**dataclasses.asdict(model.config), option: True})
    fast.load_state_dict(model.state_dict())
    fast.eval()
    images = small_batch[0][:4]
    torch.testing.assert_close(
        fast.anomaly_score(images), model.anomaly_score(images), rtol=1e-3, atol=1e-5
    )
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    diff = (fast.sample(4, gen_a) - model.sample(4, gen_b)).abs().mean()
    assert diff < 0.05
