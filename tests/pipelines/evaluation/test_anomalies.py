"""The anomaly suite: seeded, byte-identical, every kind present, images in range."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from models.digit_format import digit_format, format_distance
from pipelines.evaluation.anomalies import (
    ANOMALY_KINDS,
    CONTENT_PROXY,
    FORMAT_PROXY,
    build_anomaly_suite,
)

LABELLED = ("mirrored", "upside_down")
# the eight earlier kinds (n_per_kind=7, seed=3) as the code before the content kinds built them
EARLIER_SUITE_SHA256 = "189adf7600e15c1368b325ac651b7229d0c9b4bd455e26a69152b8df0d90dc16"
# the ten kinds before the format kinds (the same draw, with labels), as the code before them
BEFORE_FORMAT_SHA256 = "945e5e35c83e9fd4bf54a783acd11083ae5cd319730856060da0207c0ca03aeb"
# the twelve kinds before strokes_mnist, likewise
BEFORE_STROKES_SHA256 = "37875242bd41f464758cdbf8b7d6c747f313752ec28b6040e7b6c29d7e3b0b1f"
# the thirteen kinds before pen_mnist, likewise
BEFORE_PEN_SHA256 = "4a8e2f6891bb103a9640570ec2f3259e4dc037031d3f122bf6c232db0f35e7f3"
# the fourteen kinds before pieces_mnist, likewise
BEFORE_PIECES_SHA256 = "46bb05baaa500c5cab8f740c1afee8a5a01eba2202f68d046c0eeb40ab59bfe7"
# the fifteen kinds before traced_mnist, likewise
BEFORE_TRACED_SHA256 = "81439a997ace9d39434d23a21ecfa2901c4a4045d6dcffbb0ea2ad1f8ce0bedd"


@pytest.fixture(scope="module")
def base_uint8(real_digits) -> np.ndarray:
    images, _ = real_digits
    return (images[::25].numpy().reshape(-1, 28, 28) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def base_labels(real_digits) -> np.ndarray:
    return real_digits[1][::25].numpy()


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(base_uint8, base_labels):
    a, kinds_a = build_anomaly_suite(base_uint8, base_labels, n_per_kind=6, seed=11)
    b, kinds_b = build_anomaly_suite(base_uint8, base_labels, n_per_kind=6, seed=11)
    c, _ = build_anomaly_suite(base_uint8, base_labels, n_per_kind=6, seed=12)
    assert _digest(a) == _digest(b) and kinds_a.tolist() == kinds_b.tolist()
    assert _digest(a) != _digest(c)


def test_every_kind_present_with_shape_dtype_and_range(base_uint8, base_labels):
    images, kinds = build_anomaly_suite(base_uint8, base_labels, n_per_kind=5, seed=0)
    assert images.shape == (5 * len(ANOMALY_KINDS), 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert kinds.tolist() == [k for k in ANOMALY_KINDS for _ in range(5)]
    for kind in ANOMALY_KINDS:
        group = images[kinds == kind]
        assert group.std() > 0.05, kind  # not blank
        assert np.abs(group[0] - group[1]).max() > 0, kind  # not all the same image


def test_digit_derived_kinds_relate_to_the_base_digits(base_uint8, base_labels):
    base = base_uint8.astype(np.float64) / 255
    images, kinds = build_anomaly_suite(base_uint8, base_labels, n_per_kind=8, seed=4)

    def matches(candidates: np.ndarray) -> bool:
        return bool(np.any(np.abs(candidates - base).reshape(len(base), -1).max(1) < 1e-6))

    for img in images[kinds == "inverted"][:, 0]:
        assert matches(1.0 - img)
    for img in images[kinds == "rotation90"][:, 0]:
        assert matches(np.rot90(img, 1)) or matches(np.rot90(img, 3))
    # noise and drawings are built from scratch, not from digits
    assert images[kinds == "strokes"].mean() < 0.3 and images[kinds == "shapes"].max() == 1.0


def test_float_and_uint8_inputs_agree(base_uint8, base_labels):
    as_float = (base_uint8.astype(np.float32) / 255)[:, None]
    a, _ = build_anomaly_suite(base_uint8, base_labels, n_per_kind=3, seed=1)
    b, _ = build_anomaly_suite(as_float, base_labels, n_per_kind=3, seed=1)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_subset_of_kinds_and_invalid_arguments(base_uint8, base_labels):
    images, kinds = build_anomaly_suite(
        base_uint8, base_labels, n_per_kind=2, seed=0, kinds=("shapes",)
    )
    assert images.shape[0] == 2 and set(kinds) == {"shapes"}
    with pytest.raises(ValueError, match="n_per_kind"):
        build_anomaly_suite(base_uint8, base_labels, n_per_kind=0)
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        build_anomaly_suite(base_uint8, kinds=("gaussian_noise", "cats"))
    with pytest.raises(ValueError, match="non-empty"):
        build_anomaly_suite(np.zeros((0, 28, 28), dtype=np.uint8), kinds=("shapes",))
    with pytest.raises(ValueError, match="labels"):
        build_anomaly_suite(base_uint8, n_per_kind=2)  # the content kinds pick by class
    with pytest.raises(ValueError, match="one class per base digit"):
        build_anomaly_suite(base_uint8, base_labels[:-1], n_per_kind=2)
    with pytest.raises(ValueError, match="no base digit"):
        build_anomaly_suite(base_uint8, np.zeros(len(base_uint8), int), kinds=("mirrored",))
    unlabelled = tuple(k for k in ANOMALY_KINDS if k not in LABELLED)
    images, _ = build_anomaly_suite(base_uint8, n_per_kind=2, kinds=unlabelled)
    assert images.shape[0] == 2 * (len(ANOMALY_KINDS) - 2)  # no content kind: no labels needed


def test_content_kinds_come_last_and_leave_the_earlier_kinds_byte_identical(
    base_uint8, base_labels
):
    earlier = ANOMALY_KINDS[:8]
    assert ANOMALY_KINDS[8:10] == LABELLED and set(CONTENT_PROXY) == set(LABELLED)
    before, _ = build_anomaly_suite(base_uint8, n_per_kind=7, seed=3, kinds=earlier)
    now, kinds = build_anomaly_suite(base_uint8, base_labels, n_per_kind=7, seed=3)
    assert _digest(now[: len(before)]) == _digest(before) == EARLIER_SUITE_SHA256
    assert set(kinds[len(before) : len(before) + 14]) == set(LABELLED)


def test_format_kinds_come_last_and_leave_every_earlier_kind_byte_identical(
    base_uint8, base_labels
):
    assert ANOMALY_KINDS[10:12] == FORMAT_PROXY
    assert ANOMALY_KINDS[12:] == ("strokes_mnist", "pen_mnist", "pieces_mnist", "traced_mnist")
    now, kinds = build_anomaly_suite(base_uint8, base_labels, n_per_kind=7, seed=3)
    assert _digest(now[: 10 * 7]) == BEFORE_FORMAT_SHA256
    assert _digest(now[: 12 * 7]) == BEFORE_STROKES_SHA256
    assert _digest(now[: 13 * 7]) == BEFORE_PEN_SHA256
    assert _digest(now[: 14 * 7]) == BEFORE_PIECES_SHA256
    assert _digest(now[: 15 * 7]) == BEFORE_TRACED_SHA256
    assert kinds[10 * 7 : 12 * 7].tolist() == [k for k in FORMAT_PROXY for _ in range(7)]
    assert kinds[12 * 7 :].tolist() == [k for k in ANOMALY_KINDS[12:] for _ in range(7)]


@pytest.mark.parametrize("kind", ["strokes_mnist", "pen_mnist", "pieces_mnist", "traced_mnist"])
def test_stroke_kinds_are_stroke_figures_in_mnists_format(base_uint8, base_labels, kind):
    """Drawn from strokes (2-3 lines and arcs; one pen path) or pieced from two digits, none
    a base digit, and in MNIST's format like a digit."""
    base = base_uint8.astype(np.float64) / 255
    images, kinds = build_anomaly_suite(base_uint8, base_labels, n_per_kind=40, seed=6)
    group = images[kinds == kind]
    longer, offset = digit_format(group)
    assert np.mean(longer == 20) >= 0.9 and np.percentile(offset, 90) < 1.5
    assert np.percentile(format_distance(group, 20.0), 90) < 0.2  # the format test passes them
    nearest = np.abs(group[:, 0, None] - base[None]).reshape(len(group), len(base), -1).max(2)
    assert (nearest.min(1) > 0.2).all()  # none is a base digit


def test_pieces_are_part_of_a_digits_ink_turned_and_moved_to_the_centre():
    """`_piece` keeps 30-70 % of the digit's ink (the rest cut off by one line), turned, with
    its centre of mass at the canvas centre; a blank image has no piece."""
    from pipelines.evaluation.anomalies import _centre, _piece

    rng = np.random.default_rng(4)
    digit = np.zeros((44, 44))
    digit[10:34, 19:25] = 1.0  # a bar: every line through its centre cuts it
    shares = []
    for _ in range(30):
        piece = _piece(rng, digit)
        shares.append(piece.sum() / digit.sum())
        assert np.allclose(_centre(piece), [21.5, 21.5], atol=0.3)
        assert piece.min() >= 0.0 and piece.max() <= 1.0
    assert min(shares) >= 0.27 and max(shares) <= 0.73  # resampling blurs the 30-70 % a little
    assert np.ptp(shares) > 0.1
    assert not _piece(rng, np.zeros((44, 44))).any()


def test_a_digits_whole_trace_drawn_with_the_round_pen_is_the_digit(base_uint8):
    """`traced_mnist`'s pen: the skeleton is 1 px wide (no 2 x 2 block of it) and lies in
    the ink; the whole trace, each point at its half-width, draws the digit again."""
    from pipelines.evaluation.anomalies import _round_pen, _thin, _traced_part

    ious = []
    for digit in base_uint8[:40].astype(np.float64) / 255:
        mask = digit > 0.5
        skeleton = _thin(mask)
        assert skeleton.any() and not (skeleton & ~mask).any()
        blocks = skeleton[:-1, :-1] & skeleton[1:, :-1] & skeleton[:-1, 1:] & skeleton[1:, 1:]
        assert not blocks.any()
        points, radii = _traced_part(np.random.default_rng(0), digit)
        assert len(points) <= skeleton.sum() and (radii >= 1.0).all()
        rows, cols = np.nonzero(skeleton)
        drawn = _round_pen(np.c_[rows, cols], distance_transform_edt(mask)[rows, cols], 28) > 0.5
        ious.append((drawn & mask).sum() / (drawn | mask).sum())
    assert np.median(ious) > 0.85 and np.percentile(ious, 10) > 0.75  # measured: 0.907, 0.792


def test_a_traced_part_is_a_connected_share_of_the_skeleton():
    """The walk keeps 30-70 % of the skeleton's points, each next to an earlier one (one
    connected part), the last the farthest; a blank digit has no part."""
    from pipelines.evaluation.anomalies import _thin, _traced_part

    digit = np.zeros((28, 28))
    digit[4:24, 12:15] = 1.0  # a bar 3 px wide: its skeleton a vertical line
    total = _thin(digit > 0.5).sum()
    rng = np.random.default_rng(2)
    for _ in range(20):
        points, radii = _traced_part(rng, digit)
        assert 0.29 <= len(points) / total <= 0.71
        gaps = np.abs(points[:, None] - points[None]).max(2) + np.eye(len(points)) * 99
        assert (gaps.min(1) == 1).all()  # every point has an 8-neighbour in the part
        reach = np.abs(points - points[0]).max(1)
        assert reach[-1] == reach.max()
        assert np.allclose(radii[(points[:, 0] > 6) & (points[:, 0] < 21)], 2.0)
    points, radii = _traced_part(rng, np.zeros((28, 28)))
    assert points.shape == (0, 2) and radii.shape == (0,)


def test_pen_paths_are_one_continuous_line_with_cusps_and_varying_width():
    """`pen_mnist`'s pen: 1 px steps (one unbroken line), 4-6 pieces, some joined at a cusp,
    and a width that changes along the path."""
    from pipelines.evaluation.anomalies import _pen_path

    rng = np.random.default_rng(0)
    cusps, varying = 0, 0
    for _ in range(50):
        path, widths = _pen_path(rng)
        steps = np.diff(path, axis=0)
        assert np.allclose(np.hypot(*steps.T), 1.0) and len(path) >= 4 * 4 + 1
        turn = np.abs(np.angle(np.exp(1j * np.diff(np.arctan2(steps[:, 1], steps[:, 0])))))
        cusps += int((turn > 2.0).any())
        varying += int(np.ptp(widths) > 0.1)
        assert widths.min() >= 1.8 * 0.7 - 1e-9 and widths.max() <= 3.2 * 1.3 + 1e-9
    assert 25 <= cusps < 50 and varying >= 45


def test_format_kinds_are_digits_out_of_mnists_format(base_uint8, base_labels):
    """`resized`: a digit's ink at another size; `off_centre`: a base digit moved whole pixels,
    no ink lost. Both fail the format test beyond every base digit, their content a digit's."""
    base = base_uint8.astype(np.float64) / 255
    images, kinds = build_anomaly_suite(base_uint8, base_labels, n_per_kind=30, seed=5)
    limit = format_distance(base, 20.0).max()  # the least typical of the 200 base digits
    for kind in FORMAT_PROXY:
        group = images[kinds == kind]
        assert (format_distance(group, 20.0) > min(limit, 0.2)).all(), kind
    longer, _ = digit_format(images[kinds == "resized"])
    assert ((longer <= 18) | (longer >= 23)).all(), longer
    for img in images[kinds == "off_centre"][:, 0]:
        found = False
        for dy in range(-8, 9):
            for dx in range(-8, 9):
                if (dy, dx) == (0, 0):
                    continue
                back = np.roll(img, (-dy, -dx), axis=(0, 1))
                found = found or bool(np.any(np.abs(base - back).reshape(len(base), -1).max(1)
                                             < 1e-6))  # fmt: skip
        assert found and img.sum() > 10  # a whole base digit, moved


def test_content_kinds_flip_digits_whose_flip_is_no_digit(base_uint8, base_labels):
    base = base_uint8.astype(np.float64) / 255
    images, kinds = build_anomaly_suite(base_uint8, base_labels, n_per_kind=20, seed=5)
    for kind, axis in (("mirrored", 1), ("upside_down", 0)):
        classes = CONTENT_PROXY[kind][0]
        assert 0 not in classes and 1 not in classes and 8 not in classes
        for img in images[kinds == kind][:, 0]:
            back = np.flip(img, axis=axis)
            hit = np.abs(base - back).reshape(len(base), -1).max(1) < 1e-6
            assert hit.any() and set(base_labels[hit]) <= set(classes), kind
