"""The held-out benchmark: seeded, byte-identical, real sources, degenerate inputs as specified."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from models.digit_format import to_mnist_format
from pipelines.evaluation.anomalies import ANOMALY_KINDS
from pipelines.evaluation.heldout import (
    CONTENT_KINDS,
    DEGENERATE_KINDS,
    HELDOUT_KINDS,
    REAL_KINDS,
    build_heldout_benchmark,
)


@pytest.fixture(scope="module")
def base_uint8(real_digits) -> np.ndarray:
    images, _ = real_digits
    return (images[::50].numpy().reshape(-1, 28, 28) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def bench(base_uint8) -> tuple[np.ndarray, np.ndarray]:
    return build_heldout_benchmark(base_uint8, n_per_kind=12, seed=5)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(base_uint8, bench):
    again, kinds = build_heldout_benchmark(base_uint8, n_per_kind=12, seed=5)
    other, _ = build_heldout_benchmark(base_uint8, n_per_kind=12, seed=6)
    digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()  # noqa: E731
    assert digest(bench[0]) == digest(again) and kinds.tolist() == bench[1].tolist()
    assert digest(bench[0]) != digest(other)


def test_every_kind_in_order_with_shape_range_and_no_overlap_with_the_tuned_suite(bench):
    images, kinds = bench
    assert images.shape == (12 * len(HELDOUT_KINDS), 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    assert kinds.tolist() == [k for k in HELDOUT_KINDS for _ in range(12)]
    assert HELDOUT_KINDS == REAL_KINDS + DEGENERATE_KINDS and len(REAL_KINDS) >= 2
    assert not set(HELDOUT_KINDS) & set(ANOMALY_KINDS)
    for kind in REAL_KINDS:  # real pictures: varied and not blank
        group = images[kinds == kind]
        assert group.std() > 0.1 and np.abs(group[0] - group[1]).max() > 0.1, kind


def test_degenerate_kinds_are_what_the_issue_names(base_uint8, bench):
    images, kinds = bench
    group = {k: images[kinds == k][:, 0].astype(np.float64) for k in DEGENERATE_KINDS}
    assert not group["blank"].any() and (group["saturated"] == 1).all()
    assert ((group["dot"] == 1).sum(axis=(1, 2)) == 4).all() and group["dot"].sum() == 4 * 12
    peaks = group["faint"].max(axis=(1, 2))  # digits reach ~1.0: scaled to 10-20 %
    assert (peaks >= 0.09).all() and (peaks <= 0.2 + 1e-6).all()
    base = base_uint8.astype(np.float64) / 255
    for img in group["faint"]:  # a real digit, only dimmer
        ratios = img.sum() / base.sum(axis=(1, 2))
        assert np.any(np.abs(base * ratios[:, None, None] - img).max(axis=(1, 2)) < 2e-3)
    noise = group["uniform_noise"]
    assert abs(noise.mean() - 0.5) < 0.02 and noise.std() > 0.25


def test_subset_and_invalid_arguments(base_uint8):
    images, kinds = build_heldout_benchmark(base_uint8, n_per_kind=3, kinds=("letters",))
    assert images.shape[0] == 3 and set(kinds) == {"letters"}
    with pytest.raises(ValueError, match="n_per_kind"):
        build_heldout_benchmark(base_uint8, n_per_kind=0)
    with pytest.raises(ValueError, match="unknown held-out kind"):
        build_heldout_benchmark(base_uint8, kinds=("photo", "cats"))
    with pytest.raises(ValueError, match="non-empty"):
        build_heldout_benchmark(np.zeros((0, 28, 28), dtype=np.uint8))


def test_every_glyph_kind_draws_characters_its_typefaces_have():
    """A character missing from a typeface would be drawn as a box (or nothing), not a glyph."""
    from fontTools.ttLib import TTFont

    from pipelines.evaluation.heldout import GLYPH_KINDS, _matplotlib_data

    assert set(GLYPH_KINDS) <= set(REAL_KINDS)
    for kind, (chars, fonts) in GLYPH_KINDS.items():
        assert len(set(chars)) == len(chars) >= 30, kind
        for name in fonts:
            cmap = TTFont(str(_matplotlib_data() / "fonts" / "ttf" / name)).getBestCmap()
            missing = [c for c in chars if ord(c) not in cmap]
            assert not missing, (kind, name, missing)


def test_kinds_added_later_leave_every_earlier_kind_byte_identical(base_uint8, bench):
    """greek, script and symbols draw from their own generators: the images of the kinds the
    recorded runs were measured on do not move when they are added."""
    first = ("photo", "uci_digits", "letters", "mri", *DEGENERATE_KINDS)
    before, _ = build_heldout_benchmark(base_uint8, n_per_kind=12, seed=5, kinds=first)
    images, all_kinds = bench
    assert np.array_equal(images[np.isin(all_kinds, first)], before)
    assert set(REAL_KINDS) - set(first) == {"greek", "script", "symbols", *CONTENT_KINDS}
    # and the content-only kinds, added later still, leave the three before them unchanged
    second = (*first[:4], "greek", "script", "symbols", *DEGENERATE_KINDS)
    before, _ = build_heldout_benchmark(base_uint8, n_per_kind=12, seed=5, kinds=second)
    assert np.array_equal(images[np.isin(all_kinds, second)], before)


def test_content_only_kinds_are_fresh_glyphs_in_mnist_format(base_uint8, bench):
    """letters_mnist & co. pass MNIST's format test like a digit (box 20 px, centred by mass)
    and are not the glyph kinds' own images resized: only their content differs from a digit."""
    from models.digit_format import digit_format, format_distance

    images, kinds = bench
    assert set(CONTENT_KINDS) <= set(REAL_KINDS)
    for kind in CONTENT_KINDS:
        group, plain = images[kinds == kind], images[kinds == kind.removesuffix("_mnist")]
        longer, _ = digit_format(group)
        assert ((longer >= 18) & (longer <= 20)).all(), (kind, longer)  # antialiased edges
        assert np.median(format_distance(group, 20.0)) < 0.2, kind
        assert np.median(format_distance(plain, 20.0)) > 1.0, kind  # the plain kind is not
        assert not np.array_equal(to_mnist_format(plain), group), kind  # fresh draws
