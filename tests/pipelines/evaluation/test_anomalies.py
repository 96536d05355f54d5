"""The anomaly suite: seeded, byte-identical, every kind present, images in range."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipelines.evaluation.anomalies import ANOMALY_KINDS, build_anomaly_suite


@pytest.fixture(scope="module")
def base_uint8(real_digits) -> np.ndarray:
    images, _ = real_digits
    return (images[::25].numpy().reshape(-1, 28, 28) * 255).round().astype(np.uint8)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(base_uint8):
    a, kinds_a = build_anomaly_suite(base_uint8, n_per_kind=6, seed=11)
    b, kinds_b = build_anomaly_suite(base_uint8, n_per_kind=6, seed=11)
    c, _ = build_anomaly_suite(base_uint8, n_per_kind=6, seed=12)
    assert _digest(a) == _digest(b) and kinds_a.tolist() == kinds_b.tolist()
    assert _digest(a) != _digest(c)


def test_every_kind_present_with_shape_dtype_and_range(base_uint8):
    images, kinds = build_anomaly_suite(base_uint8, n_per_kind=5, seed=0)
    assert images.shape == (5 * len(ANOMALY_KINDS), 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert kinds.tolist() == [k for k in ANOMALY_KINDS for _ in range(5)]
    for kind in ANOMALY_KINDS:
        group = images[kinds == kind]
        assert group.std() > 0.05, kind  # not blank
        assert np.abs(group[0] - group[1]).max() > 0, kind  # not all the same image


def test_digit_derived_kinds_relate_to_the_base_digits(base_uint8):
    base = base_uint8.astype(np.float64) / 255
    images, kinds = build_anomaly_suite(base_uint8, n_per_kind=8, seed=4)

    def matches(candidates: np.ndarray) -> bool:
        return bool(np.any(np.abs(candidates - base).reshape(len(base), -1).max(1) < 1e-6))

    for img in images[kinds == "inverted"][:, 0]:
        assert matches(1.0 - img)
    for img in images[kinds == "rotation90"][:, 0]:
        assert matches(np.rot90(img, 1)) or matches(np.rot90(img, 3))
    # noise and drawings are built from scratch, not from digits
    assert images[kinds == "strokes"].mean() < 0.3 and images[kinds == "shapes"].max() == 1.0


def test_float_and_uint8_inputs_agree(base_uint8):
    as_float = (base_uint8.astype(np.float32) / 255)[:, None]
    a, _ = build_anomaly_suite(base_uint8, n_per_kind=3, seed=1)
    b, _ = build_anomaly_suite(as_float, n_per_kind=3, seed=1)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_subset_of_kinds_and_invalid_arguments(base_uint8):
    images, kinds = build_anomaly_suite(base_uint8, n_per_kind=2, seed=0, kinds=("shapes",))
    assert images.shape[0] == 2 and set(kinds) == {"shapes"}
    with pytest.raises(ValueError, match="n_per_kind"):
        build_anomaly_suite(base_uint8, n_per_kind=0)
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        build_anomaly_suite(base_uint8, kinds=("gaussian_noise", "cats"))
    with pytest.raises(ValueError, match="non-empty"):
        build_anomaly_suite(np.zeros((0, 28, 28), dtype=np.uint8))
