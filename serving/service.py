"""The genops BentoML service: the API routes (generate, score, reconstruct, describe, reload).

Serve it with `bentoml serve serving.service:GenOps` (models from GENOPS_MODEL_SOURCE, see
serving.sources; GENOPS_WORKERS worker processes) or build a Bento with
`bentoml build -f serving/bentofile.yaml .`. Endpoints and bounds are documented in
docs/serving.md. Thin by design, one role per module:

    serving.modelset     the served model set: load, verify, reload, poll, resolve a model
    serving.scoring      reading images, scoring on the scoring lane, the /score answer
    serving.admission    the lanes (bounded queues, 503 + Retry-After, cancellation)
    serving.errors       the one exception -> HTTP answer table (routes only raise)
    serving.admin        the admin token check
    serving.responses    the model/worker headers of an answer
    serving.fastpath     POST /score/image without BentoML's API layer
    serving.web          GET /metadata, the web page and the model cards

The scoring rule, weight loading and calibration live in `models/`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.validators import ContentType
from pydantic import Field

from serving import canary, errors, imaging
from serving.admin import admin_refusal
from serving.admission import (
    GENERATION_LANE,
    SCORING_LANE,
    Admission,
    Lane,
    current_stop,
    install_outermost,
)
from serving.batching import ScoreBatcher
from serving.bundle import SAMPLE_UNIT, SCORE_UNIT, ServedModel
from serving.canary import client_key
from serving.catalog import CHAMPION, Catalog, Route
from serving.errors import BadInput, Conflict, Forbidden
from serving.fastpath import ScoreImageRoute
from serving.http import BodySizeLimit, refuse_file_urls, release_request_timers
from serving.modelset import ERROR_RETRY_S, ModelSet
from serving.responses import MODEL_HEADER, VERSION_HEADER, WORKER_HEADER, name_the_model
from serving.runtime import Settings, freeze_heap, setup_logging, worker_count, worker_info
from serving.schemas import (
    MAX_RECONSTRUCT,
    MAX_SCORE,
    DenoiseStrength,
    GenerateResponse,
    ImageArray,
    ImageScore,
    Label,
    ModelName,
    N,
    OutputFormat,
    Pixels,
    PixelScale,
    Reconstruction,
    ReconstructResponse,
    ReloadResponse,
    ScoreResponse,
    Seed,
    Steps,
    model_ref,
)
from serving.scoring import Scoring
from serving.shadow import Shadow
from serving.web import web_app

log = logging.getLogger("genops.serving")
__all__ = ["ERROR_RETRY_S", "MODEL_HEADER", "VERSION_HEADER", "WORKER_HEADER", "GenOps"]
# Uploads default to an empty list: BentoML 1.4 cannot make `list[Path] | None` a multipart field.
NO_FILES = Field(default_factory=list, description="PNG/JPEG uploads (multipart/form-data)")


@bentoml.service(
    name="genops",
    traffic={"timeout": 60, "max_concurrency": 128},
    resources={"cpu": "2"},
    # GENOPS_WORKERS processes (default 1), read when the service is imported: each loads and
    # verifies the whole model set and has its own lanes, so capacity scales with workers
    workers=worker_count(),
    # Spans are not exported unless tracing is configured, yet creating them is the largest
    # per-request cost of the one-image path (about half its CPU time): leave that path out.
    tracing={"excluded_urls": ["/score/image"]},
)
class GenOps:
    """Serves the generation and anomaly champions plus the latest model of each family."""

    def __init__(self) -> None:
        setup_logging()
        self.settings = settings = Settings.from_env()
        if not settings.admin_token:
            log.warning("GENOPS_ADMIN_TOKEN is not set: /admin/reload refuses every request")
        self.lanes = {
            GENERATION_LANE: Lane(
                GENERATION_LANE,
                settings.generate_queue,
                settings.generate_max_queue_s,
                torch_threads=settings.torch_threads,
                nice=settings.generate_nice,
            ),
            SCORING_LANE: Lane(
                SCORING_LANE,
                settings.score_queue,
                settings.score_max_queue_s,
                torch_threads=settings.torch_threads,
            ),
        }
        self.batcher = ScoreBatcher(
            self.lanes[SCORING_LANE].executor, MAX_SCORE, enabled=settings.batching
        )
        self.models = ModelSet(
            settings.reload_interval_s,
            on_swap=freeze_heap if settings.gc_freeze else None,
            workers=worker_count(),
        )
        self.shadow = Shadow(
            settings.shadow_share,
            settings.shadow_capacity,
            self.lanes[SCORING_LANE],
            max_busy=settings.shadow_max_busy,
        )
        self.scoring = Scoring(
            self.lanes[SCORING_LANE],
            self.batcher,
            self.models.resolve,
            self.models.route,
            self.shadow,
        )
        self.models.start()  # blocks until this worker's models are loaded and verified
        if settings.gc_freeze:
            freeze_heap()

    # ---- lifecycle --------------------------------------------------------------------
    def __is_ready__(self) -> bool:
        """/readyz: true only once this worker's required models are loaded and verified."""
        return self.models.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.models.stop()
        self.shadow.shutdown()
        for lane in self.lanes.values():
            lane.shutdown()

    @property
    def catalog(self) -> Catalog:
        """The model set this worker serves now (read it once per request)."""
        return self.models.catalog

    @property
    def last_reload(self) -> ReloadResponse | None:
        return self.models.last_reload

    def reload(self, force: bool = False, trigger: str = "admin") -> ReloadResponse:
        """Re-read the source and swap the served models if it changed (see ModelSet)."""
        return self.models.reload(force, trigger)

    def describe(self) -> dict[str, Any]:
        from serving import schemas

        limits = {
            k.lower(): getattr(schemas, k)
            for k in ("MAX_GENERATE", "MAX_SCORE", "MAX_RECONSTRUCT", "MAX_STEPS", "MAX_SEED")
        }
        limits |= {
            "max_body_bytes": self.settings.max_body_bytes,
            "max_generate_cost": self.settings.max_generate_cost,
        }
        models = self.models.describe()
        reloads = {k: models.pop(k) for k in ("reload_interval_s", "last_reload", "last_swap")}
        return {
            **models,
            "limits": limits,
            "lanes": {name: lane.describe() for name, lane in self.lanes.items()},
            "admin_reload": "enabled" if self.settings.admin_token else "disabled (no token)",
            "batching": self.settings.batching,
            "shadow": self.shadow.describe(),
            **reloads,
            "worker": worker_info(),
        }

    def _shadow_samples(
        self,
        images: np.ndarray,
        n: int,
        seed: int,
        label: int | None,
        steps: int | None,
    ) -> str:
        """Maybe run a finished champion /generate request on the generation challenger too
        (serving.shadow), if the challenger takes the same arguments."""
        catalog = self.catalog
        challenger = catalog.challenger("generation")
        if challenger is None or not _can_sample(challenger, n, label, steps, self):
            return "off"
        judge = catalog.roles.get("anomaly")

        def sample(model: ServedModel) -> np.ndarray:
            return model.sample(n, seed, label, steps, None)

        lane = self.lanes[GENERATION_LANE]
        return self.shadow.offer_samples(challenger, lane, sample, images, judge)

    def score_payload(
        self, served: ServedModel, scores: np.ndarray, images: np.ndarray
    ) -> dict[str, Any]:
        """The /score answer as plain JSON-ready data (see Scoring.payload)."""
        return self.scoring.payload(served, scores, images)

    async def score_body(
        self, body: bytes, content_type: str, model: str | None, client: str = ""
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """POST /score/image, answered by serving.fastpath (see Scoring.score_body)."""
        return await self.scoring.score_body(body, content_type, model, client)

    # ---- API --------------------------------------------------------------------------
    @bentoml.api(route="/generate")
    async def generate(
        self,
        ctx: bentoml.Context,
        n: N = 16,
        seed: Seed = 0,
        label: Label | None = None,
        steps: Steps | None = None,
        model: ModelName | None = None,
        format: OutputFormat = "png_grid",
    ) -> GenerateResponse:
        """Sample `n` digits; the same (model, n, seed, label, steps) always gives the same images.

        `label` only for class-conditional models and `steps` only for models with a sampling
        step count (diffusion); either one given to another model is a 400.
        """
        route = self.models.route("generation", model, _client(ctx))
        if route.fallback is not None and not _can_sample(route.served, n, label, steps, self):
            route = Route(route.fallback, None, route.canary, route.task)  # the canary can't
        _can_sample(route.served, n, label, steps, self, explain=True)
        name_the_model(ctx, route.served)
        lane = self.lanes[GENERATION_LANE]

        async def sample(served: ServedModel) -> np.ndarray:
            estimate = served.estimate_s(SAMPLE_UNIT, served.generate_cost(n, steps))
            return await lane.run(estimate, served.sample, n, seed, label, steps, current_stop())

        served, images = await canary.answer(route, sample)
        name_the_model(ctx, served)
        if model in (None, CHAMPION) and route.fallback is None:
            self._shadow_samples(images, n, seed, label, steps)
        images = images[:, 0]
        out: dict[str, Any] = {"png_grid": "", "pngs": [], "array": []}
        if format == "png_grid":
            out["png_grid"] = imaging.b64(imaging.png_bytes(imaging.grid(images)))
        elif format == "pngs":
            out["pngs"] = [imaging.b64(imaging.png_bytes(img)) for img in images]
        else:
            out["array"] = images.tolist()
        return GenerateResponse.model_construct(
            model=model_ref(served.meta),
            n=n,
            seed=seed,
            label=label,
            steps=steps,
            format=format,
            **out,
        )

    @bentoml.api(route="/score")
    async def score(
        self,
        ctx: bentoml.Context,
        images: list[ImageArray] | None = None,
        files: list[Path] = NO_FILES,
        model: ModelName | None = None,
        scale: PixelScale = "auto",
        pixels: Pixels | None = None,
    ) -> ScoreResponse:
        """Calibrated anomaly score (> 1 = anomalous), verdict, percentile and raw statistic.

        Send one of: `images`, JSON arrays (784 values or 28x28; [0, 1] or [0, 255], see
        `scale`), never resized; `pixels`, base64 of raw uint8 pixels (784 bytes per image),
        the compact form; `files`, uploaded PNG/JPEG (multipart), converted to grayscale and
        resized to 28x28. At most 256 images per request. For one image, `POST /score/image`
        with the PNG or the 784 raw bytes as the body is the fastest path.
        """
        route = self.models.route("anomaly", model, _client(ctx))
        name_the_model(ctx, route.served)  # kept on a refusal: who would have answered
        batch = await self.scoring.read_images(images, files, scale, MAX_SCORE, pixels)
        served, scores = await self.scoring.answer(route, batch)
        name_the_model(ctx, served)  # the champion, where a failing canary fell back
        payload = self.scoring.payload(served, scores, batch)
        self.scoring.offer_shadow(model, batch, payload, route)
        return ScoreResponse.model_construct(
            model=model_ref(served.meta),
            threshold=payload["threshold"],
            target_fpr=payload["target_fpr"],
            raw_threshold=payload["raw_threshold"],
            raw_low_threshold=payload["raw_low_threshold"],
            results=[ImageScore.model_construct(**r) for r in payload["results"]],
        )

    @bentoml.api(route="/score/image")
    async def score_image(
        self, image: Annotated[Path, ContentType("image/png")], /
    ) -> ScoreResponse:
        """The one-image fast path: the request body *is* the image, no JSON around it.

        `Content-Type: image/png` or `image/jpeg` (one image, grayscale-converted and resized
        to 28x28) or `application/octet-stream` (raw uint8 pixels, 784 bytes per image,
        row-major, 0 = background; up to 256 images back to back). `?model=<family>` picks a
        model (default: the anomaly champion). Same answer as `/score`. (serving.fastpath
        answers this route; this declaration documents it in /docs.json and serves it when
        the fast path is not installed.)
        """
        payload, _ = await self.score_body(Path(image).read_bytes(), "image/png", None)
        return ScoreResponse.model_validate(payload)

    @bentoml.api(route="/reconstruct")
    async def reconstruct(
        self,
        ctx: bentoml.Context,
        images: list[ImageArray] | None = None,
        files: list[Path] = NO_FILES,
        model: ModelName | None = None,
        scale: PixelScale = "auto",
        pixels: Pixels | None = None,
        denoise_strength: DenoiseStrength | None = None,
        seed: Seed = 0,
    ) -> ReconstructResponse:
        """Reconstruction and per-pixel squared-error map (models with a reconstruction only).

        Inputs as for `/score` (`images`, `pixels` or `files`), at most 64 images. A corrupted
        digit (noise, speckles) comes back cleaned: the reconstruction is the model's idea of
        the digit. `denoise_strength` in [0, 1], only for models that declare denoising
        (diffusion), cleans by partial noising and sampling back instead (SDEdit; the share
        of the noise schedule, docs/denoising.md), its noise drawn from `seed`; the same
        (model, images, strength, seed) always gives the same images.
        """
        served = self.models.resolve("anomaly", model)
        name_the_model(ctx, served)
        if not served.has_reconstruction:
            raise BadInput(f"{served.meta.family} model has no reconstruction")
        if denoise_strength is not None and not served.model.capabilities.denoising:
            raise BadInput(
                f"{served.meta.family} model has no strength-controlled denoising: "
                "omit `denoise_strength`"
            )
        batch = await self.scoring.read_images(images, files, scale, MAX_RECONSTRUCT, pixels)
        lane = self.lanes[SCORING_LANE]
        estimate = served.estimate_s(SCORE_UNIT, 2 * len(batch))
        recon = await lane.run(estimate, served.reconstruct, batch, denoise_strength, seed)
        scores = await self.scoring.scores(served, batch)
        squared = np.square(recon - batch)
        return ReconstructResponse(
            model=model_ref(served.meta),
            results=[
                Reconstruction(score=s, reconstruction=r[0].tolist(), error_map=e[0].tolist())
                for s, r, e in zip(scores.tolist(), recon, squared, strict=True)
            ],
        )

    @bentoml.api(route="/metadata")
    async def metadata(self) -> dict[str, Any]:
        """Loaded model versions, data version, metrics, thresholds, load errors and limits."""
        return self.describe()

    @bentoml.api(route="/admin/reload")
    async def admin_reload(self, ctx: bentoml.Context, force: bool = False) -> ReloadResponse:
        """Re-read the model source and swap models if it changed (`force`: reload anyway).

        Needs the `X-Admin-Token` header (or `Authorization: Bearer <token>`) equal to
        GENOPS_ADMIN_TOKEN; with no token configured the endpoint is disabled (403). With
        several workers, the worker that answers (its pid is in X-Genops-Worker) reloads, then
        tells the others, which reload the same way within a fraction of a second
        (serving/reload_notice.py); the answer is the answering worker's.
        """
        refused = admin_refusal(self.settings.admin_token, ctx.request.headers)
        if refused:
            raise Forbidden(refused)
        ctx.response.headers[WORKER_HEADER] = str(os.getpid())
        result = await anyio.to_thread.run_sync(self.reload, force)
        if result.refused:
            raise Conflict(result.reason)
        return result


def _client(ctx: bentoml.Context) -> str:
    """The request's sticky canary key (serving.canary.client_key)."""
    request = ctx.request
    return client_key(request.headers, request.client)


def _can_sample(
    served: ServedModel,
    n: int,
    label: int | None,
    steps: int | None,
    service: GenOps,
    explain: bool = False,
) -> bool:
    """Whether `served` takes this /generate request; with `explain`, BadInput if not."""
    problem = None
    if label is not None and not served.conditional:
        problem = f"{served.meta.family} model is unconditional: omit `label`"
    elif steps is not None and not served.supports_steps:
        problem = f"{served.meta.family} model has no sampling steps: omit `steps`"
    else:
        cost, budget = served.generate_cost(n, steps), service.settings.max_generate_cost
        if cost > budget:
            problem = (
                f"request cost n x steps = {n} x {served.effective_steps(steps)} = {cost} "
                f"exceeds the per-request budget of {budget} (GENOPS_MAX_GENERATE_COST): "
                "lower `n` or `steps`"
            )
    if problem and explain:
        raise BadInput(problem)
    return problem is None


def _current() -> Any:
    """The running service instance in this worker, or None before it is created."""
    try:
        return bentoml.get_current_service()
    except Exception:
        return None


def _lanes() -> dict[str, Lane] | None:
    service = _current()
    return getattr(service, "lanes", None)


refuse_file_urls()
release_request_timers()
errors.install()  # every route's typed failures answered by serving.errors
# admission first of all (before BentoML's tracing, metrics and access log: a refusal must be
# cheap), then, inside BentoML's, the body-size limit and the one-image fast path
install_outermost(Admission, lanes=_lanes)
GenOps.add_asgi_middleware(BodySizeLimit, max_bytes=Settings.from_env().max_body_bytes)
GenOps.add_asgi_middleware(ScoreImageRoute, service=_current)
GenOps.mount_asgi_app(web_app(_current), path="/")
