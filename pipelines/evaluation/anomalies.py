"""A fixed, seeded suite of out-of-distribution images for anomaly-detection evaluation.

Each kind is built from held-out digits (corruptions) or from scratch (noise, strokes,
shapes) with one numpy Generator, so the same seed gives byte-identical arrays.

Two kinds ask the content question in MNIST's own format (size, stroke and place of a digit,
the shape of none): `mirrored` (a left-right mirror) and `upside_down` (a top-bottom flip) of
digits of the classes whose flip is not a digit (CONTENT_PROXY). They pick their digits by
label, so the suite needs the base digits' labels. They draw after every earlier kind, so the
earlier kinds are byte-identical to the suite before them.

Two kinds ask the format question with a digit's content (FORMAT_PROXY, docs/anomaly.md
"Fourteenth pass"): `resized` (a digit drawn with its longer side 12-16 or 24-26 px instead of
MNIST's 20, centred by mass) and `off_centre` (a digit moved about 3.5-6 px, within its margins).
They come after the content kinds, which stay byte-identical too.

`strokes_mnist` (docs/anomaly.md "Fifteenth pass") asks the content question with figures that
are no digit at all: 2-3 pen strokes (lines, circular arcs) brought to MNIST's format like the
held-out `*_mnist` kinds, but drawn from strokes, never from a typeface. `pen_mnist`
(docs/anomaly.md "Sixteenth pass") asks it with another pen: one continuous path of 4-6 curved
pieces, some joined at a cusp, its width varying along the path like a pen's pressure, brought to
the same format. `pieces_mnist` (docs/anomaly.md "Nineteenth pass") asks it with real
handwriting that is no digit: a piece of one digit (its ink on one side of a random line, turned
by up to 60 degrees) joined to a piece of another, brought to the same format. Each comes after
every earlier kind, which stays byte-identical. `traced_mnist` (the same pass) asks it without
a cut: a digit's pen traced (its skeleton, each point with the stroke's half-width there), a
connected part of the trace drawn again with a round pen, turned, and the end of another
digit's traced part joined onto it, brought to the same format.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.ndimage import distance_transform_edt, gaussian_filter, rotate, shift

from models.digit_format import to_mnist_format

ANOMALY_KINDS = (
    "gaussian_noise",
    "salt_pepper",
    "inverted",
    "blur",
    "occlusion",
    "rotation90",
    "strokes",
    "shapes",
    "mirrored",
    "upside_down",
    "resized",
    "off_centre",
    "strokes_mnist",
    "pen_mnist",
    "pieces_mnist",
    "traced_mnist",
)
# format-only kinds: real digits drawn out of MNIST's format (models.digit_format), the content
# unchanged: longer side in RESIZED_SIDES px instead of 20; moved OFF_CENTRE px (a range; the
# digits' own centre of mass: 99.5 % within 1.35 px of the field's centre), no ink cut off
FORMAT_PROXY = ("resized", "off_centre")
RESIZED_SIDES = (12, 13, 14, 15, 16, 24, 25, 26)
OFF_CENTRE = (3.5, 6.0)
# content-only kinds: (the digit classes whose flip is not a digit, the flipped image axis)
CONTENT_PROXY = {
    "mirrored": ((2, 3, 4, 5, 6, 7, 9), 1),
    "upside_down": ((2, 4, 5, 6, 7, 9), 0),
}
SIZE = 28
_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)

Builder = Callable[[np.random.Generator, np.ndarray], np.ndarray]


def _as_digits(base_images: np.ndarray) -> np.ndarray:
    """uint8 0..255 or float 0..1 images, (N,28,28) / (N,1,28,28) / (N,784) -> float64 (N,28,28)."""
    arr = np.asarray(base_images)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    arr = arr.astype(np.float64).reshape(-1, SIZE, SIZE) / scale
    if arr.shape[0] == 0 or not np.isfinite(arr).all():
        raise ValueError("base_images must be a non-empty set of finite images")
    return np.clip(arr, 0.0, 1.0)


def _gaussian_noise(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    n = digits.shape[0]
    mean = rng.uniform(0.1, 0.5, size=(n, 1, 1))
    std = rng.uniform(0.15, 0.4, size=(n, 1, 1))
    return mean + std * rng.standard_normal((n, SIZE, SIZE))


def salt_and_pepper(
    rng: np.random.Generator, images: np.ndarray, rate: float | np.ndarray
) -> np.ndarray:
    """Each pixel, with probability `rate` (broadcast against `images`), set to 0 or 1 (half
    each). One primitive for the anomaly suite and the denoising demonstration."""
    hit = rng.random(images.shape) < rate
    salt = rng.random(images.shape) < 0.5
    return np.where(hit, salt.astype(images.dtype), images)


def _salt_pepper(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    rate = rng.uniform(0.15, 0.3, size=(digits.shape[0], 1, 1))
    return salt_and_pepper(rng, digits, rate)


def _inverted(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    return 1.0 - digits


def _blur(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    sigmas = rng.uniform(2.5, 3.5, size=digits.shape[0])
    out = np.stack(
        [gaussian_filter(d, float(s), mode="constant") for d, s in zip(digits, sigmas, strict=True)]
    )
    # rescale the peak so the anomaly is the shape (a blob), not merely a dim image
    return out / np.maximum(out.max(axis=(1, 2), keepdims=True), 1e-6)


def _occlusion(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    out = digits.copy()
    for img in out:
        for _ in range(int(rng.integers(1, 3))):
            h, w = rng.integers(8, 15, size=2)
            top, left = rng.integers(2, SIZE - 2 - h), rng.integers(2, SIZE - 2 - w)
            img[top : top + h, left : left + w] = 1.0
    return out


def _rotation90(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    turns = rng.choice([1, 3], size=digits.shape[0])
    return np.stack([np.rot90(d, k=int(k)) for d, k in zip(digits, turns, strict=True)])


def _segment(x0: float, y0: float, x1: float, y1: float, width: float) -> np.ndarray:
    """Anti-aliased line segment of the given width."""
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((_XX - x0) * dx + (_YY - y0) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    dist = np.hypot(_XX - (x0 + t * dx), _YY - (y0 + t * dy))
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)


def _strokes(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    out = np.zeros_like(digits)
    for img in out:
        for _ in range(int(rng.integers(3, 7))):
            x0, y0, x1, y1 = rng.uniform(1, SIZE - 2, size=4)
            np.maximum(img, _segment(x0, y0, x1, y1, rng.uniform(1.0, 3.0)), out=img)
    return out


def _circle(rng: np.random.Generator, filled: bool) -> np.ndarray:
    cx, cy = rng.uniform(9, 19, size=2)
    r = rng.uniform(4, 9)
    dist = np.hypot(_XX - cx, _YY - cy)
    return np.clip(r + 0.5 - dist, 0, 1) if filled else np.clip(1.5 - np.abs(dist - r), 0, 1)


def _rectangle(rng: np.random.Generator, filled: bool) -> np.ndarray:
    cx, cy = rng.uniform(10, 18, size=2)
    half_w, half_h = rng.uniform(4, 7, size=2)
    dx, dy = np.abs(_XX - cx), np.abs(_YY - cy)
    inside = (dx <= half_w) & (dy <= half_h)
    if filled:
        return inside.astype(np.float64)
    core = (dx <= half_w - 2) & (dy <= half_h - 2)
    return (inside & ~core).astype(np.float64)


def _triangle(rng: np.random.Generator, filled: bool) -> np.ndarray:
    # vertices on a circle, roughly 120 degrees apart, so triangles are never slivers
    center, radius = rng.uniform(11, 17, size=2), rng.uniform(6, 10)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.4, 0.4, 3)
    pts = center + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    if not filled:
        img = np.zeros((SIZE, SIZE))
        for a, b in ((0, 1), (1, 2), (2, 0)):
            np.maximum(img, _segment(*pts[a], *pts[b], 2.0), out=img)
        return img
    # half-plane test with consistent orientation
    (ax, ay), (bx, by), (cx, cy) = pts
    sign = np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax)) or 1.0
    edges = [((ax, ay), (bx, by)), ((bx, by), (cx, cy)), ((cx, cy), (ax, ay))]
    inside = np.ones((SIZE, SIZE), dtype=bool)
    for (px, py), (qx, qy) in edges:
        inside &= sign * ((qx - px) * (_YY - py) - (qy - py) * (_XX - px)) >= 0
    return inside.astype(np.float64)


def _shapes(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    makers = (_circle, _rectangle, _triangle)
    out = []
    for _ in range(digits.shape[0]):
        maker = makers[int(rng.integers(len(makers)))]
        out.append(maker(rng, bool(rng.random() < 0.5)))
    return np.stack(out)


def flipped(kind: str) -> Builder:
    """The content-proxy kind's flip (CONTENT_PROXY); its digits are picked by label."""
    axis = CONTENT_PROXY[kind][1]
    return lambda rng, digits: np.flip(digits, axis=axis + 1)


def _resized(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    sides = rng.choice(RESIZED_SIDES, size=digits.shape[0]).astype(np.float64)
    return to_mnist_format(digits, side=sides)[:, 0].astype(np.float64)


def _off_centre(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """Each digit moved by whole pixels in a random direction, its centre of mass OFF_CENTRE px
    from where it was, never past the field's edge (a digit too big to move that far in that
    direction moves as far as its margins allow, so that no ink is lost)."""
    out = np.zeros_like(digits)
    angles = rng.uniform(0.0, 2.0 * np.pi, size=digits.shape[0])
    reach = rng.uniform(*OFF_CENTRE, size=digits.shape[0])
    for i, (img, angle, r) in enumerate(zip(digits, angles, reach, strict=True)):
        rows, cols = np.nonzero(img > 0)
        if len(rows) == 0:
            continue
        dy = int(np.clip(round(r * np.sin(angle)), -rows.min(), SIZE - 1 - rows.max()))
        dx = int(np.clip(round(r * np.cos(angle)), -cols.min(), SIZE - 1 - cols.max()))
        out[i] = np.roll(img, (dy, dx), axis=(0, 1))
    return out


def _arc(cx: float, cy: float, r: float, start: float, sweep: float, width: float) -> np.ndarray:
    """Anti-aliased circular arc of the given width (angles in radians)."""
    angle = np.mod(np.arctan2(_YY - cy, _XX - cx) - start, 2 * np.pi)
    ends = [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in (start, start + sweep)]
    on = angle <= sweep  # within the arc's angles: distance to the circle; else to an end
    dist = np.where(on, np.abs(np.hypot(_XX - cx, _YY - cy) - r),
                    np.minimum(*[np.hypot(_XX - x, _YY - y) for x, y in ends]))  # fmt: skip
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)


def _strokes_mnist(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """2-3 pen strokes (each a line or a circular arc), brought to MNIST's format: a figure
    of a digit's size, place and stroke that is no digit (content only, like the held-out
    `*_mnist` kinds, but drawn from strokes, not from any typeface)."""
    out = np.zeros_like(digits)
    for img in out:
        for _ in range(int(rng.integers(2, 4))):
            width = rng.uniform(2.0, 3.0)
            if rng.random() < 0.5:
                x0, y0, x1, y1 = rng.uniform(4, SIZE - 5, size=4)
                stroke = _segment(x0, y0, x1, y1, width)
            else:
                cx, cy = rng.uniform(9, 19, size=2)
                stroke = _arc(cx, cy, rng.uniform(4, 8), rng.uniform(0, 2 * np.pi),
                              rng.uniform(0.5 * np.pi, 1.7 * np.pi), width)  # fmt: skip
            np.maximum(img, stroke, out=img)
    return to_mnist_format(out)[:, 0].astype(np.float64)


def _pen_path(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One pen path: 4-6 pieces of constant curvature (up to 0.45 rad/px, i.e. radii from
    2.2 px), 4-9 px each, 40 % of the joins a cusp (the pen turns back by 126-172 degrees).
    Returns the points (K, 2) in px from the start, 1 px apart, and the pen width at each."""
    heading, points = rng.uniform(0, 2 * np.pi), [np.zeros(2)]
    for piece in range(int(rng.integers(4, 7))):
        if piece and rng.random() < 0.4:
            heading += rng.choice([-1.0, 1.0]) * rng.uniform(2.2, 3.0)
        curvature = rng.uniform(-0.45, 0.45)
        for _ in range(round(rng.uniform(4, 9))):
            heading += curvature
            points.append(points[-1] + [np.cos(heading), np.sin(heading)])
    path = np.asarray(points)
    pressure = np.linspace(rng.uniform(0.7, 1.3), rng.uniform(0.7, 1.3), len(path))
    return path, rng.uniform(1.8, 3.2) * pressure


def _pen_mnist(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """One continuous pen path (`_pen_path`) scaled into a 16 px box, brought to MNIST's format:
    content only, like `strokes_mnist`, from another pen (one curving, cusped line of varying
    width instead of 2-3 separate lines and arcs)."""
    out = np.zeros_like(digits)
    for img in out:
        path, widths = _pen_path(rng)
        low, high = path.min(0), path.max(0)
        path = (path - (low + high) / 2) * 16.0 / max(float((high - low).max()), 1e-9) + SIZE / 2
        for (x0, y0), (x1, y1), width in zip(path[:-1], path[1:], widths[1:], strict=True):
            np.maximum(img, _segment(x0, y0, x1, y1, width), out=img)
    return to_mnist_format(out)[:, 0].astype(np.float64)


PIECE_SHARE = (0.3, 0.7)  # the share of a digit's ink a piece keeps
PIECE_TURN = 60.0  # degrees, either way
PIECE_GAP = (3.0, 7.0)  # px between the two pieces' centres of mass
_PAD = 8  # the pieces are cut, turned and joined on a 44 px canvas, then formatted


def _centre(img: np.ndarray) -> np.ndarray:
    """Centre of mass (row, col) of a non-blank image."""
    rows, cols = np.indices(img.shape)
    return np.array([(img * rows).sum(), (img * cols).sum()]) / img.sum()


def _piece(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray:
    """A piece of a (padded) digit: its ink on one side of a random line passing within 3 px
    of its centre of mass (a soft, 1 px edge), keeping PIECE_SHARE of the ink (the first of 20
    lines that does; the last otherwise), turned by up to PIECE_TURN degrees about the canvas
    centre and moved so that its own centre of mass is there."""
    if digit.sum() <= 0:
        return digit  # a blank base image has no piece
    rows, cols = np.indices(digit.shape)
    cy, cx = _centre(digit)
    piece = digit
    for _ in range(20):
        angle = rng.uniform(0, 2 * np.pi)
        side = (cols - cx) * np.cos(angle) + (rows - cy) * np.sin(angle) - rng.uniform(-3, 3)
        piece = digit * np.clip(side + 0.5, 0.0, 1.0)
        if PIECE_SHARE[0] <= piece.sum() / digit.sum() <= PIECE_SHARE[1]:
            break
    piece = rotate(piece, rng.uniform(-PIECE_TURN, PIECE_TURN), reshape=False, order=1)
    piece = np.clip(piece, 0.0, 1.0)
    return shift(piece, (np.array(piece.shape) - 1) / 2 - _centre(piece), order=1)


def _pieces_mnist(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """Each digit's piece (`_piece`) joined to a piece of the next digit drawn (the last to
    the first): the second piece's centre of mass PIECE_GAP px from the first's in a random
    direction, overlaid (pixel maximum), then brought to MNIST's format. Real handwriting
    strokes, a digit's pen, no digit's shape: content only, like the `*_mnist` kinds, and made
    from digits rather than drawn."""
    padded = np.pad(digits, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    out = np.zeros_like(padded)
    for i, img in enumerate(out):
        first = _piece(rng, padded[i])
        second = _piece(rng, padded[(i + 1) % len(padded)])
        angle, gap = rng.uniform(0, 2 * np.pi), rng.uniform(*PIECE_GAP)
        offset = gap * np.array([np.sin(angle), np.cos(angle)])
        np.maximum(shift(first, -offset / 2, order=1), shift(second, offset / 2, order=1), out=img)
    return to_mnist_format(np.clip(out, 0.0, 1.0))[:, 0].astype(np.float64)


def _thin(mask: np.ndarray) -> np.ndarray:
    """Zhang & Suen's (1984) thinning of a boolean image: its skeleton, 1 px wide, 8-connected."""
    img = np.pad(mask.astype(np.uint8), 1)
    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            # the 8 neighbours P2..P9, clockwise from north
            n = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:], img[2:, 1:-1],
                 img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]  # fmt: skip
            count = sum(x.astype(int) for x in n)
            turns = sum(((n[i] == 0) & (n[(i + 1) % 8] == 1)).astype(int) for i in range(8))
            if step == 0:
                side = (n[0] * n[2] * n[4] == 0) & (n[2] * n[4] * n[6] == 0)
            else:
                side = (n[0] * n[2] * n[6] == 0) & (n[0] * n[4] * n[6] == 0)
            kill = (img[1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (turns == 1) & side
            if kill.any():
                img = img.copy()
                img[1:-1, 1:-1][kill] = 0
                changed = True
    return img[1:-1, 1:-1].astype(bool)


_STEPS8 = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def _traced_part(rng: np.random.Generator, digit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A connected part of a digit's traced pen: its skeleton (`_thin` of the ink above 0.5),
    walked breadth-first from a random point until PIECE_SHARE of it (drawn uniformly) is
    taken, each point with the stroke's half-width there (distance to the nearest background
    pixel). Returns the points (K, 2), in walk order (the last the farthest from the start),
    and their radii (K,). A digit with no ink above 0.5 has none (K = 0)."""
    mask = digit > 0.5
    skeleton = _thin(mask)
    radius = distance_transform_edt(mask)
    points = list(zip(*np.nonzero(skeleton), strict=True))
    if not points:
        return np.zeros((0, 2)), np.zeros(0)
    keep = max(2, round(rng.uniform(*PIECE_SHARE) * len(points)))
    start = points[int(rng.integers(len(points)))]
    seen, order, queue = {start}, [], deque([start])
    while queue and len(order) < keep:
        point = queue.popleft()
        order.append(point)
        for dr, dc in _STEPS8:
            near = (point[0] + dr, point[1] + dc)
            if near not in seen and 0 <= near[0] < SIZE and 0 <= near[1] < SIZE and skeleton[near]:
                seen.add(near)
                queue.append(near)
    walk = np.asarray(order, dtype=np.float64)
    return walk, radius[tuple(walk.astype(int).T)]


def _round_pen(points: np.ndarray, radii: np.ndarray, size: int) -> np.ndarray:
    """Draw each point as an anti-aliased disc of its radius (a round pen along the trace)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    out = np.zeros((size, size))
    for (r, c), rad in zip(points, radii, strict=True):
        np.maximum(out, np.clip(rad + 0.5 - np.hypot(rows - r, cols - c), 0.0, 1.0), out=out)
    return out


def _turned(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    """The points turned by up to PIECE_TURN degrees about their mean (which goes to 0)."""
    angle = np.deg2rad(rng.uniform(-PIECE_TURN, PIECE_TURN))
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - points.mean(0)) @ turn.T


def _traced_mnist(rng: np.random.Generator, digits: np.ndarray) -> np.ndarray:
    """Each digit's traced part (`_traced_part`), turned, with the far end of the next digit's
    traced part (the last to the first), turned too, joined onto a random point of it, drawn
    with a round pen (`_round_pen`) and brought to MNIST's format. A real hand's strokes with
    round ends, no cut edge, no digit's shape: content only, like the `*_mnist` kinds."""
    size = SIZE + 2 * _PAD
    out = np.zeros((len(digits), size, size))
    for i, img in enumerate(out):
        first, r1 = _traced_part(rng, digits[i])
        second, r2 = _traced_part(rng, digits[(i + 1) % len(digits)])
        if len(first) == 0 or len(second) == 0:
            continue  # a base image without ink gives a blank (the suite's tests forbid it)
        first, second = _turned(rng, first), _turned(rng, second)
        second = second - second[-1] + first[int(rng.integers(len(first)))]
        both = np.concatenate([first, second])
        img[:] = _round_pen(both - both.mean(0) + (size - 1) / 2, np.concatenate([r1, r2]), size)
    return to_mnist_format(out)[:, 0].astype(np.float64)


_BUILDERS: dict[str, Builder] = {
    "gaussian_noise": _gaussian_noise,
    "salt_pepper": _salt_pepper,
    "inverted": _inverted,
    "blur": _blur,
    "occlusion": _occlusion,
    "rotation90": _rotation90,
    "strokes": _strokes,
    "shapes": _shapes,
    **{kind: flipped(kind) for kind in CONTENT_PROXY},
    "resized": _resized,
    "off_centre": _off_centre,
    "strokes_mnist": _strokes_mnist,
    "pen_mnist": _pen_mnist,
    "pieces_mnist": _pieces_mnist,
    "traced_mnist": _traced_mnist,
}


def build_anomaly_suite(
    base_images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    n_per_kind: int = 100,
    seed: int = 0,
    kinds: tuple[str, ...] = ANOMALY_KINDS,
) -> tuple[np.ndarray, np.ndarray]:
    """Build `n_per_kind` anomalies of each kind from held-out digits.

    `labels` (N,), the base digits' classes, are needed by the content-proxy kinds
    (`mirrored`, `upside_down`), which flip only digits whose flip is not a digit.
    Returns images float32 (M, 1, 28, 28) in [0, 1], grouped by kind in `kinds` order, and
    the kind of each image as a str array (M,). Same inputs and seed -> identical bytes.
    """
    if n_per_kind < 1:
        raise ValueError(f"n_per_kind must be >= 1, got {n_per_kind}")
    unknown = sorted(set(kinds) - set(_BUILDERS))
    if unknown or not kinds:
        raise ValueError(f"unknown anomaly kind(s) {unknown}; known: {list(ANOMALY_KINDS)}")
    digits = _as_digits(base_images)
    pools = _content_pools(kinds, labels, digits.shape[0])
    rng = np.random.default_rng(seed)
    images, names = [], []
    for kind in kinds:
        pool = pools.get(kind)  # a content kind's digits; every other kind draws from all
        if pool is None:
            idx = rng.choice(digits.shape[0], size=n_per_kind, replace=digits.shape[0] < n_per_kind)
        else:
            idx = rng.choice(pool, size=n_per_kind, replace=pool.size < n_per_kind)
        images.append(np.clip(_BUILDERS[kind](rng, digits[idx]), 0.0, 1.0))
        names.extend([kind] * n_per_kind)
    out = np.concatenate(images).astype(np.float32)[:, None]
    return np.ascontiguousarray(out), np.asarray(names)


def _content_pools(kinds: tuple[str, ...], labels: Any, n: int) -> dict[str, np.ndarray]:
    """The base digits each content-proxy kind in `kinds` may flip, by label."""
    wanted = [k for k in kinds if k in CONTENT_PROXY]
    if not wanted:
        return {}
    if labels is None:
        raise ValueError(
            f"anomaly kind(s) {wanted} flip digits picked by class: pass the base digits' labels"
        )
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(f"labels must give one class per base digit ({n}), got {labels.shape[0]}")
    pools = {k: np.flatnonzero(np.isin(labels, CONTENT_PROXY[k][0])) for k in wanted}
    empty = [k for k, pool in pools.items() if pool.size == 0]
    if empty:
        raise ValueError(f"no base digit of the classes anomaly kind(s) {empty} flip")
    return pools
