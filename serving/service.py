"""The genops BentoML service: generate digits, score anomalies, reconstruct, describe, reload.

Serve it with `bentoml serve serving.service:GenOps` (models from GENOPS_MODEL_SOURCE, see
serving.sources) or build a Bento with `bentoml build -f serving/bentofile.yaml .`.
Endpoints and bounds are documented in docs/serving.md. Thin by design: the scoring rule,
weight loading and calibration live in `models/`, model lookup in serving.catalog, pixel
handling in serving.imaging, batching in serving.batching.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio.to_thread
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException, InvalidArgument, ServiceUnavailable
from pydantic import Field

from serving import imaging
from serving.batching import ScoreBatcher
from serving.bundle import ServedModel, model_executor
from serving.catalog import CHAMPION, Catalog, UnknownModel, empty_catalog, load_catalog
from serving.http import BodySizeLimit, metadata_app, refuse_file_urls
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


@bentoml.service(
    name="genops",
    traffic={"timeout": 60, "max_concurrency": 128},
    resources={"cpu": "2"},
    workers=1,
)
class GenOps:
    """Serves the generation and anomaly champions plus the latest model of each family."""

    def __init__(self) -> None:
        setup_logging()
        self.settings = Settings.from_env()
        self.executor = model_executor(self.settings.torch_threads)
        self.batcher = ScoreBatcher(self.executor, MAX_SCORE, enabled=self.settings.batching)
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
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _on_model_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

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
            return kept(f"cannot read model source {self.source.spec}: {exc}")
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
            return kept(f"new models not servable, kept the current ones: {dict(new.errors)}")
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
        return {
            **self.catalog.describe(),
            "limits": limits | {"max_body_bytes": self.settings.max_body_bytes},
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
        self, images: list | None, files: list[Path], scale: str, limit: int
    ) -> np.ndarray:
        """The request's images as (N, 1, 28, 28) float32 in [0, 1], or a 400."""
        if images and files:
            raise InvalidArgument("send either JSON `images` or uploaded `files`, not both")
        count = len(images or files)
        if count == 0:
            raise InvalidArgument("no images given: send `images` (JSON arrays) or `files`")
        if count > limit:
            raise InvalidArgument(f"too many images: {count} > {limit} per request")
        try:
            if files:
                decoded = await anyio.to_thread.run_sync(_decode_files, files)
            else:
                decoded = imaging.parse_arrays(images, scale)  # type: ignore[arg-type]
        except imaging.BadImage as exc:
            raise _bad_request(exc) from None
        return decoded[:, None, :, :]

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
        try:
            images = await self._on_model_thread(served.sample, n, seed, label, steps)
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
    ) -> ScoreResponse:
        """Anomaly score, calibrated threshold, verdict and percentile for each image.

        `images`: JSON arrays (784 values or 28x28; [0, 1] or [0, 255], see `scale`) - never
        resized. `files`: uploaded PNG/JPEG (multipart), converted to grayscale and resized
        to 28x28. At most 256 images per request.
        """
        served = self._resolve("anomaly", model)
        _name_the_model(ctx, served)
        batch = await self._read_images(images, files, scale, MAX_SCORE)
        scores = await self.batcher.score(served, batch)
        meta, calibration = served.meta, served.calibration
        histogram, anomalies = score_metrics()
        results = []
        for value in scores.tolist():
            flagged = calibration.is_anomaly(value)
            histogram.labels(meta.family, meta.version).observe(value)
            if flagged:
                anomalies.labels(meta.family, meta.version).inc()
            results.append(
                ImageScore(
                    score=value,
                    threshold=calibration.threshold,
                    is_anomaly=flagged,
                    percentile=calibration.percentile(value),
                    model=meta.name,
                    family=meta.family,
                    version=meta.version,
                )
            )
        return ScoreResponse(
            model=model_ref(meta),
            threshold=calibration.threshold,
            target_fpr=calibration.target_fpr,
            results=results,
        )

    @bentoml.api(route="/reconstruct")
    async def reconstruct(
        self,
        ctx: bentoml.Context,
        images: list[ImageArray] | None = None,
        files: list[Path] = NO_FILES,
        model: ModelName | None = None,
        scale: PixelScale = "auto",
    ) -> ReconstructResponse:
        """Reconstruction and per-pixel squared-error map (models with a reconstruction only)."""
        served = self._resolve("anomaly", model)
        _name_the_model(ctx, served)
        if not served.has_reconstruction:
            raise InvalidArgument(f"{served.meta.family} model has no reconstruction")
        batch = await self._read_images(images, files, scale, MAX_RECONSTRUCT)
        recon = await self._on_model_thread(served.reconstruct, batch)
        scores = await self.batcher.score(served, batch)
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
        """Re-read the model source and swap models if it changed (`force`: reload anyway)."""
        expected = self.settings.admin_token
        given = ctx.request.headers.get("x-admin-token", "")
        if expected and not hmac.compare_digest(given.encode(), expected.encode()):
            raise BentoMLException(
                "missing or wrong X-Admin-Token", error_code=HTTPStatus.FORBIDDEN
            )
        result = await anyio.to_thread.run_sync(self.reload, force)
        if result.refused:
            raise BentoMLException(result.reason, error_code=HTTPStatus.CONFLICT)
        return result


def _name_the_model(ctx: bentoml.Context, served: ServedModel) -> None:
    """Response headers with the registered name and version that answer this request."""
    ctx.response.headers[MODEL_HEADER] = served.meta.name
    ctx.response.headers[VERSION_HEADER] = served.meta.version


def _decode_files(files: list[Path]) -> np.ndarray:
    return np.stack(
        [imaging.decode_upload(Path(f).read_bytes(), f"file {i}") for i, f in enumerate(files)]
    )


refuse_file_urls()
GenOps.add_asgi_middleware(BodySizeLimit, max_bytes=Settings.from_env().max_body_bytes)
GenOps.mount_asgi_app(metadata_app(lambda: bentoml.get_current_service().describe()), path="/")
