"""Scoring requests: read the images of a request, score them on the scoring lane, answer.

Shared by `/score`, `/reconstruct` (through `read_images` and `scores`) and the one-image
fast path `/score/image` (`score_body`, called by serving.fastpath without BentoML's API
layer). The scores come from the adaptive batcher on the scoring lane's thread.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
import numpy as np

from models.calibration import SCORE_THRESHOLD
from models.spec import ALIAS as CHAMPION
from models.spec import CHALLENGER
from serving import canary, imaging
from serving.admission import Lane
from serving.batching import ScoreBatcher
from serving.bundle import SCORE_UNIT, ServedModel
from serving.catalog import Route
from serving.errors import BadInput, ModelFailed, ModelNotFound
from serving.responses import model_headers
from serving.runtime import score_metrics
from serving.schemas import MAX_SCORE
from serving.shadow import Shadow


class Scoring:
    """The scoring lane's side of the service: inputs in, scores and verdicts out."""

    def __init__(
        self,
        lane: Lane,
        batcher: ScoreBatcher,
        resolve: Callable[[str, str | None], ServedModel],
        route: Callable[[str, str | None, str], Route],
        shadow: Shadow | None = None,
    ) -> None:
        self.lane = lane
        self.batcher = batcher
        self.resolve = resolve
        self.route = route
        self.shadow = shadow

    async def answer(self, route: Route, batch: np.ndarray) -> tuple[ServedModel, np.ndarray]:
        """The scores of `batch` from whoever the route names (a failing canary falls back
        on the champion, serving.canary)."""
        return await canary.answer(route, lambda served: self.scores(served, batch))

    def offer_shadow(
        self, model: str | None, images: np.ndarray, payload: dict[str, Any], route: Route
    ) -> str:
        """After the champion answered a request for it (`model` None or "champion"), maybe
        shadow the request on the challenger (serving.shadow); other requests, and those a
        canary answered, are never shadowed."""
        if self.shadow is None or model not in (None, CHAMPION) or route.fallback is not None:
            return "off"
        try:
            challenger = self.resolve("anomaly", CHALLENGER)
        except ModelNotFound:
            return "off"
        results = payload["results"]
        scores = np.array([r["score"] for r in results], dtype=np.float64)
        flags = np.array([r["is_anomaly"] for r in results], dtype=bool)
        return self.shadow.offer("anomaly", challenger, images, scores, flags)

    async def read_images(
        self,
        images: list | None,
        files: list[Path],
        scale: str,
        limit: int,
        pixels: str | None = None,
    ) -> np.ndarray:
        """The request's images as (N, 1, 28, 28) float32 in [0, 1]; BadInput otherwise."""
        inputs = {"images": images, "files": files, "pixels": pixels}
        given = [name for name, value in inputs.items() if value]
        if len(given) > 1:
            raise BadInput(f"send one of `images`, `files` or `pixels`, not {given}")
        if pixels:
            return imaging.parse_pixels(pixels, limit)[:, None, :, :]
        count = len(images or files)
        if count == 0:
            raise BadInput(
                "no images given: send `images` (JSON arrays), `pixels` (base64) or `files`"
            )
        if count > limit:
            raise BadInput(f"too many images: {count} > {limit} per request")
        if files:
            decoded = await anyio.to_thread.run_sync(decode_files, files)
        else:
            decoded = imaging.parse_arrays(images, scale)  # type: ignore[arg-type]
        return decoded[:, None, :, :]

    async def scores(self, served: ServedModel, batch: np.ndarray) -> np.ndarray:
        """Scores of a validated batch, queued on the scoring lane (may raise Shed)."""
        estimate = served.estimate_s(SCORE_UNIT, len(batch))
        scores = await self.lane.hold(estimate, self.batcher.score(served, batch))
        if not np.isfinite(scores).all():
            raise ModelFailed(
                f"{served.meta.name} v{served.meta.version} produced non-finite scores "
                f"for {int((~np.isfinite(scores)).sum())} of {len(scores)} images"
            )
        return scores

    @staticmethod
    def payload(served: ServedModel, scores: np.ndarray, images: np.ndarray) -> dict[str, Any]:
        """The /score answer as plain JSON-ready data; records the score metrics.

        The calibrated score gets each image too, so a calibration with an input-energy test
        applies it exactly as the pipeline's evaluation does; the verdict is that score > 1.
        """
        meta, calibration = served.meta, served.calibration
        histogram, anomalies = score_metrics()
        family_version = (meta.family, meta.version)
        calibrated = calibration.statistic(scores, images).tolist()
        results = []
        for value, raw in zip(calibrated, scores.tolist(), strict=True):
            flagged = value > SCORE_THRESHOLD  # is_anomaly(raw, image), already computed
            histogram.labels(*family_version).observe(raw)
            if flagged:
                anomalies.labels(*family_version).inc()
            results.append(
                {
                    "score": value,
                    "threshold": SCORE_THRESHOLD,
                    "is_anomaly": flagged,
                    "percentile": calibration.percentile(value),
                    "raw_score": raw,
                    "model": meta.name,
                    "family": meta.family,
                    "version": meta.version,
                }
            )
        return {
            "model": {"name": meta.name, "version": meta.version, "family": meta.family},
            "threshold": SCORE_THRESHOLD,
            "target_fpr": calibration.target_fpr,
            "raw_threshold": calibration.threshold,
            "raw_low_threshold": calibration.low_threshold,
            "results": results,
        }

    async def score_body(
        self, body: bytes, content_type: str, model: str | None, client: str = ""
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """POST /score/image: (JSON payload, headers) for a raw body (the fast path).

        Failures raise serving.errors types (NotReady, ModelNotFound, BadInput, Shed ...),
        answered by whichever path called: the fast path or BentoML's API layer.
        """
        route = self.route("anomaly", model, client)
        batch = imaging.decode_body(body, content_type, MAX_SCORE)[:, None, :, :]
        served, scores = await self.answer(route, batch)
        payload = self.payload(served, scores, batch)
        self.offer_shadow(model, batch, payload, route)
        return payload, model_headers(served)


def decode_files(files: list[Path]) -> np.ndarray:
    return np.stack(
        [imaging.decode_upload(Path(f).read_bytes(), f"file {i}") for i, f in enumerate(files)]
    )
