"""Image conversion at the HTTP boundary: uploads and JSON arrays in, PNGs and arrays out.

Everything here raises `BadImage` (serving.errors.BadInput, a ValueError) with a message fit for
a 400 response; an unreadable content type is `UnsupportedMediaType` (415).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import BadInput, UnsupportedMediaType

SIDE = 28
PIXELS = SIDE * SIDE
ALLOWED_FORMATS = ("PNG", "JPEG")
MAX_UPLOAD_PIXELS = 4096 * 4096  # per uploaded image, before it is decoded
Scale = Literal["auto", "unit", "uint8"]


class BadImage(BadInput):
    """An input image that cannot be scored; the message says why."""


def decode_upload(data: bytes, name: str = "image") -> np.ndarray:
    """PNG/JPEG bytes -> (28, 28) float32 in [0, 1]; grayscale, resized (bilinear) if needed."""
    if not data:
        raise BadImage(f"{name}: empty file")
    try:
        # the header is parsed lazily: size and format are checked before any pixel is decoded
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ALLOWED_FORMATS:
                raise BadImage(f"{name}: unsupported format {img.format}; send PNG or JPEG")
            width, height = img.size
            if width * height > MAX_UPLOAD_PIXELS or min(width, height) < 1:
                raise BadImage(f"{name}: {width}x{height} pixels is outside 1..4096x4096")
            gray = img.convert("L")
    except BadImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise BadImage(f"{name}: not a readable PNG or JPEG image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{name}: corrupt image ({type(exc).__name__})") from None
    if gray.size != (SIDE, SIDE):
        gray = gray.resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.float32) / np.float32(255.0)


def _as_grids(images: Sequence[Sequence[float] | Sequence[Sequence[float]]]) -> np.ndarray:
    """Stack images given as 784 values or 28 rows of 28 into (N, 28, 28) float64."""
    try:  # fast path: one conversion when every image has the same layout
        stacked = np.asarray(images, dtype=np.float64)
    except (ValueError, TypeError):
        stacked = None
    if stacked is not None and stacked.shape[1:] in ((PIXELS,), (SIDE, SIDE)):
        return stacked.reshape(len(images), SIDE, SIDE)
    out = np.empty((len(images), SIDE, SIDE), dtype=np.float64)
    for i, image in enumerate(images):
        try:
            arr = np.asarray(image, dtype=np.float64)
        except (ValueError, TypeError):
            raise BadImage(f"image {i}: rows of unequal length") from None
        if arr.shape == (PIXELS,):
            arr = arr.reshape(SIDE, SIDE)
        if arr.shape != (SIDE, SIDE):
            raise BadImage(f"image {i}: shape {arr.shape}; expected 784 values or 28x28")
        out[i] = arr
    return out


def parse_arrays(images: Sequence, scale: Scale = "auto") -> np.ndarray:
    """JSON image arrays -> (N, 28, 28) float32 in [0, 1].

    `scale="unit"`: values are in [0, 1]; `"uint8"`: values are in [0, 255] (divided by 255);
    `"auto"`: uint8 when any value of the request exceeds 1, else unit. Arrays are never
    resized: any shape other than 784 values or 28x28 is rejected.
    """
    if len(images) == 0:
        raise BadImage("no images given")
    grids = _as_grids(images)
    if not np.isfinite(grids).all():
        raise BadImage("images contain NaN or Inf")
    low, high = float(grids.min()), float(grids.max())
    if scale == "auto":
        scale = "uint8" if high > 1.0 else "unit"
    limit = 255.0 if scale == "uint8" else 1.0
    if low < 0.0 or high > limit:
        raise BadImage(
            f"pixel values must be in [0, {limit:g}] for scale={scale!r}, got [{low:g}, {high:g}]"
        )
    if scale == "uint8":
        grids = grids / 255.0
    return grids.astype(np.float32)


_INV_255 = np.float32(1.0 / 255.0)


def parse_raw(data: bytes, limit: int) -> np.ndarray:
    """Raw uint8 pixels (N x 784 bytes, row-major, 0 = background) -> (N, 28, 28) float32."""
    if not data:
        raise BadImage("no pixels given")
    if len(data) % PIXELS:
        raise BadImage(f"raw pixels must be a multiple of {PIXELS} bytes, got {len(data)}")
    count = len(data) // PIXELS
    if count > limit:
        raise BadImage(f"too many images: {count} > {limit} per request")
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(count, SIDE, SIDE)
    return pixels.astype(np.float32) * _INV_255


def parse_pixels(encoded: str, limit: int) -> np.ndarray:
    """Base64 of raw uint8 pixels (see `parse_raw`) -> (N, 28, 28) float32 in [0, 1]."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise BadImage("`pixels` is not valid base64") from None
    return parse_raw(data, limit)


def decode_body(data: bytes, content_type: str, limit: int) -> np.ndarray:
    """A raw request body -> (N, 28, 28) float32: PNG/JPEG (one image) or raw uint8 pixels."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("image/png", "image/jpeg"):
        return decode_upload(data, "body")[None]
    if kind in ("application/octet-stream", ""):
        return parse_raw(data, limit)
    raise UnsupportedMediaType(
        f"unsupported content type {kind!r}: send image/png, image/jpeg or "
        "application/octet-stream (784 raw uint8 pixels per image)"
    )


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) float in [0, 1] -> grayscale PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(N, 28, 28) -> one (H, W) mosaic, ceil(sqrt(N)) columns, `pad` black pixels between."""
    n = images.shape[0]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    step = SIDE + pad
    canvas = np.zeros((rows * step + pad, cols * step + pad), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        canvas[pad + r * step : pad + r * step + SIDE, pad + c * step : pad + c * step + SIDE] = (
            image
        )
    return canvas
