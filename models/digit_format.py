"""MNIST's format as a test: how far an image is from the way every training digit is drawn.

MNIST's digits were size-normalised so that the bounding box's longer side is 20 px and then
centred by their centre of mass in the 28 x 28 field (LeCun et al.); 99.9 % of the test digits
have exactly a 20 px box at the ink level used here. An input drawn another way (a glyph at
another size, a crop that fills the frame, a shape, noise) is outside what every model here was
trained on, whatever it depicts. `format_distance` measures that, in pixels: the ensemble's
format view (models.ensemble `format_side`, docs/anomaly.md eleventh pass) calibrates it on
validation normals like a member's score. `to_mnist_format` does the opposite: it brings any
image to MNIST's format, so that only its content differs from a digit (the held-out benchmark's
`*_mnist` kinds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FORMAT_INK = 0.2  # a pixel brighter than this counts for the bounding box
CENTRE = 13.5  # the 28 x 28 field's centre, in pixel coordinates
OFFSET_WEIGHT = 0.1  # the centre-of-mass offset breaks ties: 99.5 % of digits are within 1.35 px


def _span(mask: np.ndarray) -> np.ndarray:
    """(N, L) bool -> (N,) the number of entries from the first True to the last (0: none)."""
    any_ = mask.any(1)
    first = np.argmax(mask, 1)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], 1)
    return np.where(any_, last - first + 1, 0)


def digit_format(images: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per image (pixels in [0, 1], (N, 1, 28, 28) or (N, 28, 28)): the longer side (px) of the
    bounding box of the pixels above FORMAT_INK, and the distance (px) of its centre of mass
    from the field's centre (a blank image's centre of mass is taken at the origin)."""
    x = np.asarray(images, dtype=np.float64)
    x = x.reshape(x.shape[0], x.shape[-2], x.shape[-1])
    ink = x > FORMAT_INK
    longer = np.maximum(_span(ink.any(2)), _span(ink.any(1)))
    yy, xx = np.mgrid[0 : x.shape[1], 0 : x.shape[2]]
    mass = x.sum((1, 2)) + 1e-12
    cy, cx = (x * yy).sum((1, 2)) / mass, (x * xx).sum((1, 2)) / mass
    return longer, np.hypot(cy - CENTRE, cx - CENTRE)


def format_distance(images: Any, side: float) -> np.ndarray:
    """(N,) |longer side - `side`| + OFFSET_WEIGHT x centre-of-mass offset, float64: 0 for a
    perfectly drawn digit; every pixel of size away from `side` costs 1."""
    longer, offset = digit_format(images)
    return np.abs(longer - float(side)) + OFFSET_WEIGHT * offset


def reference_side(train_images: Any) -> float:
    """The training digits' median longer side (20 px on MNIST)."""
    return float(np.median(digit_format(train_images)[0]))


def to_mnist_format(images: Any, ink: float = FORMAT_INK, side: Any = 20.0) -> np.ndarray:
    """LeCun et al.'s preprocessing applied to any image (pixels in [0, 1], (N, 1, 28, 28) or
    (N, 28, 28)): crop to the bounding box of the pixels above `ink` (dropping fainter ones
    outside it), scale it (bilinear, aspect kept) so that its longer side is 20 px, and paste
    it into 28 x 28 with its centre of mass at the field's centre (a whole-pixel shift). An
    image with no such pixel comes out blank. Another `side` (px, one for all or one per image,
    at most 28) draws the images at that size instead: the tuned suite's `resized` kind, digits
    out of MNIST's format.

    At the default `ink` (the level `digit_format` measures at) the result passes the format
    test like a digit: 96-100 % of typeset glyphs get a 20 px box (digits: 99.9 %); cropping at
    any pixel above 0 instead leaves 63-83 % at 20 px, the antialiased rim taking the rest.

    Returns float32 (N, 1, 28, 28) in [0, 1]."""
    from PIL import Image

    x = np.asarray(images, dtype=np.float64)
    x = x.reshape(x.shape[0], x.shape[-2], x.shape[-1])
    sides = np.broadcast_to(np.asarray(side, dtype=np.float64), (len(x),))
    if not ((sides > 0) & (sides <= 28)).all():
        raise ValueError(f"side must be in (0, 28] px, got {np.unique(sides)[:5]}")
    out = np.zeros((len(x), 28, 28))
    for i, img in enumerate(x):
        rows, cols = np.nonzero(img > ink)
        if len(rows) == 0:
            continue
        crop = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        h, w = crop.shape
        scale = float(sides[i]) / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = np.asarray(
            Image.fromarray(crop.astype(np.float32), mode="F").resize(
                size, Image.Resampling.BILINEAR
            )
        ).clip(0, 1)
        mass = small.sum() + 1e-12
        yy, xx = np.mgrid[0 : small.shape[0], 0 : small.shape[1]]
        cy, cx = (small * yy).sum() / mass, (small * xx).sum() / mass
        top, left = round(CENTRE - cy), round(CENTRE - cx)
        canvas = np.zeros((3 * 28, 3 * 28))  # margins: a shift may push past an edge
        canvas[28 + top : 28 + top + small.shape[0], 28 + left : 28 + left + small.shape[1]] = small
        out[i] = canvas[28:56, 28:56]
    return out.astype(np.float32)[:, None]
