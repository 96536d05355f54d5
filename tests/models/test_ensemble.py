"""The ensemble candidate: the four families' calibrated scores combined behind the contract.

Tiny untrained members (tests.models.contract.TINY): what is tested is the combination, its
fit (validation normals only), its save/load and its declared capabilities, not digit quality.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.calibration import Calibration
from models.ensemble import Ensemble, EnsembleConfig, fit_ensemble
from models.io import build_model, load_model, save_model
from models.spec import (
    ANOMALY,
    FAMILIES,
    GENERATION,
    MODELS,
    check_family,
    competes,
    family_model_name,
)
from tests.models.contract import make_scoring

VAL = slice(4000, 4160)  # "validation normals"
OTHER = slice(4500, 4512)  # other digits, never used to fit
SPLIT = {"target_fpr": 0.05, "low_fpr": 0.01, "energy_fpr": 0.01}


@pytest.fixture(scope="module")
def members(real_digits) -> dict:
    return {f: make_scoring(f, real_digits[0][:400]) for f in FAMILIES}


@pytest.fixture(scope="module")
def ensemble(members, real_digits) -> Ensemble:
    return fit_ensemble(members, real_digits[0][VAL], **SPLIT)


def test_score_is_the_mean_of_the_members_calibrated_atypicalities(members, ensemble, real_digits):
    val, images = real_digits[0][VAL], real_digits[0][OTHER]
    stats = []
    with torch.no_grad():
        for family, member in members.items():
            # each member calibrated exactly as evaluation calibrates a family, on val only
            calibration = Calibration.fit(
                member.anomaly_score(val).numpy(), 0.05, 0.01, val.numpy(), 0.01
            )
            assert ensemble.calibrations[family] == calibration
            stats.append(calibration.statistic(member.anomaly_score(images).numpy(), images))
        score = ensemble.anomaly_score(images)
    assert score.shape == (len(images),) and score.dtype == torch.float32
    expected = np.maximum(np.mean(stats, axis=0), ensemble.config.floor)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-6)


def test_the_floor_neutralises_the_low_side_of_the_evaluation_calibration(ensemble, real_digits):
    """Evaluation calibrates every model's score two-sided; the ensemble's score is already an
    atypicality, so its floor (the validation median) must leave that low side nothing."""
    val = real_digits[0][VAL]
    with torch.no_grad():
        scores = ensemble.anomaly_score(val).numpy()
    floor = ensemble.config.floor
    assert scores.min() == np.float32(floor) and np.median(scores) == np.float32(floor)
    calibration = Calibration.fit(scores, 0.05, 0.01, val.numpy(), 0.01)  # as evaluation does
    assert calibration.low_threshold == np.float32(floor)
    score_side = calibration.statistic(scores)  # the score's two sides, without the energy test
    assert (score_side[scores == np.float32(floor)] == 0).all()  # the most typical: atypicality 0
    assert (score_side >= 0).all() and not (scores < calibration.low_threshold).any()
    stats = calibration.statistic(scores, val.numpy())
    assert np.mean(stats > 1) <= 0.04 + 1e-9  # the high side and the energy test only


def test_the_fit_sees_validation_normals_only(members, ensemble, real_digits):
    """Same validation normals -> the same fitted ensemble, whatever else exists; other
    normals -> other calibrations. The fit has no argument for anomalies or test images."""
    again = fit_ensemble(members, real_digits[0][VAL].clone(), **SPLIT)
    assert again.config == ensemble.config
    other = fit_ensemble(members, real_digits[0][4200:4360], **SPLIT)
    assert other.config.calibrations != ensemble.config.calibrations
    assert other.config.members == ensemble.config.members


def test_save_load_round_trip_gives_identical_scores_samples_and_config(
    ensemble, tmp_path, real_digits
):
    save_model(ensemble, tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    back = load_model(tmp_path / "ens")
    assert isinstance(back, Ensemble) and back.config == ensemble.config
    images = real_digits[0][OTHER]
    with torch.no_grad():
        assert torch.equal(back.anomaly_score(images), ensemble.anomaly_score(images))
        a = back.sample(3, generator=torch.Generator().manual_seed(5))
        b = ensemble.sample(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    keys = back.state_dict().keys()
    assert all(k.split(".")[1] in FAMILIES and k.startswith("members.") for k in keys)


def test_capabilities_are_declared_and_truthful(members, ensemble, real_digits):
    caps = ensemble.capabilities
    gan = members["gan"]
    assert caps.conditional == gan.capabilities.conditional
    assert not (caps.sampling_steps or caps.likelihood or caps.encoder or caps.interpolation)
    assert caps.reconstruction  # from the autoencoder member
    images = real_digits[0][OTHER][:4]
    with torch.no_grad():
        assert torch.equal(ensemble.reconstruct(images), members["autoencoder"].reconstruct(images))
        # `sample` is the GAN's: same generator state, same images
        gen = torch.Generator().manual_seed(3)
        labels = torch.tensor([1, 2, 3])
        assert torch.equal(
            ensemble.sample(3, generator=gen, labels=labels),
            gan.sample(3, generator=torch.Generator().manual_seed(3), labels=labels),
        )
    with pytest.raises(ValueError, match="no sampling steps"):
        ensemble.sample(2, steps=3)
    with pytest.raises(NotImplementedError):
        ensemble.elbo(images)
    with pytest.raises(ValueError, match="not trained"):
        ensemble.training_step(None, {})
    assert ensemble.configure_optimizers() == {}
    only_vae = fit_ensemble({"vae": members["vae"]}, real_digits[0][VAL], 0.05, sampler="vae")
    assert only_vae.capabilities.reconstruction == members["vae"].capabilities.reconstruction


def test_scores_are_batch_independent_and_flag_degenerate_inputs(ensemble, real_digits):
    images = real_digits[0][OTHER][:6]
    with torch.no_grad():
        batch = ensemble.anomaly_score(images)
        one_by_one = torch.cat([ensemble.anomaly_score(images[i : i + 1]) for i in range(6)])
        val_max = ensemble.anomaly_score(real_digits[0][VAL]).max()
        blank = ensemble.anomaly_score(torch.zeros(2, 1, 28, 28))
        faint = ensemble.anomaly_score(0.15 * images[:2])
    torch.testing.assert_close(batch, one_by_one, rtol=1e-5, atol=1e-6)
    # too-simple inputs: every member's energy test sees them, so the mean does too
    assert (blank > val_max).all() and (faint > val_max).all()
    with pytest.raises(ValueError, match="shape"):
        ensemble.anomaly_score(torch.zeros(2, 28, 28))


def test_max_combination(members, real_digits):
    ens = fit_ensemble(members, real_digits[0][VAL], **SPLIT, combine="max")
    images = real_digits[0][OTHER]
    with torch.no_grad():
        per_member = ens.member_statistics(images)
        score = ens.anomaly_score(images)
    expected = np.maximum(np.max(list(per_member.values()), 0), ens.config.floor)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-6)


def test_config_is_validated(ensemble):
    values = ensemble.config.to_dict()
    for bad, match in [
        ({"members": {}}, "at least one"),
        ({"members": {**values["members"], "ensemble": {}}}, "unknown famil"),
        ({"calibrations": {"vae": values["calibrations"]["vae"]}}, "cover exactly"),
        ({"combine": "median"}, "combine"),
        ({"floor": -1.0}, "floor"),
        ({"sampler": "nope"}, "not a member"),
        ({"calibrations": {**values["calibrations"], "gan": {"thresh": 1}}}, "unknown key"),
    ]:
        with pytest.raises(ValueError, match=match):
            EnsembleConfig.from_dict(values | bad)
    rebuilt = build_model("ensemble", values)  # models.io knows the composite by name
    assert isinstance(rebuilt, Ensemble)
    assert dataclasses.asdict(rebuilt.config) == dataclasses.asdict(ensemble.config)


def test_the_ensemble_is_a_composite_that_competes_for_anomaly_only():
    assert "ensemble" in MODELS and "ensemble" not in FAMILIES  # no training stage
    with pytest.raises(ValueError):
        check_family("ensemble")
    assert family_model_name("ensemble") == "genops-ensemble"
    assert competes("ensemble", ANOMALY) and not competes("ensemble", GENERATION)
    assert all(competes(f, GENERATION) and competes(f, ANOMALY) for f in FAMILIES)


# ---- the encoder-kNN view (params.yaml ensemble.encoder_knn, docs/anomaly.md sixth pass) ------
TRAIN = slice(0, 400)


@pytest.fixture(scope="module")
def knn_ensemble(members, real_digits) -> Ensemble:
    pair = {f: members[f] for f in ("autoencoder", "gan")}
    return fit_ensemble(pair, real_digits[0][VAL], **SPLIT, encoder_knn=3,
                        train_images=real_digits[0][TRAIN])  # fmt: skip


def exhaustive_encoder_knn(autoencoder, train: torch.Tensor, images: torch.Tensor, k: int):
    """The view's statistic the slow, obvious way: every training digit, fp32 cosines (the
    bank's fp16 rounding kept, as the ensemble stores it)."""
    from models.ensemble.model import encoder_features

    bank = encoder_features(autoencoder, train).half().float()
    sims = encoder_features(autoencoder, images) @ bank.T
    return (1.0 - sims.topk(k, dim=1).values).mean(1)


def test_the_encoder_knn_view_is_calibrated_and_combined_like_a_member(
    members, knn_ensemble, real_digits
):
    val, images, train = real_digits[0][VAL], real_digits[0][OTHER], real_digits[0][TRAIN]
    ens = knn_ensemble
    assert ens.config.statistics() == ["autoencoder", "gan", "encoder_knn"]
    assert ens.knn_bank.shape[0] == 400 and ens.knn_bank.dtype == torch.float16
    with torch.no_grad():
        raw = ens.encoder_knn_scores(images)
        exact = exhaustive_encoder_knn(members["autoencoder"], train, images, 3)
        np.testing.assert_allclose(raw.numpy(), exact.numpy(), atol=1e-5)
        # calibrated on the validation normals only, exactly like a member
        val_raw = exhaustive_encoder_knn(members["autoencoder"], train, val, 3).numpy()
        calibration = ens.calibrations["encoder_knn"]
        np.testing.assert_allclose(calibration.val_scores, np.sort(val_raw), atol=1e-5)
        stats = ens.member_statistics(images)
        assert list(stats) == ens.config.statistics()
        np.testing.assert_allclose(
            stats["encoder_knn"], calibration.statistic(raw.numpy(), images.numpy())
        )
        expected = np.maximum(np.mean(list(stats.values()), axis=0), ens.config.floor)
        np.testing.assert_allclose(ens.anomaly_score(images).numpy(), expected, rtol=1e-6)
        # one image at a time = the batch (each image searched on its own)
        one_by_one = torch.cat([ens.anomaly_score(images[i : i + 1]) for i in range(3)])
        assert torch.equal(one_by_one, ens.anomaly_score(images[:3]))


def test_the_encoder_knn_bank_survives_save_and_load(knn_ensemble, tmp_path, real_digits):
    save_model(knn_ensemble, tmp_path / "ens")
    back = load_model(tmp_path / "ens")
    assert back.config == knn_ensemble.config and back.knn_bank.shape[0] == 400
    assert torch.equal(back.knn_bank, knn_ensemble.knn_bank)
    images = real_digits[0][OTHER]
    with torch.no_grad():
        assert torch.equal(back.anomaly_score(images), knn_ensemble.anomaly_score(images))


def test_the_encoder_knn_view_needs_the_autoencoder_and_its_training_digits(
    members, knn_ensemble, real_digits
):
    val = real_digits[0][VAL]
    with pytest.raises(ValueError, match="autoencoder member and the train_images"):
        fit_ensemble({"gan": members["gan"]}, val, **SPLIT, encoder_knn=3,
                     train_images=real_digits[0][TRAIN])  # fmt: skip
    with pytest.raises(ValueError, match="train_images"):
        fit_ensemble({"autoencoder": members["autoencoder"]}, val, **SPLIT, encoder_knn=3)
    values = knn_ensemble.config.to_dict()
    gan_only = {"members": {"gan": values["members"]["gan"]}, "sampler": "gan"}
    gan_knn = {k: values["calibrations"][k] for k in ("gan", "encoder_knn")}
    no_knn = {k: v for k, v in values["calibrations"].items() if k != "encoder_knn"}
    for bad, match in [
        (gan_only | {"calibrations": gan_knn}, "reads the autoencoder"),
        ({"calibrations": no_knn}, "cover exactly"),
        ({"knn_candidates": 2}, "knn_candidates"),
        ({"encoder_knn": -1}, "encoder_knn"),
        ({"knn_coarse_dims": 0}, "knn_coarse_dims"),
    ]:
        with pytest.raises(ValueError, match=match):
            EnsembleConfig.from_dict(values | bad)
    empty = Ensemble(knn_ensemble.config)  # a bank that was never fitted: a clear error
    with pytest.raises(RuntimeError, match="needs a bank"):
        empty.encoder_knn_scores(val[:2])


def test_the_encoder_knn_view_reads_an_mlp_autoencoder_too(members, real_digits):
    """An MLP autoencoder (arch "mlp", the test profile's) has no convolutional trunk: the view
    reads its last hidden layer."""
    mlp = make_scoring("autoencoder", real_digits[0][TRAIN], arch="mlp", hidden_dims=(32,))
    ens = fit_ensemble({"autoencoder": mlp, "gan": members["gan"]}, real_digits[0][VAL],
                       **SPLIT, encoder_knn=3, train_images=real_digits[0][TRAIN])  # fmt: skip
    assert ens.knn_bank.shape == (400, 32)
    with torch.no_grad():
        score = ens.anomaly_score(real_digits[0][OTHER])
    assert score.shape == (12,) and torch.isfinite(score).all()


# ---- view-only members (params.yaml ensemble.view_only, docs/anomaly.md eighth pass) -----------
def test_a_view_only_member_serves_its_view_and_its_own_score_is_left_out(
    members, knn_ensemble, real_digits, tmp_path, monkeypatch
):
    """max(GAN Dknn, encoder kNN): the autoencoder is kept for its encoder, its reconstruction
    score is neither calibrated nor combined (nor even computed)."""
    val, images, train = real_digits[0][VAL], real_digits[0][OTHER], real_digits[0][TRAIN]
    pair = {f: members[f] for f in ("autoencoder", "gan")}
    ens = fit_ensemble(pair, val, **SPLIT, combine="max", encoder_knn=3, train_images=train,
                       view_only=("autoencoder",))  # fmt: skip
    assert ens.config.view_only == ("autoencoder",)
    assert ens.config.statistics() == ["gan", "encoder_knn"]
    assert set(ens.calibrations) == {"gan", "encoder_knn"}
    # the scored parts are calibrated exactly as in the ensemble that also scores the autoencoder
    for name in ("gan", "encoder_knn"):
        assert ens.calibrations[name] == knn_ensemble.calibrations[name]

    def unused(*args, **kwargs):
        raise AssertionError("a view-only member's own score was computed")

    monkeypatch.setattr(ens.members["autoencoder"], "anomaly_score", unused)
    with torch.no_grad():
        stats = ens.member_statistics(images)
        score = ens.anomaly_score(images)
        full = knn_ensemble.member_statistics(images)
    assert list(stats) == ["gan", "encoder_knn"]
    for name in stats:
        np.testing.assert_allclose(stats[name], full[name], rtol=1e-6)
    expected = np.maximum(np.max([full["gan"], full["encoder_knn"]], axis=0), ens.config.floor)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-6)
    monkeypatch.undo()
    save_model(ens, tmp_path / "ens")
    back = load_model(tmp_path / "ens")
    assert back.config == ens.config and back.config.view_only == ("autoencoder",)
    with torch.no_grad():
        assert torch.equal(back.anomaly_score(images), ens.anomaly_score(images))
        # it still reconstructs and samples through its members
        assert back.reconstruct(images).shape == images.shape


def test_view_only_is_validated(members, knn_ensemble, real_digits):
    values = knn_ensemble.config.to_dict()
    scored = {k: values["calibrations"][k] for k in ("gan", "encoder_knn")}
    ok = EnsembleConfig.from_dict(values | {"view_only": ["autoencoder"], "calibrations": scored})
    assert ok.view_only == ("autoencoder",)  # a JSON list comes back as the tuple
    cal = values["calibrations"]
    gan_view_only = {"autoencoder": cal["autoencoder"], "encoder_knn": cal["encoder_knn"]}
    for bad, match in [
        ({"view_only": ["gan"], "calibrations": gan_view_only}, "view_only"),
        ({"view_only": ["vae"]}, "must list members"),
        ({"view_only": ["autoencoder"]}, "cover exactly"),  # its calibration is then extra
        (
            {"view_only": ["autoencoder"], "encoder_knn": 0, "calibrations": {"gan": cal["gan"]}},
            "view_only",
        ),
    ]:
        with pytest.raises(ValueError, match=match):
            EnsembleConfig.from_dict(values | bad)
    with pytest.raises(ValueError, match="view_only"):  # a view-only member with no view
        fit_ensemble({f: members[f] for f in ("autoencoder", "gan")}, real_digits[0][VAL],
                      **SPLIT, view_only=("autoencoder",))  # fmt: skip


def test_the_format_view_is_calibrated_and_combined_like_a_member(members, real_digits, tmp_path):
    """format_test adds the distance from MNIST's format, its reference side the training
    digits' median (20 px), calibrated on validation normals like a member; it survives save
    and load, and an off-format digit (the same digit shrunk) scores above the digit."""
    from models.digit_format import format_distance

    val, images, train = real_digits[0][VAL], real_digits[0][OTHER], real_digits[0][TRAIN]
    pair = {f: members[f] for f in ("autoencoder", "gan")}
    ens = fit_ensemble(pair, val, **SPLIT, encoder_knn=3, train_images=train, combine="max",
                       view_only=("autoencoder",), format_test=True)  # fmt: skip
    assert ens.config.statistics() == ["gan", "encoder_knn", "format"]
    assert ens.config.format_side == 20.0
    calibration = Calibration.fit(format_distance(val.numpy(), 20.0), 0.05, 0.01, val.numpy(), 0.01)
    assert ens.calibrations["format"] == calibration
    with torch.no_grad():
        stats = ens.member_statistics(images)
        np.testing.assert_allclose(
            stats["format"], calibration.statistic(format_distance(images.numpy(), 20.0), images)
        )
        expected = np.maximum(np.max(list(stats.values()), axis=0), ens.config.floor)
        np.testing.assert_allclose(ens.anomaly_score(images).numpy(), expected, rtol=1e-6)
        small = torch.nn.functional.interpolate(images, size=14, mode="bilinear")
        shrunk = torch.nn.functional.pad(small, (7, 7, 7, 7))  # the same digits at half size
        assert (ens.member_statistics(shrunk)["format"] > 1).all()
    save_model(ens, tmp_path / "ens")
    back = load_model(tmp_path / "ens")
    assert back.config == ens.config
    with torch.no_grad():
        assert torch.equal(back.anomaly_score(images), ens.anomaly_score(images))


def test_the_format_view_spends_its_share_of_the_budget(members, real_digits):
    """format_share s: the view is calibrated at s x the budget (every side), so it passes 1 on
    about s x 5 % of the validation normals, and fewer of them than at the whole budget."""
    from models.digit_format import format_distance

    val, train = real_digits[0][VAL], real_digits[0][TRAIN]
    gan = {"gan": members["gan"]}
    whole = fit_ensemble(gan, val, **SPLIT, format_test=True, train_images=train, combine="max")
    fifth = fit_ensemble(gan, val, **SPLIT, format_test=True, train_images=train, combine="max",
                         format_share=0.2)  # fmt: skip
    expected = Calibration.fit(format_distance(val.numpy(), 20.0), 0.05 * 0.2, 0.01 * 0.2,
                               val.numpy(), 0.01 * 0.2)  # fmt: skip
    assert fifth.calibrations["format"] == expected
    assert fifth.calibrations["gan"] == whole.calibrations["gan"]  # the other views unchanged
    with torch.no_grad():
        flagged = {share: (ens.member_statistics(val)["format"] > 1).mean()
                   for share, ens in ((1.0, whole), (0.2, fifth))}  # fmt: skip
    assert flagged[0.2] <= 0.01 + 1e-9 < flagged[1.0], flagged
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="format_share"):
            fit_ensemble(gan, val, **SPLIT, format_test=True, train_images=train,
                         format_share=bad)  # fmt: skip


def test_the_format_view_is_validated(members, real_digits):
    val = real_digits[0][VAL]
    with pytest.raises(ValueError, match="format_test needs the train_images"):
        fit_ensemble({"gan": members["gan"]}, val, **SPLIT, format_test=True)
    ens = fit_ensemble({"gan": members["gan"]}, val, **SPLIT, format_test=True,
                       train_images=real_digits[0][TRAIN])  # fmt: skip
    values = ens.config.to_dict()
    for bad in (-1, 29, True, "20"):
        with pytest.raises(ValueError, match="format_side"):
            EnsembleConfig.from_dict(values | {"format_side": bad})
    no_view = values | {"format_side": 0.0}
    with pytest.raises(ValueError, match="cover exactly"):  # its calibration is then extra
        EnsembleConfig.from_dict(no_view)


# ---- the class-entropy view (params.yaml ensemble.class_entropy, docs/anomaly.md sixteenth pass)
def test_the_class_entropy_view_is_calibrated_at_its_share_and_survives_save_and_load(
    members, real_digits, tmp_path
):
    """The conditional GAN's encoder's class-prediction entropy, calibrated on validation
    normals at entropy_share x the budget like a member, combined last; saved and loaded."""
    val, images = real_digits[0][VAL], real_digits[0][OTHER]
    gan = members["gan"]
    assert gan.config.conditional
    with torch.no_grad():
        entropy = gan.class_entropy(val).numpy()
    assert (entropy >= -1e-6).all() and (entropy <= np.log(10) + 1e-5).all()
    ens = fit_ensemble({"gan": gan}, val, **SPLIT, combine="max", class_entropy=True,
                       entropy_share=0.2)  # fmt: skip
    assert ens.config.statistics() == ["gan", "class_entropy"]
    expected = Calibration.fit(entropy, 0.05 * 0.2, 0.01 * 0.2, val.numpy(), 0.01 * 0.2)
    assert ens.calibrations["class_entropy"] == expected
    with torch.no_grad():
        stats = ens.member_statistics(val)
        assert (stats["class_entropy"] > 1).mean() <= 0.01 + 1e-9  # its share of the budget
        np.testing.assert_allclose(stats["class_entropy"], expected.statistic(entropy, val.numpy()))
        plain = fit_ensemble({"gan": gan}, val, **SPLIT, combine="max")
        assert ens.calibrations["gan"] == plain.calibrations["gan"]  # the member unchanged
    save_model(ens, tmp_path / "ens")
    back = load_model(tmp_path / "ens")
    assert back.config == ens.config and back.config.class_entropy
    with torch.no_grad():
        assert torch.equal(back.anomaly_score(images), ens.anomaly_score(images))


def test_the_class_entropy_view_needs_a_conditional_gan(members, real_digits):
    from tests.models.contract import make

    val = real_digits[0][VAL]
    with pytest.raises(ValueError, match="conditional gan"):
        fit_ensemble({"autoencoder": members["autoencoder"]}, val, **SPLIT, class_entropy=True)
    plain = make("gan", conditional=False).eval()
    with pytest.raises(ValueError, match="conditional"):
        plain.class_entropy(val[:2])
    with pytest.raises(ValueError, match="entropy_share"):
        fit_ensemble({"gan": members["gan"]}, val, **SPLIT, class_entropy=True, entropy_share=0)
    values = fit_ensemble({"gan": members["gan"]}, val, **SPLIT).config.to_dict()
    with pytest.raises(ValueError, match="class_entropy"):
        EnsembleConfig.from_dict(values | {"class_entropy": True})  # no calibration for it
    unconditional = {**values["members"], "gan": {**values["members"]["gan"], "conditional": False}}
    calibrations = {**values["calibrations"], "class_entropy": values["calibrations"]["gan"]}
    with pytest.raises(ValueError, match="conditional GAN member"):
        EnsembleConfig.from_dict(values | {"class_entropy": True, "members": unconditional,
                                           "calibrations": calibrations})  # fmt: skip


# ---- the label-surprise view (params.yaml ensemble.label_surprise, docs/anomaly.md eighteenth)
BANK = slice(0, 400)  # the members' fixture fits the GAN's bank on these, in this order


def test_the_label_surprise_view_reads_the_dknn_neighbours_labels_and_survives_save_and_load(
    members, real_digits, tmp_path
):
    """1 - the encoder's mean probability of the labels of the GAN's own Dknn neighbours (the
    training digits its score averages over), calibrated at surprise_share x the budget,
    combined last; the labels saved with the weights."""
    images, labels = real_digits
    val, other = images[VAL], images[OTHER]
    gan = members["gan"]
    with torch.no_grad():
        rows = gan.neighbour_rows(val)
        assert rows.shape == (len(val), gan.config.score_k)
        # the very neighbours the GAN's score averages over: its mean cosine distance to them
        f = gan._features(val)
        near = (1 - (gan.score_bank[rows].float() * f[:, None]).sum(-1)).mean(1)
        torch.testing.assert_close(near, gan.anomaly_score(val), rtol=1e-5, atol=1e-6)
        probs = gan.class_logits(val).softmax(dim=1)
        surprise = (1 - probs.gather(1, labels[BANK][rows]).mean(1)).numpy()
    assert ((surprise >= -1e-6) & (surprise <= 1 + 1e-6)).all() and surprise.std() > 0
    ens = fit_ensemble({"gan": gan}, val, **SPLIT, combine="max", label_surprise=True,
                       surprise_share=0.5, train_images=images[BANK],
                       train_labels=labels[BANK])  # fmt: skip
    assert ens.config.statistics() == ["gan", "label_surprise"]
    assert torch.equal(ens.bank_labels, labels[BANK])
    expected = Calibration.fit(surprise, 0.05 * 0.5, 0.01 * 0.5, val.numpy(), 0.01 * 0.5)
    assert ens.calibrations["label_surprise"] == expected
    with torch.no_grad():
        stats = ens.member_statistics(val)
        np.testing.assert_allclose(
            stats["label_surprise"], expected.statistic(surprise, val.numpy())
        )
        assert (stats["label_surprise"] > 1).mean() <= 0.025 + 1e-9  # its share of the budget
    save_model(ens, tmp_path / "ens")
    back = load_model(tmp_path / "ens")
    assert back.config == ens.config and torch.equal(back.bank_labels, labels[BANK])
    with torch.no_grad():
        assert torch.equal(back.anomaly_score(other), ens.anomaly_score(other))


def test_the_label_surprise_view_refuses_labels_it_cannot_pair_with_the_bank(members, real_digits):
    from tests.models.contract import make_scoring

    images, labels = real_digits
    val, gan = images[VAL], members["gan"]
    fit = {"label_surprise": True, "train_images": images[BANK], "train_labels": labels[BANK]}
    with pytest.raises(ValueError, match="one set"):  # a label short
        fit_ensemble({"gan": gan}, val, **SPLIT, **fit | {"train_labels": labels[:399]})
    shuffled = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="not these training images"):  # rows out of order
        fit_ensemble({"gan": gan}, val, **SPLIT, **fit | {"train_images": images[BANK][shuffled]})
    with pytest.raises(ValueError, match="train_labels"):
        fit_ensemble({"gan": gan}, val, **SPLIT, **fit | {"train_labels": None})
    with pytest.raises(ValueError, match="0-9"):
        fit_ensemble({"gan": gan}, val, **SPLIT, **fit | {"train_labels": labels[BANK] + 10})
    with pytest.raises(ValueError, match="surprise_share"):
        fit_ensemble({"gan": gan}, val, **SPLIT, **fit, surprise_share=1.5)
    izif = make_scoring("gan", images[BANK], score="izif")
    with pytest.raises(ValueError, match="score dknn"):
        fit_ensemble({"gan": izif}, val, **SPLIT, **fit)
    with pytest.raises(ValueError, match="score dknn"):
        fit_ensemble({"autoencoder": members["autoencoder"]}, val, **SPLIT, **fit)
    values = fit_ensemble({"gan": gan}, val, **SPLIT).config.to_dict()
    with pytest.raises(ValueError, match="label_surprise"):
        EnsembleConfig.from_dict(values | {"label_surprise": True})  # no calibration for it
    calibrations = {**values["calibrations"], "label_surprise": values["calibrations"]["gan"]}
    izif_members = {**values["members"], "gan": {**values["members"]["gan"], "score": "izif"}}
    with pytest.raises(ValueError, match="dknn feature bank"):
        EnsembleConfig.from_dict(values | {"label_surprise": True, "members": izif_members,
                                           "calibrations": calibrations})  # fmt: skip
    ok = EnsembleConfig.from_dict(values | {"label_surprise": True, "calibrations": calibrations})
    assert ok.statistics() == ["gan", "label_surprise"]
