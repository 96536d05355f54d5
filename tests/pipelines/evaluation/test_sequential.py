"""The generation gate's sequential KID test: the statistic, its error rates on known truths,
the cap, the registry's handling of its decision, and real tiny models through a real judge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from models.spec import TASKS, Tag
from pipelines import tracking
from pipelines.evaluation.judge import train_judge
from pipelines.evaluation.sequential import (
    METHOD,
    SequentialConfig,
    fieller,
    kid,
    sequential_test,
)
from pipelines.registry import client as registry
from pipelines.registry.generation_gate import feature_sampler
from tests.models.contract import make, run_steps

D = 16
REAL = np.random.default_rng(123).normal(size=(4000, D))
SMALL = SequentialConfig(round_size=200, block_size=50, max_per_model=2000, min_blocks=8)


def gaussian(shift: float):
    def draw(n: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).normal(size=(n, D)) + shift

    return draw


def test_kid_is_unbiased_near_zero_and_grows_with_the_gap():
    rng = np.random.default_rng(0)
    same = [kid(rng.normal(size=(100, D)), rng.normal(size=(100, D))) for _ in range(200)]
    assert abs(np.mean(same)) < 3 * np.std(same) / math.sqrt(len(same))  # unbiased: mean ~ 0
    assert min(same) < 0  # an unbiased estimator goes below zero; a biased FD never does
    near, far = (kid(rng.normal(size=(300, D)) + s, REAL[:300]) for s in (0.1, 0.5))
    assert 0 < near < far


def test_fieller_interval_holds_the_ratio_and_opens_when_the_champion_is_not_clear_of_zero():
    rng = np.random.default_rng(1)
    a = 1.0 + 0.1 * rng.normal(size=40)
    b = 0.5 + 0.1 * rng.normal(size=40)
    low, high = fieller(a, b, 2.0)
    assert low < 1 - b.mean() / a.mean() < high and low > 0.3 and high < 0.7
    assert fieller(0.01 * rng.normal(size=40), b, 2.0) == (-math.inf, math.inf)


def test_aa_gates_rarely_promote_and_power_gates_always_do():
    """Known truths: identical generators (A/A) and a clearly closer challenger (power)."""
    aa = [sequential_test(gaussian(0.3), gaussian(0.3), REAL, 0.05,
                              SequentialConfig(**{**SMALL.to_dict(), "seed": s}))
          for s in range(30)]  # fmt: skip
    false_promotions = sum(r.decision == "promote" for r in aa)
    assert false_promotions <= 1, [r.summary() for r in aa if r.decision == "promote"]
    power = [sequential_test(gaussian(0.1), gaussian(0.4), REAL, 0.05,
                                 SequentialConfig(**{**SMALL.to_dict(), "seed": s}))
             for s in range(10)]  # fmt: skip
    assert all(r.decision == "promote" for r in power)
    assert all(r.final.ci_low > 0.05 for r in power)  # the interval clears the margin
    assert all(r.final.n_per_model == 400 for r in power)  # stopped at the first look


def test_a_gate_that_hits_its_cap_keeps_the_champion_and_says_so():
    cfg = SequentialConfig(round_size=100, block_size=50, max_per_model=300, min_blocks=4,
                           alpha=0.01, futility_beta=0.01)  # fmt: skip
    result = sequential_test(gaussian(0.3), gaussian(0.3), REAL, 0.0, cfg)
    assert result.decision == "cap" and not result.clears(0.0)
    assert "cap of 300" in result.reason and "champion is kept" in result.reason
    assert [look.n_per_model for look in result.looks] == [200, 300]  # looked at every round
    assert result.to_dict()["n_per_model"] == 300 and result.to_dict()["rounds"] == 3


def test_the_result_is_reproducible_and_json_safe():
    one = sequential_test(gaussian(0.1), gaussian(0.4), REAL, 0.05, SMALL)
    two = sequential_test(gaussian(0.1), gaussian(0.4), REAL, 0.05, SMALL)
    assert one.final.statistic == two.final.statistic and one.final.ci_low == two.final.ci_low
    json.dumps(one.to_dict())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"block_size": 5},
        {"round_size": 150, "block_size": 100},
        {"max_per_model": 1234},
        {"min_blocks": 2},
        {"alpha": 0.6},
        {"futility_beta": 0.01},
        {"max_per_model": 500, "min_blocks": 10},
    ],
)
def test_invalid_sequential_config_raises(kwargs):
    with pytest.raises(ValueError):
        SequentialConfig(**kwargs)


def test_margin_must_be_relative():
    with pytest.raises(ValueError, match="relative"):
        sequential_test(gaussian(0), gaussian(0), REAL, 2.0, SMALL)


# ---- the registry acts on the sequential decision ---------------------------------------------
@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOPS_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _version(tmp_path, family: str, sha: str, config: str | None = None) -> str:
    model_dir = tmp_path / f"m-{family}-{sha}"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps({"family": family}))
    run_id = tracking.log_run(f"eval-{family}", params={}, tags={}, metrics={"fd_judge": 1.0},
                              artifacts={"model": model_dir})  # fmt: skip
    tags = {Tag.FAMILY: family, Tag.DATA_VERSION: "d1", Tag.WEIGHTS_SHA256: sha}
    tags |= {Tag.CONFIG_SHA256: config} if config else {}
    return registry.register_version(TASKS["generation"].registered_model, run_id, "model", tags)


def test_registry_promotes_on_the_sequential_decision_and_records_rounds_and_cost(store):
    task = TASKS["generation"]
    v1 = _version(store, "gan", "aaa")
    registry.gate(task, v1, "gan", {"fd_judge": 9.0}, "d1", margin=0.05)
    v2 = _version(store, "diffusion", "bbb")
    result = sequential_test(gaussian(0.1), gaussian(0.4), REAL, 0.05, SMALL)
    won = registry.gate(task, v2, "diffusion", {"fd_judge": 5.0}, "d1", margin=0.05,
                        compare=lambda mv: (result, "fresh samples"))  # fmt: skip
    assert won.promoted and won.method == METHOD and str(registry.champion(task).version) == v2
    assert won.champion_metric is None  # KIDs are not FD-judge: kept in the interval
    tags = registry._client().get_model_version(task.registered_model, v2).tags
    assert tags["promotion.method"] == METHOD and tags["promotion.stop"] == "promote"
    assert tags["promotion.n_per_model"] == "400" and float(tags["promotion.seconds"]) >= 0
    assert float(tags["promotion.p_value"]) < 0.05 / SMALL.looks


def test_a_copy_of_the_champion_is_never_promoted(store):
    task = TASKS["generation"]
    v1 = _version(store, "gan", "same")
    registry.gate(task, v1, "gan", {"fd_judge": 9.0}, "d1", margin=0.05)
    v2 = _version(store, "gan", "same")  # the same weights registered again

    def compare(mv):  # pragma: no cover - must not be reached
        raise AssertionError("a copy needs no test")

    kept = registry.gate(task, v2, "gan", {"fd_judge": 1.0}, "d2", margin=0.0, compare=compare)
    assert not kept.promoted and kept.method == "same-weights"
    assert str(registry.champion(task).version) == v1


def test_the_same_weights_with_another_config_are_another_model(store):
    """An ensemble with a new view keeps its members' weights: the registry must register it
    as a new version (not hand back the old one) and the gate must test it, not wave it
    through as a copy."""
    task = TASKS["generation"]
    name = task.registered_model
    model_dir = store / "m-ensemble"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    run_id = tracking.log_run("eval-ensemble", params={}, tags={}, metrics={"fd_judge": 1.0},
                              artifacts={"model": model_dir})  # fmt: skip
    run = {"run_id": run_id, Tag.FAMILY: "gan", Tag.DATA_VERSION: "d1", Tag.WEIGHTS_SHA256: "w"}
    v1 = registry.register_candidate(name, run | {Tag.CONFIG_SHA256: "c1"}, {"fd_judge": 9.0})
    assert registry.register_candidate(name, run | {Tag.CONFIG_SHA256: "c1"}, {}) == v1
    v2 = registry.register_candidate(name, run | {Tag.CONFIG_SHA256: "c2"}, {"fd_judge": 5.0})
    assert v2 != v1
    tags = registry._client().get_model_version(name, v2).tags
    assert tags[Tag.CONFIG_SHA256] == "c2" and tags[Tag.WEIGHTS_SHA256] == "w"
    registry.gate(task, v1, "gan", {"fd_judge": 9.0}, "d1", margin=0.05)
    asked = []
    result = sequential_test(gaussian(0.1), gaussian(0.4), REAL, 0.05, SMALL)

    def compare(mv):
        asked.append(str(mv.version))
        return result, "fresh samples"

    won = registry.gate(task, v2, "gan", {"fd_judge": 5.0}, "d1", margin=0.05, compare=compare)
    assert asked == [v1] and won.method == METHOD and won.promoted
    assert str(registry.champion(task).version) == v2


def test_a_version_registered_before_the_config_tag_is_recognised_by_its_config(store):
    """A version without `config_sha256` (registered before the tag existed) is the same model
    as a tagged run with its weights and the sha256 of its registered config.json: register
    hands it back (and tags it) instead of a needless new version; another config is another
    version. The gate reads the legacy champion's config the same way."""
    import hashlib

    task = TASKS["generation"]
    name = task.registered_model
    legacy = _version(store, "gan", "w")  # no config tag; its config.json is {"family": "gan"}
    config = json.dumps({"family": "gan"}).encode()
    sha = hashlib.sha256(config).hexdigest()
    run_id = registry._client().get_model_version(name, legacy).run_id
    run = {"run_id": run_id, Tag.FAMILY: "gan", Tag.DATA_VERSION: "d1", Tag.WEIGHTS_SHA256: "w"}
    assert registry.register_candidate(name, run | {Tag.CONFIG_SHA256: sha}, {}) == legacy
    assert registry._client().get_model_version(name, legacy).tags[Tag.CONFIG_SHA256] == sha
    other = registry.register_candidate(name, run | {Tag.CONFIG_SHA256: "other"}, {})
    assert other != legacy
    registry.gate(task, legacy, "gan", {"fd_judge": 9.0}, "d1", margin=0.05)
    same = _version(store, "gan", "w")  # another legacy copy: same weights, same config

    def compare(mv):  # pragma: no cover - must not be reached
        raise AssertionError("a copy needs no test")

    kept = registry.gate(task, same, "gan", {"fd_judge": 1.0}, "d1", margin=0.0, compare=compare)
    assert kept.method == "same-weights" and not kept.promoted


# ---- real tiny models through a real (tiny) judge ---------------------------------------------
def test_a_trained_generator_beats_an_untrained_one_on_fresh_samples(real_digits):
    images, labels = real_digits
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    tr, va, te = idx[:1200], idx[1200:1400], idx[1400:2400]
    judge, _ = train_judge(images[tr], labels[tr], images[va], labels[va], epochs=1,
                           batch_size=64, max_steps=30, progress=False)  # fmt: skip
    trained, untrained = make("autoencoder", seed=0), make("autoencoder", seed=0)
    run_steps(trained, images[tr], labels[tr], range(150), batch=64)
    from pipelines.evaluation.judge import judge_outputs

    real = judge_outputs(judge, images[te])[0]
    cfg = SequentialConfig(round_size=200, block_size=50, max_per_model=1000, min_blocks=8)
    result = sequential_test(
        feature_sampler(trained, judge), feature_sampler(untrained, judge), real, 0.05, cfg
    )
    assert result.decision == "promote", result.summary()
    copy = sequential_test(
        feature_sampler(untrained, judge), feature_sampler(untrained, judge), real, 0.05, cfg
    )
    assert copy.decision != "promote", copy.summary()


def test_a_refused_comparison_keeps_the_champion_and_records_the_overlap(store):
    from pipelines.data.lineage import METHOD_REFUSED, Refusal
    from pipelines.registry.reports import promotion_markdown

    task = TASKS["generation"]
    v1 = _version(store, "gan", "one")
    registry.gate(task, v1, "gan", {"fd_judge": 9.0}, "d1", margin=0.05)
    v2 = _version(store, "diffusion", "two")
    overlap = {"champion_data_version": "d1", "test_total": 500, "test_seen": 450,
               "val_total": 500, "val_seen": 400, "known": True}  # fmt: skip
    refusal = Refusal("too few unseen digits left", overlap)
    kept = registry.gate(task, v2, "diffusion", {"fd_judge": 1.0}, "d2", margin=0.05,
                         compare=lambda mv: (refusal, "refused (lineage)", overlap))  # fmt: skip
    assert not kept.promoted and kept.method == METHOD_REFUSED and kept.overlap == overlap
    assert str(registry.champion(task).version) == v1
    tags = registry._client().get_model_version(task.registered_model, v2).tags
    assert tags["promotion.overlap_test_seen"] == "450" and "refused" in tags["promotion.reason"]
    report = {"data_version": "d2", "decisions": [kept.to_dict()], "champions": {}}
    assert "refused: too few unseen digits left" in promotion_markdown(report)
