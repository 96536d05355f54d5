"""The judge: learns digits, is deterministic per seed, and round-trips through safetensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.evaluation.judge import (
    JudgeConfig,
    JudgeNet,
    judge_accuracy,
    judge_outputs,
    load_judge,
    save_judge,
    train_judge,
)


@pytest.fixture(scope="module")
def digit_split(real_digits):
    images, labels = real_digits
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    train, val, test = idx[:1200], idx[1200:1400], idx[1400:1800]
    return (images[train], labels[train]), (images[val], labels[val]), (images[test], labels[test])


@pytest.fixture(scope="module")
def tiny_judge(digit_split):
    (xtr, ytr), (xva, yva), _ = digit_split
    return train_judge(xtr, ytr, xva, yva, epochs=2, batch_size=64, max_steps=36, progress=False)


def test_tiny_judge_learns_digits_well_above_chance(tiny_judge, digit_split):
    net, history = tiny_judge
    x_test, y_test = digit_split[2]
    assert judge_accuracy(net, x_test, y_test) > 0.6  # chance is 0.1
    assert [h["step"] for h in history] == [19, 36]
    assert all(np.isfinite(h["loss"]) for h in history)


def test_outputs_have_feature_dim_and_probabilities(tiny_judge, small_batch):
    net, _ = tiny_judge
    feats, probs = judge_outputs(net, small_batch[0], batch_size=10)
    assert feats.shape == (64, net.config.feature_dim) and probs.shape == (64, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    uint8 = (small_batch[0].numpy().reshape(64, 784) * 255).round().astype(np.uint8)
    feats_u8, _ = judge_outputs(net, uint8)  # uint8 pixels are accepted and rescaled
    np.testing.assert_allclose(feats_u8, feats, atol=1e-2)


def test_same_seed_same_weights_and_other_seed_differs(small_batch):
    x, y = small_batch
    kwargs = dict(epochs=1, batch_size=16, max_steps=3, progress=False)
    a, hist_a = train_judge(x, y, x, y, seed=7, **kwargs)
    b, hist_b = train_judge(x, y, x, y, seed=7, **kwargs)
    c, _ = train_judge(x, y, x, y, seed=8, **kwargs)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert strip(hist_a) == strip(hist_b)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_save_load_round_trip_gives_identical_outputs(tiny_judge, small_batch, tmp_path):
    net, _ = tiny_judge
    save_judge(net, tmp_path / "judge", extra={"test_accuracy": 0.5})
    payload = json.loads((tmp_path / "judge" / "config.json").read_text())
    assert payload["kind"] == "judge" and payload["extra"] == {"test_accuracy": 0.5}
    loaded = load_judge(tmp_path / "judge")
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(small_batch[0]), net.eval()(small_batch[0]))


def test_load_refuses_a_non_judge_config(tiny_judge, tmp_path):
    save_judge(tiny_judge[0], tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"kind": "vae"}))
    with pytest.raises(ValueError, match="not a judge"):
        load_judge(tmp_path)


@pytest.mark.parametrize(
    "kwargs", [{"channels": (16, 32)}, {"channels": (16, 0, 8)}, {"feature_dim": 1}]
)
def test_invalid_judge_config_raises(kwargs):
    with pytest.raises(ValueError, match="JudgeConfig"):
        JudgeConfig(**kwargs)


def test_invalid_training_arguments_raise(small_batch):
    x, y = small_batch
    with pytest.raises(ValueError):
        train_judge(x, y, x, y, epochs=0, progress=False)
    with pytest.raises(ValueError, match="sizes differ"):
        train_judge(x, y[:10], x, y, progress=False)


def test_training_leaves_the_global_rng_untouched(small_batch):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_judge(*small_batch, *small_batch, epochs=1, batch_size=32, max_steps=1, progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert isinstance(JudgeNet().features(torch.zeros(2, 1, 28, 28)), torch.Tensor)
