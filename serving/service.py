"""The genops BentoML service: generate digits, score anomalies, reconstruct, describe, reload.

Serve it with `bentoml serve serving.service:GenOps` (models from GENOPS_MODEL_SOURCE, see
serving.sources) or build a Bento with `bentoml build -f serving/bentofile.yaml .`.
Endpoints and bounds are documented in docs/serving.md. Thin by design: the scoring rule,
weight loading and calibration live in `models/`, model lookup in serving.catalog, pixel
handling in serving.imaging, batching in serving.batching.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from bentoml.validators import ContentType
from pydantic import Field
from starlette.responses import JSONResponse

from models.spec import redact_text
from serving import imaging
from serving.admission import (
    CLIENT_CLOSED,
    GENERATION_LANE,
    SCORING_LANE,
    Admission,
    Cancelled,
    Lane,
    Shed,
    current_stop,
    install_outermost,
)
from serving.batching import ScoreBatcher
from serving.bundle import SAMPLE_UNIT, SCORE_UNIT, ServedModel
from serving.catalog import CHAMPION, Catalog, UnknownModel, empty_catalog, load_catalog
from serving.fastpath import ScoreImageRoute
from serving.http import BodySizeLimit, refuse_file_urls
from serving.runtime import Settings, score_metrics, setup_logging
from serving.schemas import (
    MAX_RECONSTRUCT,
    MAX_SCORE,
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
from serving.sources import ModelSource, source_from_env
from serving.web import web_app

log = logging.getLogger("genops.serving")
# Uploads default to an empty list: BentoML 1.4 cannot make `list[Path] | None` a multipart field.
NO_FILES = Field(default_factory=list, description="PNG/JPEG uploads (multipart/form-data)")
# Response headers naming the registered model version that produced the result.
MODEL_HEADER, VERSION_HEADER = "X-Genops-Model", "X-Genops-Model-Version"
# A catalog with load errors (e.g. a failed download) is retried this often even when the
# source is unchanged, so a transient failure does not leave a model out until the next change.
ERROR_RETRY_S = 30.0


def _bad_request(exc: Exception) -> InvalidArgument:
    return InvalidArgument(str(exc))


def _refusal(
    ctx: bentoml.Context, status: int, reason: str, retry_after_s: int | None = None
) -> JSONResponse:
    """A JSON error response with our reason (BentoML would blank 403/5xx bodies)."""
    ctx.response.status_code = status
    if retry_after_s is not None:
        ctx.response.headers["Retry-After"] = str(retry_after_s)
    return JSONResponse({"error": reason}, status_code=status)


@bentoml.service(
    name="genops",
    traffic={"timeout": 60, "max_concurrency": 128},
    resources={"cpu": "2"},
    workers=1,
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
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self.source: ModelSource | None = None
        self.catalog: Catalog = empty_catalog("none", "not loaded yet")
        self.last_reload: ReloadResponse | None = None  # the last attempt, whatever its outcome
        self.last_reload_info: dict[str, Any] | None = None  # the same, with when and how long
        self.last_swap: dict[str, Any] | None = None  # the last time the served set changed
        self._refused: dict[str, float] = {}  # fingerprint of a refused model set -> when
        try:
            self.source = source_from_env()
        except ValueError as exc:
            log.error("%s", exc)
            self.catalog = empty_catalog("invalid", str(exc))
        else:
            self.reload(force=True, trigger="startup")
        if self.settings.reload_interval_s > 0 and self.source is not None:
            threading.Thread(target=self._poll, name="genops-reload", daemon=True).start()

    # ---- lifecycle --------------------------------------------------------------------
    def __is_ready__(self) -> bool:
        """/readyz: true only once the required models are loaded and verified."""
        return self.catalog.ready

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self._stop.set()
        for lane in self.lanes.values():
            lane.shutdown()

    def reload(self, force: bool = False, trigger: str = "admin") -> ReloadResponse:
        """Re-read the source; build a new catalog, then swap the reference (atomically).

        A catalog that is not ready never replaces one that is: the old models keep serving.
        """
        with self._reload_lock:
            before, started = self.catalog, time.time()
            result = self._reload(force)
            took = round(time.time() - started, 3)
            info = {"trigger": trigger, "at": started, "duration_s": took}
            self.last_reload, self.last_reload_info = result, result.model_dump() | info
            if result.swapped:
                self.last_swap = {
                    "at": self.catalog.loaded_at,
                    "trigger": trigger,
                    "load_s": took,
                    "from": before.versions(),
                    "to": self.catalog.versions(),
                }
            return result

    def _reload(self, force: bool) -> ReloadResponse:
        current = self.catalog

        def kept(reason: str, refused: bool = True, quiet: bool = False) -> ReloadResponse:
            if refused and not quiet:
                log.error("reload refused: %s", reason)
            return ReloadResponse(
                swapped=False,
                refused=refused,
                ready=current.ready,
                fingerprint=current.fingerprint,
                reason=reason,
            )

        if self.source is None:
            return kept("no valid model source (see GENOPS_MODEL_SOURCE)")
        try:
            fingerprint = self.source.fingerprint()
        except Exception as exc:
            return kept(redact_text(f"cannot read model source {self.source.spec}: {exc}"))
        now = time.time()
        if not force:
            retry = bool(current.errors) and now - current.loaded_at >= ERROR_RETRY_S
            if fingerprint == current.fingerprint and not retry:
                return kept("model source unchanged", refused=False)
            if now - self._refused.get(fingerprint, -ERROR_RETRY_S) < ERROR_RETRY_S:
                reason = f"{fingerprint} was refused less than {ERROR_RETRY_S:.0f} s ago"
                return kept(reason, quiet=True)
        new = load_catalog(self.source)  # beside the serving one, which keeps answering
        if current.ready and not new.ready:
            self._refused = {new.fingerprint: new.loaded_at}
            reason = f"new models not servable, kept the current ones: {dict(new.errors)}"
            return kept(redact_text(reason))
        self._refused = {}
        unchanged = new.fingerprint == current.fingerprint and new.versions() == current.versions()
        if not force and unchanged and set(new.errors) == set(current.errors):
            # a retry that failed the same way again: keep the models, restart the retry clock
            self.catalog = dataclasses.replace(current, loaded_at=new.loaded_at)
            return kept("model source unchanged; load errors persist", refused=False)
        self.catalog = new  # one reference swap; in-flight requests keep the old catalog
        log.info(
            "serving model set %s from %s (ready=%s): %s",
            new.fingerprint,
            new.source,
            new.ready,
            new.versions(),
        )
        return ReloadResponse(
            swapped=True,
            refused=False,
            ready=new.ready,
            fingerprint=new.fingerprint,
            reason="loaded",
        )

    def _poll(self) -> None:
        while not self._stop.wait(self.settings.reload_interval_s):
            try:
                self.reload(trigger="poll")
            except Exception:
                log.exception("periodic reload failed; still serving the current models")

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
        return {
            **self.catalog.describe(),
            "limits": limits,
            "lanes": {name: lane.describe() for name, lane in self.lanes.items()},
            "admin_reload": "enabled" if self.settings.admin_token else "disabled (no token)",
            "batching": self.settings.batching,
            "reload_interval_s": self.settings.reload_interval_s,
            "last_reload": self.last_reload_info,
            "last_swap": self.last_swap,
        }

    # ---- helpers ----------------------------------------------------------------------
    def _resolve(self, task: str, name: str | None) -> ServedModel:
        catalog = self.catalog  # one read: the whole request uses one model set
        if (name is None or name == CHAMPION) and task not in catalog.roles:
            raise ServiceUnavailable(
                f"no {task} model is being served: {catalog.errors.get(task, 'not loaded')}"
            )
        try:
            return catalog.resolve(task, name)
        except UnknownModel as exc:
            raise _bad_request(exc) from None

    async def _read_images(
        self,
        images: list | None,
        files: list[Path],
        scale: str,
        limit: int,
        pixels: str | None = None,
    ) -> np.ndarray:
        """The request's images as (N, 1, 28, 28) float32 in [0, 1], or a 400."""
        inputs = {"images": images, "files": files, "pixels": pixels}
        given = [name for name, value in inputs.items() if value]
        if len(given) > 1:
            raise InvalidArgument(f"send one of `images`, `files` or `pixels`, not {given}")
        try:
            if pixels:
                return imaging.parse_pixels(pixels, limit)[:, None, :, :]
            count = len(images or files)
            if count == 0:
                raise InvalidArgument(
                    "no images given: send `images` (JSON arrays), `pixels` (base64) or `files`"
                )
            if count > limit:
                raise InvalidArgument(f"too many images: {count} > {limit} per request")
            if files:
                decoded = await anyio.to_thread.run_sync(_decode_files, files)
            else:
                decoded = imaging.parse_arrays(images, scale)  # type: ignore[arg-type]
        except imaging.BadImage as exc:
            raise _bad_request(exc) from None
        return decoded[:, None, :, :]

    async def _scores(self, served: ServedModel, batch: np.ndarray) -> np.ndarray:
        """Scores of a validated batch, queued on the scoring lane (may raise Shed)."""
        estimate = served.estimate_s(SCORE_UNIT, len(batch))
        return await self.lanes[SCORING_LANE].hold(estimate, self.batcher.score(served, batch))

    def score_payload(
        self, served: ServedModel, scores: np.ndarray, images: np.ndarray
    ) -> dict[str, Any]:
        """The /score answer as plain JSON-ready data; records the score metrics.

        The verdict gets each image too, so a calibration with an input-energy test applies it
        exactly as the pipeline's evaluation does.
        """
        meta, calibration = served.meta, served.calibration
        histogram, anomalies = score_metrics()
        family_version = (meta.family, meta.version)
        results = []
        for value, image in zip(scores.tolist(), images, strict=True):
            flagged = calibration.is_anomaly(value, image)
            histogram.labels(*family_version).observe(value)
            if flagged:
                anomalies.labels(*family_version).inc()
            results.append(
                {
                    "score": value,
                    "threshold": calibration.threshold,
                    "is_anomaly": flagged,
                    "percentile": calibration.percentile(value),
                    "model": meta.name,
                    "family": meta.family,
                    "version": meta.version,
                }
            )
        return {
            "model": {"name": meta.name, "version": meta.version, "family": meta.family},
            "threshold": calibration.threshold,
            "target_fpr": calibration.target_fpr,
            "results": results,
        }

    async def score_body(
        self, body: bytes, content_type: str, model: str | None
    ) -> tuple[int, Any, dict[str, str]]:
        """POST /score/image: (status, JSON payload, headers) for a raw body (the fast path)."""
        try:
            served = self._resolve("anomaly", model)
        except ServiceUnavailable as exc:
            return 503, {"error": str(exc)}, {}
        except InvalidArgument as exc:
            return 400, [{"error": str(exc)}], {}
        try:
            batch = imaging.decode_body(body, content_type, MAX_SCORE)[:, None, :, :]
        except imaging.BadImage as exc:
            return 400, [{"error": str(exc)}], {}
        try:
            scores = await self._scores(served, batch)
        except Shed as exc:
            return 503, {"error": str(exc)}, {"Retry-After": str(exc.retry_after_s)}
        headers = {MODEL_HEADER: served.meta.name, VERSION_HEADER: served.meta.version}
        return 200, self.score_payload(served, scores, batch), headers

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
        served = self._resolve("generation", model)
        _name_the_model(ctx, served)
        if label is not None and not served.conditional:
            raise InvalidArgument(f"{served.meta.family} model is unconditional: omit `label`")
        if steps is not None and not served.supports_steps:
            raise InvalidArgument(f"{served.meta.family} model has no sampling steps: omit `steps`")
        cost, budget = served.generate_cost(n, steps), self.settings.max_generate_cost
        if cost > budget:
            raise InvalidArgument(
                f"request cost n x steps = {n} x {served.effective_steps(steps)} = {cost} "
                f"exceeds the per-request budget of {budget} (GENOPS_MAX_GENERATE_COST): "
                "lower `n` or `steps`"
            )
        lane = self.lanes[GENERATION_LANE]
        try:
            images = await lane.run(
                served.estimate_s(SAMPLE_UNIT, cost),
                served.sample,
                n,
                seed,
                label,
                steps,
                current_stop(),
            )
        except Shed as exc:
            return _refusal(ctx, 503, str(exc), exc.retry_after_s)  # type: ignore[return-value]
        except Cancelled as exc:
            return _refusal(ctx, CLIENT_CLOSED, str(exc))  # type: ignore[return-value]
        except ValueError as exc:
            raise _bad_request(exc) from None
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
        """Anomaly score, calibrated threshold, verdict and percentile for each image.

        Send one of: `images`, JSON arrays (784 values or 28x28; [0, 1] or [0, 255], see
        `scale`), never resized; `pixels`, base64 of raw uint8 pixels (784 bytes per image),
        the compact form; `files`, uploaded PNG/JPEG (multipart), converted to grayscale and
        resized to 28x28. At most 256 images per request. For one image, `POST /score/image`
        with the PNG or the 784 raw bytes as the body is the fastest path.
        """
        served = self._resolve("anomaly", model)
        _name_the_model(ctx, served)
        batch = await self._read_images(images, files, scale, MAX_SCORE, pixels)
        try:
            scores = await self._scores(served, batch)
        except Shed as exc:
            return _refusal(ctx, 503, str(exc), exc.retry_after_s)  # type: ignore[return-value]
        payload = self.score_payload(served, scores, batch)
        return ScoreResponse.model_construct(
            model=model_ref(served.meta),
            threshold=payload["threshold"],
            target_fpr=payload["target_fpr"],
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
        model (default: the anomaly champion). Same answer as `/score`.
        """
        status, payload, _ = await self.score_body(Path(image).read_bytes(), "image/png", None)
        if status != 200:
            raise InvalidArgument(str(payload))
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
    ) -> ReconstructResponse:
        """Reconstruction and per-pixel squared-error map (models with a reconstruction only).

        Inputs as for `/score` (`images`, `pixels` or `files`), at most 64 images.
        """
        served = self._resolve("anomaly", model)
        _name_the_model(ctx, served)
        if not served.has_reconstruction:
            raise InvalidArgument(f"{served.meta.family} model has no reconstruction")
        batch = await self._read_images(images, files, scale, MAX_RECONSTRUCT, pixels)
        lane = self.lanes[SCORING_LANE]
        try:
            estimate = served.estimate_s(SCORE_UNIT, 2 * len(batch))
            recon = await lane.run(estimate, served.reconstruct, batch)
            scores = await self._scores(served, batch)
        except Shed as exc:
            return _refusal(ctx, 503, str(exc), exc.retry_after_s)  # type: ignore[return-value]
        errors = np.square(recon - batch)
        return ReconstructResponse(
            model=model_ref(served.meta),
            results=[
                Reconstruction(score=s, reconstruction=r[0].tolist(), error_map=e[0].tolist())
                for s, r, e in zip(scores.tolist(), recon, errors, strict=True)
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
        GENOPS_ADMIN_TOKEN; with no token configured the endpoint is disabled (403).
        """
        refused = _admin_refusal(self.settings.admin_token, ctx.request.headers)
        if refused:
            return _refusal(ctx, HTTPStatus.FORBIDDEN, refused)  # type: ignore[return-value]
        result = await anyio.to_thread.run_sync(self.reload, force)
        if result.refused:
            return _refusal(ctx, HTTPStatus.CONFLICT, result.reason)  # type: ignore[return-value]
        return result


def _admin_refusal(expected: str, headers: Any) -> str | None:
    """Why an admin request is refused, or None when it carries the configured token."""
    if not expected:
        return (
            "admin API disabled: no GENOPS_ADMIN_TOKEN is configured on the server "
            "(see docs/serving.md, 'Admin token')"
        )
    given = headers.get("x-admin-token", "")
    bearer = headers.get("authorization", "")
    if not given and bearer.lower().startswith("bearer "):
        given = bearer[7:].strip()
    if not given:
        return "missing admin token: send X-Admin-Token (or Authorization: Bearer <token>)"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return "wrong admin token"
    return None


def _name_the_model(ctx: bentoml.Context, served: ServedModel) -> None:
    """Response headers with the registered name and version that answer this request."""
    ctx.response.headers[MODEL_HEADER] = served.meta.name
    ctx.response.headers[VERSION_HEADER] = served.meta.version


def _decode_files(files: list[Path]) -> np.ndarray:
    return np.stack(
        [imaging.decode_upload(Path(f).read_bytes(), f"file {i}") for i, f in enumerate(files)]
    )


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
# admission first of all (before BentoML's tracing, metrics and access log: a refusal must be
# cheap), then, inside BentoML's, the body-size limit and the one-image fast path
install_outermost(Admission, lanes=_lanes)
GenOps.add_asgi_middleware(BodySizeLimit, max_bytes=Settings.from_env().max_body_bytes)
GenOps.add_asgi_middleware(ScoreImageRoute, service=_current)
GenOps.mount_asgi_app(web_app(_current), path="/")
