"""GAN-specific tests (DCGAN / WGAN-GP + f-AnoGAN encoder).

What every family promises (shapes, save/load, seeds, argument checks, resume, batch-independent
scores, capabilities) is tested once for all families in test_contract.py.
"""

from __future__ import annotations

import pytest
import torch

from models.gan import GAN, GANConfig
from models.gan.monitors import (
    SwingTracker,
    d_collapse_warning,
    diversity_ratio,
    mean_pairwise_distance,
    mode_collapse_warning,
    oscillation_warning,
)
from models.io import build_model
from models.tensors import NUM_CLASSES
from tests.models.contract import TINY, make, run_steps

# the contract suite's tiny GAN, with the family's default learning rate and E from step 4
GAN_TINY = {"lr": GANConfig().lr, "encoder_start_step": 4}
LOG_KEYS = {"loss", "d_loss", "g_loss", "d_real", "d_fake", "diversity"}
FLAG_KEYS = {"warn_d_collapse", "warn_mode_collapse", "warn_oscillation"}
GAN_STEPS, ENCODER_STEPS = 150, 60  # the short real-digit run shared by the last tests


def tiny_gan(**overrides) -> GAN:
    model = make("gan", **(GAN_TINY | overrides))
    assert isinstance(model, GAN)
    return model


# ---- construction and config ------------------------------------------------------------
def test_registered_family_builds_from_dict():
    model = build_model("gan", {"objective": "wgan-gp", "betas": [0.0, 0.9]})
    assert isinstance(model, GAN) and model.family == "gan"
    assert model.config.betas == (0.0, 0.9) and model.config.critic_steps == 5
    assert set(model.configure_optimizers()) == {"g", "d", "e"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("objective", "lsgan"),
        ("latent_dim", 0),
        ("g_width", -1),
        ("lr", 0.0),
        ("betas", (1.0, 0.9)),
        ("betas", 0.5),
        ("d_width", True),
        ("n_critic", 0),
        ("gp_weight", -1.0),
        ("encoder_start_step", -1),
        ("kappa", -0.5),
        ("ema_decay", 1.0),
        ("monitor_batch", 1),
        ("mode_collapse_ratio", 1.5),
    ],
)
def test_invalid_config_raises_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        GANConfig(**{field: value})


def test_ema_generator_is_optional_state():
    assert any(k.startswith("g_ema.") for k in tiny_gan().state_dict())
    plain = tiny_gan(ema_decay=0.0)
    assert not any(k.startswith("g_ema.") for k in plain.state_dict()) and plain.sampler is plain.g


def test_wgan_gp_discriminator_has_no_batchnorm():
    assert not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in tiny_gan(objective="wgan-gp").d.modules()
    )
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_gan().d.modules())


def test_training_is_reproducible_from_the_generator(small_batch):
    images, labels = small_batch
    states = []
    for global_seed in (1, 2):  # global RNG must not matter
        model = tiny_gan(objective="wgan-gp")
        with torch.random.fork_rng():
            torch.manual_seed(global_seed)
            run_steps(model, images[:16], labels[:16], range(7), seed=5)  # both phases
        states.append(model.state_dict())
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


# ---- training dynamics and monitors -------------------------------------------------------
def test_training_logs_failure_monitors(small_batch):
    images, labels = small_batch
    model = tiny_gan(encoder_start_step=100, lr=1e-3)
    logs, _, _ = run_steps(model, images, labels, range(10), seed=0)
    assert all(set(entry) >= LOG_KEYS | FLAG_KEYS for entry in logs)
    assert all(entry[k] in (0.0, 1.0) for entry in logs for k in FLAG_KEYS)
    assert all(0.0 < entry["d_real"] < 1.0 and 0.0 < entry["d_fake"] < 1.0 for entry in logs)
    assert logs[-1]["diversity"] != 1.0  # the probe ran (every 2 steps) and replaced the prior


def test_encoder_phase_trains_only_the_encoder_and_its_loss_falls(small_batch):
    images, labels = small_batch
    model = tiny_gan(e_lr=1e-2)
    _, opts, _ = run_steps(model, images, labels, range(4), seed=0)  # the G/D phase
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("e.")}
    logs, _, _ = run_steps(model, images, labels, range(4, 19), opts, seed=0)
    assert all("e_loss" in entry and "d_loss" not in entry for entry in logs)
    # E's objective (izif + label cross-entropy) falls; the real izif drop is tested below
    assert sum(entry["loss"] for entry in logs[-3:]) / 3 < 0.95 * logs[0]["loss"]
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key


def test_wgan_gp_updates_generator_every_n_critic_steps(small_batch):
    images, labels = small_batch
    model = tiny_gan(objective="wgan-gp", n_critic=3)
    logs, _, _ = run_steps(model, images[:16], labels[:16], range(4), seed=0)
    assert ["g_loss" in entry for entry in logs] == [True, False, False, True]
    assert all(entry["gp"] >= 0.0 and "warn_d_collapse" in entry for entry in logs)


def test_mode_collapse_is_flagged_for_a_constant_generator(small_batch):
    images, labels = small_batch
    model = tiny_gan(conditional=False, encoder_start_step=100)
    last = model.g.net[-2]  # the output convolution: zero it -> every sample is the same image
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    logs, _, _ = run_steps(model, images, labels, range(3), seed=0)
    assert logs[2]["diversity"] < 0.05 and logs[2]["warn_mode_collapse"] == 1.0


def test_monitor_functions():
    same = torch.full((4, 1, 28, 28), 0.5)
    real = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert mean_pairwise_distance(same) == 0.0
    assert diversity_ratio(real, real) == pytest.approx(1.0)
    assert mode_collapse_warning(diversity_ratio(same, real), 0.5)
    kw = {"loss_floor": 0.05, "prob_gap": 0.95, "wgan_gap_limit": 10.0}
    assert d_collapse_warning("dcgan", 0.01, 0.99, 0.01, **kw)
    assert not d_collapse_warning("dcgan", 1.2, 0.6, 0.4, **kw)
    assert not d_collapse_warning("wgan-gp", -3.0, 2.0, -1.0, **kw)
    assert d_collapse_warning("wgan-gp", -15.0, 5.0, -10.0, **kw)


def _swing_of(signal: list[float]) -> float:
    state = torch.zeros(SwingTracker.STATE_SIZE, dtype=torch.float64)
    return [SwingTracker.update(state, v) for v in signal][-1]


def test_oscillation_monitor_separates_swings_from_noise_and_drift():
    noise = torch.randn(600, generator=torch.Generator().manual_seed(0)) * 0.15
    steady = [0.5 + float(v) for v in noise]  # batch noise around a steady D gap
    drift = [0.2 + 0.6 * i / 600 + float(v) for i, v in enumerate(noise)]  # slow learning
    swings = [0.5 + (0.4 if (i // 30) % 2 else -0.4) + float(v) for i, v in enumerate(noise)]
    limit = GANConfig().oscillation_swing
    assert _swing_of(steady) < limit / 2 and _swing_of(drift) < limit / 2
    assert _swing_of(swings) > 2 * limit
    assert oscillation_warning(1.0, limit) and not oscillation_warning(limit / 2, limit)


def test_oscillation_flag_clears_when_the_swings_die_out():
    """Swings, then a D gap that settles smoothly (no noise, so no more turns): the flag
    must clear; a signal that keeps swinging stays flagged."""
    limit = GANConfig().oscillation_swing
    swings = [0.5 + (0.4 if (i // 30) % 2 else -0.4) for i in range(300)]
    settle = [0.5 + 0.4 * 0.97**i for i in range(600)]
    state = torch.zeros(SwingTracker.STATE_SIZE, dtype=torch.float64)
    during = [SwingTracker.update(state, v) for v in swings][-1]
    after = [SwingTracker.update(state, v) for v in settle][-1]
    assert oscillation_warning(during, limit)
    assert not oscillation_warning(after, limit), after
    assert _swing_of(swings * 3) > 2 * limit


def test_oscillation_state_is_not_saved_with_the_weights():
    model = tiny_gan()
    assert "gap_swing" in dict(model.named_buffers())
    assert "gap_swing" not in model.state_dict()  # weights from before the monitor still load


@pytest.mark.parametrize(("key", "value"), [("oscillation_swing", 0.0), ("monitor_warmup", -1)])
def test_oscillation_config_is_validated(key, value):
    with pytest.raises(ValueError, match=key):
        GANConfig.from_dict({key: value})


# ---- a short real training run ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(real_digits) -> tuple[GAN, list[dict[str, float]]]:
    """A conditional DCGAN + encoder trained briefly on real digits, with its logs."""
    images, labels = real_digits
    config = {"latent_dim": 32, "g_width": 16, "d_width": 16, "e_width": 16, "lr": 5e-4}
    model = make("gan", base=config, encoder_start_step=GAN_STEPS, ema_decay=0.99)
    assert isinstance(model, GAN)
    logs, _, _ = run_steps(
        model, images, labels, range(GAN_STEPS + ENCODER_STEPS), batch=64, seed=0
    )
    return model, logs


def test_short_run_is_healthy_and_encoder_loss_falls(trained):
    _, logs = trained
    gan_logs, encoder_logs = logs[:GAN_STEPS], logs[GAN_STEPS:]
    assert 0.5 < gan_logs[-1]["diversity"] < 1.5 and gan_logs[-1]["warn_mode_collapse"] == 0.0
    assert sum(entry["warn_d_collapse"] for entry in gan_logs[-50:]) < 10
    first = sum(entry["e_loss"] for entry in encoder_logs[:10]) / 10
    last = sum(entry["e_loss"] for entry in encoder_logs[-10:]) / 10
    assert last < 0.75 * first, f"encoder loss {first:.3f} -> {last:.3f}"


def test_noise_scores_higher_than_real_digits(trained, real_digits):
    trained, _ = trained
    images = real_digits[0][torch.arange(3, 5000, 50)]
    noise = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    real_scores, noise_scores = trained.anomaly_score(images), trained.anomaly_score(noise)
    assert torch.isfinite(real_scores).all() and torch.isfinite(noise_scores).all()
    assert noise_scores.min() > torch.quantile(real_scores, 0.95)


def test_conditional_samples_follow_the_requested_label(trained, real_digits):
    trained, _ = trained
    images, labels = real_digits
    class_means = torch.stack([images[labels == c].mean(0).flatten() for c in range(NUM_CLASSES)])
    requested = torch.arange(200) % NUM_CLASSES
    samples = trained.sample(200, torch.Generator().manual_seed(0), labels=requested)
    nearest = torch.cdist(samples.flatten(1), class_means).argmin(dim=1)
    accuracy = (nearest == requested).float().mean()
    assert accuracy > 0.5, f"nearest-class-mean accuracy {accuracy:.2f} (chance 0.10)"


# ---- the "dknn" score: nearest training digits in D's features ------------------------------
def _dknn_twin(model: GAN, bank_images: torch.Tensor, k: int = 10) -> GAN:
    """`model`'s weights with score "dknn", its bank fitted on `bank_images`."""
    twin = GAN(GANConfig.from_dict(model.config.to_dict() | {"score": "dknn", "score_k": k}))
    state = model.state_dict() | {"score_bank": twin.score_bank}
    twin.load_state_dict(state)
    twin.eval().fit_scorer(bank_images)
    return twin


def test_dknn_ranks_unseen_digits_below_noise_and_glyph_like_strokes(trained, real_digits):
    trained, _ = trained
    images = real_digits[0]
    model = _dknn_twin(trained, images[:4000])
    assert model.score_bank.shape == (4000, model.d.trunk.out_features)
    assert model.score_bank.dtype == torch.float16
    unseen = images[4000:4200]
    noise = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    bars = torch.zeros(1, 1, 28, 28)  # a "#": strokes, no digit
    bars[:, :, 4:24, 10:12] = bars[:, :, 4:24, 17:19] = 1.0
    bars[:, :, 9:11, 4:24] = bars[:, :, 17:19, 4:24] = 1.0
    real, noise_s, bars_s = (model.anomaly_score(x) for x in (unseen, noise, bars))
    assert ((real >= 0) & (real <= 2)).all()
    assert noise_s.min() > torch.quantile(real, 0.95)
    assert bars_s.min() > torch.quantile(real, 0.95)
    # a training digit is its own nearest neighbour: lower than the unseen ones on average
    assert model.anomaly_score(images[:200]).mean() < real.mean()


def test_dknn_bank_is_saved_with_the_weights_and_rebuilt_with_its_length(
    trained, real_digits, tmp_path
):
    from models.io import load_model, save_model

    trained, _ = trained
    model = _dknn_twin(trained, real_digits[0][:300], k=3)
    digest = save_model(model, tmp_path / "gan")
    loaded = load_model(tmp_path / "gan", expected_sha256=digest)
    assert loaded.config.score == "dknn" and loaded.score_bank.shape[0] == 300
    images = real_digits[0][4000:4016]
    assert torch.equal(loaded.anomaly_score(images), model.anomaly_score(images))
    # one image at a time: the batch's values, to the rounding of D's features (as in the
    # contract suite)
    alone = torch.cat([model.anomaly_score(images[i : i + 1]) for i in range(len(images))])
    torch.testing.assert_close(alone, model.anomaly_score(images), rtol=1e-5, atol=1e-6)
    # the two-stage search finds the exhaustive search's neighbours
    features = model._features(images)
    sims = features @ model.score_bank.float().T
    exhaustive = 1.0 - sims.topk(3, dim=1).values.mean(1)
    torch.testing.assert_close(model.anomaly_score(images), exhaustive, rtol=1e-5, atol=1e-6)


def test_dknn_without_a_bank_says_what_to_do():
    model = tiny_gan()  # TINY: score "dknn", never fitted
    with pytest.raises(RuntimeError, match="fit_scorer"):
        model.anomaly_score(torch.zeros(2, 1, 28, 28))


@pytest.mark.parametrize(("key", "value"), [("score", "knn"), ("score_k", 0), ("score_k", 2.5)])
def test_score_config_is_validated(key, value):
    with pytest.raises(ValueError, match=key):
        GANConfig.from_dict({key: value})


def test_the_trainer_fits_the_bank_on_the_training_images(real_digits, tmp_path):
    from pipelines.training.loop import TrainConfig, train

    images, labels = real_digits[0][:96], real_digits[1][:96]
    cfg = TrainConfig(steps=4, batch_size=32, val_every=4, checkpoint_every=4, num_threads=1,
                      progress=False)  # fmt: skip
    result = train("gan", TINY["gan"], cfg, (images, labels), (images[:32], labels[:32]), tmp_path)
    assert result.model.score_bank.shape[0] == 96
    again = train("gan", TINY["gan"], cfg, (images, labels), (images[:32], labels[:32]), tmp_path)
    assert again.resumed_from == 4  # a finished run resumed: the same bank, fitted again
    assert torch.equal(again.model.score_bank, result.model.score_bank)


# ---- negative data augmentation (models/gan/negatives.py) ---------------------------------
def test_jigsaw_moves_every_quadrant_set_and_keeps_the_pixels():
    from models.gan.negatives import jigsaw

    x = torch.rand(64, 1, 28, 28)
    out = jigsaw(x, torch.Generator().manual_seed(0))
    for img, src in zip(out, x, strict=True):
        quads = [src[:, r : r + 14, c : c + 14] for r in (0, 14) for c in (0, 14)]
        got = [img[:, r : r + 14, c : c + 14] for r in (0, 14) for c in (0, 14)]
        order = [next(j for j, q in enumerate(quads) if torch.equal(g, q)) for g in got]
        assert sorted(order) == [0, 1, 2, 3] and order != [0, 1, 2, 3]


def test_stitch_joins_halves_of_two_digits():
    from models.gan.negatives import stitch

    x = torch.rand(32, 1, 28, 28)
    out = stitch(x, torch.Generator().manual_seed(1))
    partner = x.roll(1, dims=0)
    for img, a, b in zip(out, x, partner, strict=True):
        left_right = torch.equal(img[..., :14], a[..., :14]) and torch.equal(
            img[..., 14:], b[..., 14:]
        )
        top_bottom = torch.equal(img[:, :14], a[:, :14]) and torch.equal(img[:, 14:], b[:, 14:])
        assert left_right or top_bottom
    assert not torch.equal(out, x)


def test_negative_batch_mixes_the_kinds_and_refuses_unknown_ones():
    from models.gan.negatives import jigsaw, negative_batch, stitch

    x = torch.rand(64, 1, 28, 28)
    out = negative_batch(x, ("jigsaw", "stitch"), torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    g = torch.Generator().manual_seed(2)
    which = torch.randint(0, 2, (64,), generator=g)
    assert torch.equal(out[which == 0], jigsaw(x, g)[which == 0])
    assert torch.equal(out[which == 1], stitch(x, g)[which == 1])
    with pytest.raises(ValueError, match="cutout"):
        negative_batch(x, ("cutout",), None)


@pytest.mark.parametrize(
    ("key", "value"),
    [("negatives", ("cutout",)), ("negatives", ("jigsaw", "jigsaw")), ("negative_weight", 0.0)],
)
def test_negatives_config_is_validated(key, value):
    with pytest.raises(ValueError, match=key):
        GANConfig.from_dict({key: value})


def test_negatives_train_d_to_call_them_fake(small_batch):
    images, labels = small_batch
    plain = tiny_gan(encoder_start_step=100, lr=1e-3)
    logs_plain, _, _ = run_steps(plain, images, labels, range(3), seed=0)
    assert "d_negative" not in logs_plain[-1]
    model = tiny_gan(encoder_start_step=100, lr=1e-3, negatives=("jigsaw", "stitch"))
    assert GANConfig.from_dict({"negatives": ["jigsaw"]}).negatives == ("jigsaw",)  # YAML list
    logs, _, _ = run_steps(model, images, labels, range(12), seed=0)
    assert all(0.0 < e["d_negative"] < 1.0 and e["d_neg_loss"] > 0 for e in logs)
    assert logs[-1]["d_negative"] < logs[0]["d_negative"]  # D learns to reject them
    assert logs[-1]["loss"] > logs[-1]["d_loss"]  # the negatives' loss is in D's total


def test_wgan_gp_keeps_the_negatives_loss_beside_its_gradient_penalty(small_batch):
    images, labels = small_batch
    model = tiny_gan(objective="wgan-gp", encoder_start_step=100, negatives=("stitch",))
    logs, _, _ = run_steps(model, images, labels, range(2), seed=0)
    for entry in logs:  # the critic's total: its loss, the penalty and the negatives' term
        expected = entry["d_loss"] + model.config.gp_weight * entry["gp"] + entry["d_neg_loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-4)
