"""A held-out benchmark of real out-of-distribution images and degenerate inputs.

Nothing in the project was chosen on these images: no scoring rule, threshold, split of the
false-positive budget or hyper-parameter. They come from files that installed packages ship
(no network), and every real image goes through the service's own upload path: grayscale
(PIL "L"), then a bilinear resize to 28x28 - the benchmark measures what a user of `/score`
gets when they upload such a picture.

Real kinds (REAL_KINDS):
  photo       square crops of the photos shipped with scikit-learn (china.jpg, flower.jpg) and
              matplotlib (grace_hopper.jpg)
  uci_digits  the UCI optical digits shipped with scikit-learn (`load_digits`, 8x8, another
              writer population and scanner), whole image resized to 28x28
  letters     Latin letters A-Z, a-z in the DejaVu typefaces shipped with matplotlib, white on
              black, 16-24 px, roughly centred (near-OOD: strokes like a digit's)
  mri         crops of the MRI slice shipped with matplotlib (s1045.ima.gz)
  greek       Greek capitals and small letters in the DejaVu and STIX typefaces shipped with
              matplotlib, drawn like `letters` (several capitals share a Latin letter's shape)
  script      mathematical script (calligraphic) letters, the most handwriting-like glyphs that
              ship with matplotlib (STIX), drawn like `letters`
  symbols     mathematical and typographic symbols (+ = < % & # @ ? ! integral, sum, root,
              infinity, currency...) in the DejaVu and STIX typefaces, drawn like `letters`
  greek, script and symbols were added after the first recorded runs (issue 24); they draw from
  generators of their own, so every earlier kind's images stay byte-identical.

Content-only kinds (CONTENT_KINDS): letters_mnist, greek_mnist, script_mnist, symbols_mnist are
  the four glyph kinds drawn the same way (fresh draws, from generators of their own) and then
  brought to MNIST's format (models.digit_format.to_mnist_format: crop, longer side 20 px,
  centred by mass), the preprocessing every training digit went through. The glyph kinds above
  differ from a digit in format as well as content (a 16-24 px glyph; a format test alone flags
  them, docs/anomaly.md eleventh pass); these differ in content only, the harder question.

Degenerate kinds (DEGENERATE_KINDS), the inputs reconstruction and likelihood scores call
"most normal" (Nalisnick et al. 2019; Serra et al. 2020):
  blank         all zeros
  faint         a test digit at 10-20 % of its intensity
  dot           a single 2x2 dot of full intensity
  saturated     all ones
  uniform_noise every pixel uniform in [0, 1]
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from models.digit_format import to_mnist_format

SIZE = 28
CONTENT_KINDS = ("letters_mnist", "greek_mnist", "script_mnist", "symbols_mnist")
REAL_KINDS = ("photo", "uci_digits", "letters", "mri", "greek", "script", "symbols", *CONTENT_KINDS)
DEGENERATE_KINDS = ("blank", "faint", "dot", "saturated", "uniform_noise")
HELDOUT_KINDS = REAL_KINDS + DEGENERATE_KINDS
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FONT_FILES = tuple(
    f"DejaVu{family}{style}.ttf"
    for family in ("Sans", "Serif", "SansMono")
    for style in ("", "-Bold", "-Oblique" if family != "Serif" else "-Italic")
)
GREEK = "".join(chr(c) for c in (*range(0x391, 0x3AA), *range(0x3B1, 0x3CA)) if c != 0x3A2)
SCRIPT = "𝒜𝒞𝒟𝒢𝒥𝒦𝒩𝒪𝒫𝒬𝒮𝒯𝒰𝒱𝒲𝒳𝒴𝒵𝒶𝒷𝒸𝒹𝒻𝒽𝒾𝒿𝓀𝓁𝓂𝓃𝓅𝓆𝓇𝓈𝓉𝓊𝓋𝓌𝓍𝓎𝓏ℬℰℱℋℐℒℳℛℯℊℴ"
SYMBOLS = "+−×÷=≠≈≤≥<>∞∑∏∫√∂∇∈∀∃%&#@?!§¶$€£¥*"
_STIX = ("STIXGeneral.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBol.ttf")
# (characters, typefaces that have every one of them): tests/pipelines/evaluation checks the cmaps
GLYPH_KINDS = {
    "letters": (LETTERS, _FONT_FILES),
    "greek": (GREEK, _FONT_FILES + _STIX),
    "script": (SCRIPT, ("STIXGeneral.ttf",)),
    "symbols": (SYMBOLS, (*_FONT_FILES, "STIXGeneral.ttf", "STIXGeneralBol.ttf")),
}
# kinds added after the first recording: each draws from its own generator (seed, id)
_OWN_STREAM = {"greek": 1, "script": 2, "symbols": 3} | {
    kind: 4 + i for i, kind in enumerate(CONTENT_KINDS)
}

Builder = Callable[[np.random.Generator, int, np.ndarray], np.ndarray]


# ---- sources shipped with installed packages ------------------------------------------------
def _matplotlib_data() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path())


@cache
def _photos() -> tuple[Image.Image, ...]:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(img) for img in load_sample_images().images]
    with Image.open(_matplotlib_data() / "sample_data" / "grace_hopper.jpg") as img:
        photos.append(img.convert("RGB"))
    return tuple(photos)


@cache
def _mri() -> Image.Image:
    raw = gzip.decompress((_matplotlib_data() / "sample_data" / "s1045.ima.gz").read_bytes())
    slice_ = np.frombuffer(raw, dtype="<u2").reshape(256, 256).astype(np.float64)
    return Image.fromarray(np.rint(255 * slice_ / slice_.max()).astype(np.uint8))


@cache
def _uci_digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    return np.rint(load_digits().images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16


def _upload(img: Image.Image) -> np.ndarray:
    """What the service does to an uploaded picture: grayscale, bilinear resize to 28x28."""
    gray = img.convert("L")
    if gray.size != (SIZE, SIZE):
        gray = gray.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(gray, dtype=np.float64) / 255.0


def _random_crop(rng: np.random.Generator, img: Image.Image, min_side: int) -> Image.Image:
    width, height = img.size
    side = int(rng.integers(min_side, min(width, height) + 1))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    return img.crop((left, top, left + side, top + side))


# ---- real kinds -----------------------------------------------------------------------------
def _photo(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    photos = _photos()
    return np.stack(
        [_upload(_random_crop(rng, photos[int(rng.integers(len(photos)))], SIZE)) for _ in range(n)]
    )


def _uci(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    source = _uci_digits()
    idx = rng.choice(len(source), size=n, replace=len(source) < n)
    return np.stack([_upload(Image.fromarray(source[i])) for i in idx])


def typeset(
    rng: np.random.Generator, n: int, chars: str, font_files: tuple[str, ...] | list[str]
) -> np.ndarray:
    """`n` glyphs of `chars` in matplotlib's `font_files`, each drawn at random: white on
    black, 16-24 px, centred within 2 px; float64 (n, 28, 28) in [0, 1]."""
    fonts = _matplotlib_data() / "fonts" / "ttf"
    out = []
    for _ in range(n):
        font = ImageFont.truetype(str(fonts / font_files[int(rng.integers(len(font_files)))]),
                                  int(rng.integers(16, 25)))  # fmt: skip
        canvas = Image.new("L", (SIZE, SIZE), 0)
        cx, cy = SIZE / 2 + rng.uniform(-2, 2, size=2)
        ImageDraw.Draw(canvas).text((cx, cy), chars[int(rng.integers(len(chars)))],
                                    fill=255, font=font, anchor="mm")  # fmt: skip
        out.append(np.asarray(canvas, dtype=np.float64) / 255.0)
    return np.stack(out)


def _glyphs(kind: str) -> Builder:
    """A kind of typeset glyphs (`typeset`)."""
    chars, font_files = GLYPH_KINDS[kind]
    return lambda rng, n, digits: typeset(rng, n, chars, font_files)


def _in_mnist_format(build: Builder) -> Builder:
    """The same kind, brought to MNIST's format: only its content differs from a digit."""

    def built(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
        return to_mnist_format(build(rng, n, digits))[:, 0].astype(np.float64)

    return built


def _mri_crops(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    return np.stack([_upload(_random_crop(rng, _mri(), 64)) for _ in range(n)])


# ---- degenerate kinds -----------------------------------------------------------------------
def _blank(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    return np.zeros((n, SIZE, SIZE))


def _faint(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    idx = rng.choice(len(digits), size=n, replace=len(digits) < n)
    return digits[idx] * rng.uniform(0.10, 0.20, size=(n, 1, 1))


def _dot(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    out = np.zeros((n, SIZE, SIZE))
    for img, (top, left) in zip(out, rng.integers(0, SIZE - 1, size=(n, 2)), strict=True):
        img[top : top + 2, left : left + 2] = 1.0
    return out


def _saturated(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    return np.ones((n, SIZE, SIZE))


def _uniform_noise(rng: np.random.Generator, n: int, digits: np.ndarray) -> np.ndarray:
    return rng.random((n, SIZE, SIZE))


_BUILDERS: dict[str, Builder] = {
    "photo": _photo,
    "uci_digits": _uci,
    "letters": _glyphs("letters"),
    "mri": _mri_crops,
    "greek": _glyphs("greek"),
    "script": _glyphs("script"),
    "symbols": _glyphs("symbols"),
    **{f"{kind}_mnist": _in_mnist_format(_glyphs(kind)) for kind in GLYPH_KINDS},
    "blank": _blank,
    "faint": _faint,
    "dot": _dot,
    "saturated": _saturated,
    "uniform_noise": _uniform_noise,
}


def _generator(kind: str, seed: int, shared: np.random.Generator) -> np.random.Generator:
    own = _OWN_STREAM.get(kind)
    return shared if own is None else np.random.default_rng([seed, own])


def build_heldout_benchmark(
    base_images: np.ndarray,
    *,
    n_per_kind: int = 100,
    seed: int = 0,
    kinds: tuple[str, ...] = HELDOUT_KINDS,
) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_kind` images of each held-out kind; `base_images` (test digits, uint8 0..255 or
    float 0..1) only feed the `faint` kind.

    Returns images float32 (M, 1, 28, 28) in [0, 1], grouped by kind in `kinds` order, and the
    kind of each image as a str array (M,). Same inputs and seed -> identical bytes.
    """
    if n_per_kind < 1:
        raise ValueError(f"n_per_kind must be >= 1, got {n_per_kind}")
    unknown = sorted(set(kinds) - set(_BUILDERS))
    if unknown or not kinds:
        raise ValueError(f"unknown held-out kind(s) {unknown}; known: {list(HELDOUT_KINDS)}")
    arr = np.asarray(base_images)
    digits = arr.astype(np.float64).reshape(-1, SIZE, SIZE) / (
        255.0 if arr.dtype == np.uint8 else 1
    )
    if digits.shape[0] == 0 or not np.isfinite(digits).all():
        raise ValueError("base_images must be a non-empty set of finite images")
    shared, digits = np.random.default_rng(seed), np.clip(digits, 0, 1)
    images = [
        np.clip(_BUILDERS[k](_generator(k, seed, shared), n_per_kind, digits), 0, 1) for k in kinds
    ]
    out = np.concatenate(images).astype(np.float32)[:, None]
    return np.ascontiguousarray(out), np.repeat(np.asarray(kinds), n_per_kind)
