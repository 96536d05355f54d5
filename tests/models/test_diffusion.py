"""Diffusion-specific tests on tiny CPU configs.

What every family promises (shapes, save/load, seeds, argument checks, resume, batch-independent
scores, capabilities, the loss falling) is tested once for all families in test_contract.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.diffusion import Diffusion, DiffusionConfig
from models.diffusion.process import GaussianDiffusion
from models.diffusion.schedule import alphas_cumprod, ddim_timesteps
from models.io import build_model
from tests.models.contract import TINY, make, run_steps


@pytest.fixture(scope="module")
def trained(real_digits) -> Diffusion:
    """A tiny conditional model after 30 steps on 500 real digits."""
    images, labels = real_digits
    model = make("diffusion")
    assert isinstance(model, Diffusion)
    run_steps(model, images[::10], labels[::10], range(30), batch=32, seed=0)
    return model


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
        DiffusionConfig(**(TINY["diffusion"] | {field: value}))


def test_attention_needs_the_7x7_level_and_lists_become_tuples() -> None:
    with pytest.raises(ValueError, match="attention"):
        DiffusionConfig(channel_mults=(1, 2), attention=True)
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


def test_ddim_step_counts_and_guidance_scales(trained) -> None:
    model = trained
    assert model.capabilities.max_sampling_steps == model.config.timesteps
    outs = {s: model.sample(4, torch.Generator().manual_seed(1), steps=s) for s in (1, 3, 7)}
    assert all(o.shape == (4, 1, 28, 28) for o in outs.values())
    assert not torch.equal(outs[1], outs[7])
    default = model.sample(3, torch.Generator().manual_seed(2))
    same = model.guided_sample(
        3, torch.Generator().manual_seed(2), guidance_scale=model.config.guidance_scale
    )
    assert torch.equal(default, same)  # sample() uses the configured guidance scale
    for scale in (0.0, 1.0, 3.0):
        out = model.guided_sample(3, torch.Generator().manual_seed(2), guidance_scale=scale)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_invalid_guidance_scale_raises(trained, scale: float) -> None:
    with pytest.raises(ValueError, match="guidance_scale"):
        trained.guided_sample(2, guidance_scale=scale)
    with pytest.raises(ValueError, match="n must"):
        trained.guided_sample(2.0, guidance_scale=1.0)  # the same checks as sample()


def test_conditional_model_honours_the_label() -> None:
    """Class 0 = black images, class 1 = white: the class decides the brightness."""
    model = make("diffusion")
    assert isinstance(model, Diffusion)
    labels = torch.arange(32) % 2
    images = labels.float().reshape(-1, 1, 1, 1).expand(-1, 1, 28, 28).contiguous()
    run_steps(model, images, labels, range(30), batch=32, seed=0)
    asked = torch.arange(16) % 2

    def gap(scale: float) -> float:
        gen = torch.Generator().manual_seed(0)
        out = model.guided_sample(16, gen, labels=asked, guidance_scale=scale)
        brightness = out.mean(dim=(1, 2, 3))
        assert brightness[asked == 1].min() > brightness[asked == 0].max()
        return float(brightness[asked == 1].mean() - brightness[asked == 0].mean())

    assert gap(2.0) > gap(1.0) > 0.2  # guidance sharpens the class


def test_noise_scores_higher_than_real_digits(trained, real_digits) -> None:
    model = trained
    real = real_digits[0][5::100][:32]  # digits it was not trained on
    noise = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    real_scores, noise_scores = model.anomaly_score(real), model.anomaly_score(noise)
    assert noise_scores.min() > real_scores.max()


def test_reconstruct_shape_range_and_fidelity(trained, small_batch) -> None:
    model = trained
    images = small_batch[0][:4]
    recon = model.reconstruct(images)
    assert recon.shape == images.shape and recon.min() >= 0 and recon.max() <= 1
    assert model.has_reconstruction
    assert (recon - images).pow(2).mean() < (images - images.mean()).pow(2).mean()


def test_denoise_strength_sets_how_much_of_the_input_survives(trained, small_batch) -> None:
    images = small_batch[0][:6]

    def error(strength: float) -> float:
        out = trained.denoise(images, strength, torch.Generator().manual_seed(0))
        return float((out - images).pow(2).mean())

    assert error(0.0) < 1e-3  # level 0: the input back
    assert error(0.0) < error(0.5) < error(1.0)


def test_denoise_options_are_checked_and_used(trained, small_batch) -> None:
    images, labels = small_batch[0][:4], small_batch[1][:4]
    calls: list[int] = []
    forward = trained.ema.shadow.forward
    trained.ema.shadow.forward = lambda *a: calls.append(1) or forward(*a)
    try:
        trained.denoise(images, 0.5, torch.Generator().manual_seed(0), steps=3)
    finally:
        del trained.ema.shadow.forward
    assert len(calls) == 3  # one network call per step (unguided: no labels)
    gen = torch.Generator
    guided = trained.denoise(images, 0.5, gen().manual_seed(0), labels=labels)
    assert not torch.equal(guided, trained.denoise(images, 0.5, gen().manual_seed(0)))
    with pytest.raises(ValueError, match="steps"):
        trained.denoise(images, 0.5, steps=trained.config.timesteps + 1)
    with pytest.raises(ValueError, match="labels"):
        trained.denoise(images, 0.5, labels=labels[:2])


@pytest.mark.parametrize("option", ["bf16_autocast", "channels_last"])
def test_speed_options_keep_the_model_equivalent(trained, small_batch, option: str) -> None:
    model = trained
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
