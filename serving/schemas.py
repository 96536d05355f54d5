"""Typed, bounded request fields and response models of the HTTP API (they become /docs.json)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from annotated_types import Ge, Le, Len
from pydantic import BaseModel, Field

from models.spec import ALIAS, CHALLENGER, FAMILIES

MAX_GENERATE = 256  # images per /generate
MAX_SCORE = 256  # images per /score
MAX_RECONSTRUCT = 64  # images per /reconstruct
MAX_STEPS = 100  # diffusion sampling steps
MAX_SEED = 2**31 - 1
PIXELS_PER_IMAGE = 28 * 28

N = Annotated[int, Ge(1), Le(MAX_GENERATE)]
Seed = Annotated[int, Ge(0), Le(MAX_SEED)]
Label = Annotated[int, Ge(0), Le(9)]
Steps = Annotated[int, Ge(1), Le(MAX_STEPS)]
# /reconstruct's denoising strength: the share of the noise schedule (models with `denoising`)
DenoiseStrength = Annotated[float, Ge(0), Le(1)]
# "champion" (the task's champion), "challenger" (its challenger, where it has one) or a family
# name; families come from models.spec.FAMILIES
ModelName = Literal[(ALIAS, CHALLENGER, *FAMILIES)]  # type: ignore[valid-type]
OutputFormat = Literal["png_grid", "pngs", "array"]
PixelScale = Literal["auto", "unit", "uint8"]

Pixel = Annotated[float, Ge(0), Le(255)]  # NaN and Inf fail these bounds too
FlatImage = Annotated[list[Pixel], Len(784, 784)]
GridImage = Annotated[list[Annotated[list[Pixel], Len(28, 28)]], Len(28, 28)]
ImageArray = FlatImage | GridImage
# the compact input: base64 of N x 784 raw uint8 pixels (row-major, 0 = background, 255 = ink)
Pixels = Annotated[
    str,
    Field(
        max_length=4 * ((MAX_SCORE * PIXELS_PER_IMAGE + 2) // 3),
        description=(
            "base64 of raw uint8 pixels, 784 bytes (28x28, row-major, 0 = background, "
            "255 = ink) per image, images back to back: the compact alternative to `images`"
        ),
    ),
]


class ModelRef(BaseModel):
    """Which registered model version produced a result."""

    name: str
    version: str
    family: str


class ImageScore(BaseModel):
    score: float = Field(
        description="calibrated anomaly score, the quantity the verdict thresholds: > 1 exactly "
        "when is_anomaly, higher = more atypical on any side (raw statistic too high or too low, "
        "or atypical input energy: blank, faint, dot); rank and threshold by this"
    )
    threshold: float = Field(description="the verdict's threshold on `score` (always 1)")
    is_anomaly: bool = Field(
        description="the calibrated two-sided verdict (score > threshold); see docs/anomaly.md"
    )
    percentile: float = Field(
        description="share (0..100) of validation normals whose calibrated score is <= score"
    )
    raw_score: float = Field(
        description="the model's raw statistic (reconstruction error, -ELBO, ...): one-sided, "
        "low for blank or faint inputs, so not for ranking; see docs/anomaly.md"
    )
    model: str
    family: str
    version: str


class ScoreResponse(BaseModel):
    model: ModelRef
    threshold: float = Field(description="the verdict's threshold on each result's score (1)")
    target_fpr: float = Field(description="false-positive budget on validation normals")
    raw_threshold: float = Field(description="the raw statistic's high threshold")
    raw_low_threshold: float | None = Field(
        description="the raw statistic's low threshold (null for a one-sided calibration)"
    )
    results: list[ImageScore]


class GenerateResponse(BaseModel):
    model: ModelRef
    n: int
    seed: int
    label: int | None
    steps: int | None
    format: OutputFormat
    # only the requested format is filled; the others stay empty (never null: BentoML's
    # Python client cannot decode a null array)
    png_grid: str = Field("", description="base64 PNG of all images in one grid")
    pngs: list[str] = Field(default_factory=list, description="one base64 PNG per image")
    array: list[list[list[float]]] = Field(
        default_factory=list, description="(n, 28, 28) in [0, 1]"
    )


class Reconstruction(BaseModel):
    score: float
    reconstruction: list[list[float]] = Field(description="28x28 in [0, 1]")
    error_map: list[list[float]] = Field(description="28x28 squared error per pixel")


class ReconstructResponse(BaseModel):
    model: ModelRef
    results: list[Reconstruction]


class ErrorResponse(BaseModel):
    error: str


class ReloadResponse(BaseModel):
    swapped: bool = Field(description="a new set of models is now being served")
    refused: bool = Field(description="the source could not be read or was not servable")
    ready: bool
    fingerprint: str
    reason: str


def model_ref(meta: Any) -> ModelRef:
    return ModelRef(name=meta.name, version=meta.version, family=meta.family)
