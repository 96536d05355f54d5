"""Adaptive ("natural") batching of /score requests in front of the model.

While one batch runs on the model, new requests queue up; when it finishes, everything queued
for the same model (up to `max_images`) goes as the next batch. An idle server therefore
scores a lone request at once (no batching window to wait out), and a busy one forms batches
as large as the load makes them. Requests are validated *before* they join a batch, so one
bad request never fails its batch-mates.

Why not `@bentoml.api(batchable=True)`: in BentoML 1.4 that batches only HTTP calls to the
batchable endpoint itself, so per-request validation and the response model would need a
second in-process HTTP hop (JSON-encoding every pixel again), and a request rejected inside a
batch fails the whole batch. Scores do not depend on batch composition (the model contract),
which the tests check.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from serving.bundle import ServedModel

log = logging.getLogger("genops.serving")


@dataclass
class _Job:
    model: ServedModel
    images: np.ndarray  # (k, 1, 28, 28) float32
    future: asyncio.Future = field(repr=False)


class ScoreBatcher:
    """Queue score requests per network and run them as batches on a worker thread."""

    def __init__(self, executor: Executor, max_images: int = 256, enabled: bool = True) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.executor = executor  # see serving.bundle.model_executor
        self.max_images = max_images
        self.enabled = enabled
        self._queue: deque[_Job] = deque()
        self._worker: asyncio.Task | None = None
        self.batches = 0  # counters for tests and the benchmark
        self.images = 0

    async def score(self, model: ServedModel, images: np.ndarray) -> np.ndarray:
        """Scores (k,) of `images` (k, 1, 28, 28), possibly computed within a larger batch."""
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(self.executor, model.score, images)
        future = loop.create_future()
        self._queue.append(_Job(model, images, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    def _take_batch(self) -> list[_Job]:
        """The oldest job and every later job for the same model that still fits."""
        first = self._queue.popleft()
        batch, total, kept = [first], len(first.images), deque()
        while self._queue:
            job = self._queue.popleft()
            if job.model.model is first.model.model and total + len(job.images) <= self.max_images:
                batch.append(job)
                total += len(job.images)
            else:
                kept.append(job)
        self._queue.extendleft(reversed(kept))
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = [job for job in self._take_batch() if not job.future.done()]
            if not batch:
                continue
            try:
                images = np.concatenate([job.images for job in batch])
                scores = await asyncio.get_running_loop().run_in_executor(
                    self.executor, batch[0].model.score, images
                )
            except Exception as exc:
                log.exception("scoring a batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(images)
            start = 0
            for job in batch:
                end = start + len(job.images)
                if not job.future.done():
                    job.future.set_result(scores[start:end])
                start = end
