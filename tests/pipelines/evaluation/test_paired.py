"""The paired bootstrap the promotion gate decides on: statistics, pairing and its intervals."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation import metrics as M
from pipelines.evaluation.paired import Evidence, _auroc, _fd, paired_bootstrap


def _evidence(rng, shift: float, score_gap: float, n: int = 300, d: int = 8) -> Evidence:
    kinds = np.repeat(np.array(["noise", "blank"]), n // 2)
    return Evidence(
        sample_features=rng.normal(shift, 1.0, (n, d)).astype(np.float32),
        reference_features=np.random.default_rng(7).normal(0, 1, (n, d)).astype(np.float32),
        test_scores=rng.normal(0, 1, n),
        suite_scores=rng.normal(score_gap, 1, n),
        suite_kinds=kinds,
    )


def test_fast_statistics_match_the_reference_metrics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, (400, 6)), rng.normal(0.3, 1.2, (300, 6))
    assert _fd(a, b) == pytest.approx(M.frechet_distance(a, b), rel=1e-6)
    normal, anomalous = rng.normal(0, 1, 200), np.round(rng.normal(1, 1, 150), 1)
    assert _auroc(normal, anomalous) == pytest.approx(M.auroc(normal, anomalous), abs=1e-12)


def test_a_clearly_better_candidate_gets_an_interval_above_zero():
    champion = _evidence(np.random.default_rng(1), shift=0.8, score_gap=1.0)
    candidate = _evidence(np.random.default_rng(2), shift=0.0, score_gap=2.5)
    for task in ("generation", "anomaly"):
        interval = paired_bootstrap(task, candidate, champion, n_bootstrap=100, seed=0)
        assert interval.ci_low > 0 and interval.ci_low <= interval.improvement <= interval.ci_high


def test_the_same_model_twice_gives_an_interval_around_zero():
    ev = _evidence(np.random.default_rng(3), shift=0.2, score_gap=1.5)
    for task in ("generation", "anomaly"):
        interval = paired_bootstrap(task, ev, ev, n_bootstrap=50)
        assert interval.improvement == 0 and interval.ci_low == 0 == interval.ci_high


def test_pairing_removes_the_noise_two_similar_models_share():
    """Two models that differ by a small constant: the paired CI is tight and above zero."""
    rng = np.random.default_rng(4)
    champion = _evidence(rng, shift=0.0, score_gap=1.0)
    candidate = Evidence(**{**champion.__dict__, "suite_scores": champion.suite_scores + 0.2})
    interval = paired_bootstrap("anomaly", candidate, champion, n_bootstrap=200)
    assert 0 < interval.ci_low < interval.ci_high < 0.2


def test_unpaired_evidence_and_bad_settings_are_refused(tmp_path):
    a = _evidence(np.random.default_rng(5), 0.0, 1.0)
    b = _evidence(np.random.default_rng(6), 0.0, 1.0, n=200)
    with pytest.raises(ValueError, match="not paired"):
        paired_bootstrap("anomaly", a, b)
    with pytest.raises(ValueError, match="n_bootstrap"):
        paired_bootstrap("anomaly", a, a, n_bootstrap=5)
    with pytest.raises(ValueError, match="unknown task"):
        paired_bootstrap("speed", a, a)
    a.save(tmp_path)
    loaded = Evidence.load(tmp_path)
    assert np.array_equal(loaded.suite_kinds, a.suite_kinds) and loaded.test_scores.shape == (300,)
