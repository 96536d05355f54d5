"""Calibration: one-sided (old files) and two-sided verdicts with the input-energy test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.calibration import Calibration, image_energy
from models.spec import CALIBRATION_FILE

RNG = np.random.default_rng(0)


def _digits_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """Images whose energy varies like digits' (a random share of pixels lit)."""
    share = rng.uniform(0.05, 0.25, size=(n, 1, 1, 1))
    return (rng.random((n, 1, 28, 28)) < share).astype(np.float32)


def test_default_fit_is_the_one_sided_test_and_old_files_load_as_such(tmp_path):
    scores = RNG.gamma(2.0, size=1000)
    cal = Calibration.fit(scores, 0.05)
    assert not cal.two_sided and not cal.tests_energy
    assert cal.is_anomaly(-1e9) is False and cal.is_anomaly(scores.max()) is True
    old = {"threshold": 1.5, "target_fpr": 0.05, "val_scores": [0.5, 1.0, 1.5, 2.0]}
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps(old))
    loaded = Calibration.load(tmp_path)
    assert loaded == Calibration(1.5, 0.05, (0.5, 1.0, 1.5, 2.0))
    assert loaded.is_anomaly(0.0, image=np.zeros((28, 28))) is False  # no energy test to apply
    assert loaded.raw_percentile(1.0) == 50.0
    # no stored val_statistic: the percentile of a calibrated score uses the raw scores' part
    assert loaded.percentile(float(loaded.statistic(np.array([1.0]))[0])) == 50.0


def test_two_sided_budgets_hold_on_the_validation_normals(tmp_path):
    scores, images = RNG.gamma(2.0, size=2000), _digits_like(2000, RNG)
    cal = Calibration.fit(scores, 0.05, low_fpr=0.01, val_images=images, energy_fpr=0.01)
    energy = image_energy(images)
    assert np.mean(scores < cal.low_threshold) <= 0.01
    assert np.mean(scores > cal.threshold) <= 0.03
    assert np.mean((energy < cal.energy_low) | (energy > cal.energy_high)) <= 0.01
    flagged = np.mean([cal.is_anomaly(s, img) for s, img in zip(scores, images, strict=True)])
    assert 0.05 - 0.01 <= flagged <= 0.05  # the union stays within the budget, barely below
    assert Calibration.load(cal.save(tmp_path).parent) == cal


def test_statistic_exceeds_one_exactly_where_the_verdict_flags():
    scores, images = RNG.lognormal(-4, 0.7, size=500), _digits_like(500, RNG)
    cal = Calibration.fit(scores, 0.05, low_fpr=0.02, val_images=images, energy_fpr=0.01)
    probe = np.r_[
        scores, cal.threshold, cal.low_threshold, 0.0, -1.0, 1e3, RNG.lognormal(-4, 1, 300)
    ]
    probe_images = np.concatenate([images, _digits_like(probe.size - 500, RNG)])
    probe_images[-5:] = [np.zeros((1, 28, 28)), np.ones((1, 28, 28)), *images[:3]]
    with_images = cal.statistic(probe, probe_images)
    score_only = cal.statistic(probe)
    for i, score in enumerate(probe):
        assert (with_images[i] > 1) == cal.is_anomaly(score, probe_images[i]), i
        assert (score_only[i] > 1) == cal.is_anomaly(score), i
    assert with_images[-5] > 10 and with_images[-4] > 1  # blank far out; saturated flagged


def test_the_served_percentile_places_a_score_among_the_normals_own_scores(tmp_path):
    """val_statistic pairs each normal's raw score with its own image: the percentile of a
    calibrated score is the share of normals at or below it, and the share above 1 is exactly
    the flagged share (within the budget)."""
    scores, images = RNG.lognormal(-4, 0.7, size=1000), _digits_like(1000, RNG)
    cal = Calibration.fit(scores, 0.05, low_fpr=0.01, val_images=images, energy_fpr=0.01)
    own = cal.statistic(scores, images)
    assert cal.val_statistic == tuple(np.sort(own))
    flagged = np.mean([cal.is_anomaly(s, img) for s, img in zip(scores, images, strict=True)])
    assert 100.0 - cal.percentile(1.0) == pytest.approx(100.0 * flagged)
    assert 0.04 <= flagged <= 0.05
    blank = float(cal.statistic(np.array([scores.min()]), np.zeros((1, 28, 28)))[0])
    assert blank > 1 and cal.percentile(blank) == 100.0  # the raw score alone would say 0.1 %
    assert cal.raw_percentile(scores.min()) == pytest.approx(0.1)
    loaded = Calibration.load(cal.save(tmp_path).parent)
    assert loaded.val_statistic == cal.val_statistic and loaded.percentile(1.0) == cal.percentile(
        1.0
    )


def test_statistic_ranks_both_tails_above_the_typical_middle():
    scores = np.linspace(1.0, 2.0, 201)  # positive: compared on a log scale
    cal = Calibration.fit(scores, 0.1, low_fpr=0.05)
    stat = cal.statistic(np.array([1.5, 0.9, 2.2, 1e-9, 0.0]))
    assert stat[0] < 0.1 and stat[1] > 1 and stat[2] > 1
    assert stat[3] > stat[1] and np.isfinite(stat[4]) and stat[4] >= stat[3]
    signed = Calibration.fit(np.linspace(-1.0, 1.0, 201), 0.1, low_fpr=0.05)  # linear scale
    assert signed.statistic(np.array([-1.5]))[0] > 1 and signed.is_anomaly(-1.5)


def test_image_energy_accepts_the_usual_layouts():
    img = np.full((28, 28), 0.5)
    for layout in (img, img.reshape(784), img[None], img[None, None], img.reshape(1, 784)):
        np.testing.assert_allclose(image_energy(layout), [0.25])
    assert image_energy(np.zeros((3, 1, 28, 28))).tolist() == [0.0, 0.0, 0.0]


def test_invalid_fits_are_refused():
    scores = RNG.normal(size=100)
    with pytest.raises(ValueError, match="target_fpr"):
        Calibration.fit(scores, 1.0)
    with pytest.raises(ValueError, match="leave part"):
        Calibration.fit(scores, 0.05, low_fpr=0.03, energy_fpr=0.02)
    with pytest.raises(ValueError, match="val_images"):
        Calibration.fit(scores, 0.05, energy_fpr=0.01)
    with pytest.raises(ValueError, match="50 validation images for 100"):
        Calibration.fit(scores, 0.05, val_images=np.zeros((50, 784)), energy_fpr=0.01)
    with pytest.raises(ValueError, match="finite"):
        Calibration.fit(np.array([0.0, np.nan]), 0.05)


def test_a_low_side_that_flags_no_normal_gives_its_budget_to_the_high_side():
    """A score floored at its median (the ensemble's) has nothing strictly below its low
    threshold: the low side's 1 % goes to the high side, so the verdict still spends the
    whole budget on the validation normals; a score with a real low tail keeps its split."""
    rng = np.random.default_rng(1)
    raw = rng.gamma(2.0, size=2000)
    floored = np.maximum(raw, np.median(raw))
    images = _digits_like(2000, rng)
    cal = Calibration.fit(floored, 0.05, 0.01, images, 0.01)
    assert cal.two_sided and cal.low_fpr == 0.0
    assert (floored < cal.low_threshold).sum() == 0
    assert (floored > cal.threshold).mean() == pytest.approx(0.04, abs=1e-3)
    flagged = np.mean([cal.is_anomaly(s, im) for s, im in zip(floored, images, strict=True)])
    assert 0.04 <= flagged <= 0.05
    before = Calibration.fit(raw, 0.05, 0.01, images, 0.01)  # a real low tail: unchanged split
    assert before.low_fpr == 0.01 and (raw < before.low_threshold).mean() == pytest.approx(
        0.01, abs=1e-3
    )
    assert (raw > before.threshold).mean() == pytest.approx(0.03, abs=1e-3)


def test_a_threshold_at_the_median_makes_every_value_beyond_it_infinitely_atypical():
    """Most normals share one score (a format distance of 0, a floored score): the high
    threshold is the median itself. Beyond it is huge or inf (flagged), without an overflow
    warning."""
    import warnings

    scores = np.r_[np.zeros(990), np.linspace(1.0, 2.0, 10)]
    calibration = Calibration.fit(scores, 0.05)
    assert calibration.threshold == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = calibration.statistic(np.array([0.0, 0.5, 1e6]))
    assert stats[0] <= 0 and stats[1] > 1e300 and stats[2] == np.inf
