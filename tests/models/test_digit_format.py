"""MNIST's format as a test (models.digit_format): the box, the centre of mass, the distance."""

from __future__ import annotations

import numpy as np
import pytest

from models.digit_format import digit_format, format_distance, reference_side, to_mnist_format


def _bar(top: int, left: int, height: int, width: int, value: float = 1.0) -> np.ndarray:
    img = np.zeros((1, 1, 28, 28))
    img[0, 0, top : top + height, left : left + width] = value
    return img


def test_the_box_and_the_centre_of_mass_are_measured_in_pixels() -> None:
    # a 20 x 4 bar centred on the field: a perfectly drawn "1"
    longer, offset = digit_format(_bar(4, 12, 20, 4))
    assert longer.tolist() == [20] and offset[0] == pytest.approx(0.0)
    # the same bar 3 px to the right: same box, centre of mass 3 px off
    longer, offset = digit_format(_bar(4, 15, 20, 4))
    assert longer.tolist() == [20] and offset[0] == pytest.approx(3.0)
    # a wide short bar: the longer side is the width; faint ink below FORMAT_INK is not ink
    assert digit_format(_bar(12, 2, 4, 24))[0].tolist() == [24]
    assert digit_format(_bar(4, 12, 20, 4, value=0.1))[0].tolist() == [0]
    # (N, 28, 28) reads like (N, 1, 28, 28); a blank image has no box
    assert digit_format(np.zeros((2, 28, 28)))[0].tolist() == [0, 0]


def test_the_distance_is_zero_for_a_drawn_digit_and_grows_with_size_and_offset() -> None:
    images = np.concatenate([_bar(4, 12, 20, 4), _bar(8, 12, 12, 4), _bar(4, 15, 20, 4)])
    d = format_distance(images, 20)
    assert d[0] == pytest.approx(0.0)
    assert d[1] == pytest.approx(8.0)  # 8 px too small, centred
    assert d[2] == pytest.approx(0.3)  # the right size, 3 px off: a tenth per pixel
    assert d.dtype == np.float64


def test_real_digits_are_in_the_format(real_digits) -> None:
    """The digits' longer side is 20 px (MNIST's size normalisation), their centre of mass
    within a pixel and a half of the centre; the reference side is their median."""
    images = real_digits[0][:1000].numpy()
    longer, offset = digit_format(images)
    assert np.mean(longer == 20) > 0.99 and np.percentile(offset, 99) < 1.5
    assert reference_side(images) == 20.0
    assert np.percentile(format_distance(images, 20.0), 95) < 0.15


def test_to_mnist_format_resizes_the_ink_to_20_px_and_centres_it_by_mass() -> None:
    # a small 8 x 4 bar in a corner, a wide 6 x 26 bar, and a blank image
    images = np.concatenate([_bar(1, 1, 8, 4), _bar(10, 1, 6, 26), np.zeros((1, 1, 28, 28))])
    out = to_mnist_format(images)
    assert out.shape == (3, 1, 28, 28) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    longer, offset = digit_format(out[:2])
    assert longer.tolist() == [20, 20] and (offset <= np.sqrt(0.5)).all()  # whole-pixel shift
    assert not out[2].any()  # blank stays blank
    tall = np.nonzero(out[0, 0].max(1) > 0.2)[0]  # aspect kept: 20 x 10 from 8 x 4
    wide = np.nonzero(out[0, 0].max(0) > 0.2)[0]
    assert len(tall) == 20 and len(wide) == 10


def test_to_mnist_format_leaves_a_real_digit_in_its_format(real_digits) -> None:
    """A digit already in the format stays there: the same box, within a pixel of the centre."""
    images = real_digits[0][:200].numpy()
    out = to_mnist_format(images)
    assert np.percentile(format_distance(out, 20.0), 95) < 0.15
    assert np.corrcoef(out.ravel(), images.ravel())[0, 1] > 0.8


def test_to_mnist_format_draws_at_another_side_per_image() -> None:
    images = np.concatenate([_bar(1, 1, 8, 4), _bar(10, 1, 6, 26)])
    out = to_mnist_format(images, side=np.array([13.0, 25.0]))
    longer, _ = digit_format(out)
    assert longer.tolist() == [13, 25]
    assert np.array_equal(to_mnist_format(images, side=20.0), to_mnist_format(images))
    with pytest.raises(ValueError, match="side"):
        to_mnist_format(images, side=29.0)
