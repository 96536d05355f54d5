"""Shadow: a share of the champions' `/score` and `/generate` traffic also runs on the task's
challenger, outside the client's response path, and the two are compared on the same live
requests (issue 22).

When a request answered by a champion is done, `Shadow.offer` (scoring) or
`Shadow.offer_samples` (generation: the same n, seed, label and steps) draws it with
probability `GENOPS_SHADOW_SHARE` (0 = off, the default). A drawn request runs on the challenger
in a lane of its own: one thread at a low CPU priority (`GENOPS_SHADOW_NICE`), at most
`GENOPS_SHADOW_CAPACITY` requests in flight. Shadow work is dropped first: when its lane is
full, when the champion's lane holds more than `SLACK_S` of work per thread (the champion
is queuing, not just running), or when shadow work took `GENOPS_SHADOW_MAX_BUSY` (2 %) of the
last second or so (`DutyCycle`: it shares the worker's CPU and interpreter lock), the request
is counted as dropped and nothing runs. The client's answer is never delayed by the
challenger, and a challenger that fails (an exception, non-finite scores) is counted, never
seen by the client.

Live evidence per challenger version (this worker's; /metrics sums workers):
    requests, images, errors, dropped, latency p50/p99 of the challenger's scoring,
    score rank agreement with the champion (Spearman, over the last `PAIRS` image pairs),
    verdict agreement, the challenger's flagged rate beside its calibrated target FPR and the
    champion's flagged rate on the same images. For generation: requests, errors, latency,
    and the share of the challenger's and of the champion's samples that the anomaly
    champion flags (a live plausibility check; the judge's class histogram and FD need the
    digit classifier, which the service does not ship: they stay in the offline gate).
`/metadata` shows it under `shadow`; /metrics carries the counters and the latency histogram
with `task` and `version` labels, and the rank agreement as a gauge.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np

from serving.bundle import ServedModel

log = logging.getLogger("genops.serving")

PAIRS = 5000  # image pairs kept for the rank agreement (per challenger version, per worker)
LATENCIES = 2000  # shadow latencies kept for p50/p99
# the champion's lane counts as busy above this much admitted work per thread: a request or
# two in flight is normal traffic, a queue is not (the p99 overhead: benchmarks/bench_overload.py)
SLACK_S = 0.025
DUTY_TAU_S = 1.0  # the duty cycle's memory (exponential, seconds)


class DutyCycle:
    """The share of recent wall time the shadow lane spent working, exponentially weighted.

    Shadow work shares the worker's CPU and, for its Python parts, the interpreter lock with
    the champion's event loop: however low its priority, a worker's shadow work delays the
    champion's requests in proportion to how much of it runs. Bounding its share of time
    bounds that delay (benchmarks/bench_overload.py --shadow-share measures it).
    """

    def __init__(self, tau_s: float = DUTY_TAU_S) -> None:
        self.tau_s, self.busy_s, self.at = tau_s, 0.0, time.monotonic()

    def _decay(self) -> None:
        now = time.monotonic()
        self.busy_s *= math.exp(-(now - self.at) / self.tau_s)
        self.at = now

    def add(self, seconds: float) -> None:
        self._decay()
        self.busy_s += seconds

    def share(self) -> float:
        self._decay()
        return self.busy_s / self.tau_s


@cache
def shadow_metrics() -> dict[str, Any]:
    """Prometheus metrics, created lazily (BentoML sets the multiprocess dir first)."""
    import prometheus_client as prom

    labels = ["task", "version"]
    return {
        "requests": prom.Counter(
            "genops_shadow_requests", "Requests offered to the challenger, by outcome",
            [*labels, "outcome"],
        ),
        "images": prom.Counter(
            "genops_shadow_images", "Shadow-scored images, by verdict agreement with the champion",
            [*labels, "agreement"],
        ),
        "flagged": prom.Counter(
            "genops_shadow_flagged", "Shadow-scored images the challenger flagged", labels
        ),
        "latency": prom.Histogram(
            "genops_shadow_latency_seconds", "The challenger's scoring time per shadow request",
            labels, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        ),
        "rank": prom.Gauge(
            "genops_shadow_rank_agreement",
            "Spearman correlation of challenger and champion scores on shadowed images",
            labels, multiprocess_mode="liveall",
        ),
    }  # fmt: skip


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (scipy's rankdata, without importing
    scipy on the event loop: that import alone stalled a worker for about a second)."""
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None below 3 pairs or constant."""
    if len(a) < 3:
        return None
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class Evidence:
    """What one challenger version showed on this worker's live traffic."""

    task: str
    name: str
    version: str
    family: str
    target_fpr: float
    requests: int = 0  # run on the challenger (ok or error)
    images: int = 0
    errors: int = 0
    dropped: int = 0  # drawn, but shed because the shadow lane or the champion was busy
    agree: int = 0  # images whose verdicts agree
    flagged: int = 0  # images the challenger flagged
    champion_flagged: int = 0  # the same images, flagged by the champion
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCIES))
    pairs: deque = field(default_factory=lambda: deque(maxlen=PAIRS))

    def describe(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies, dtype=np.float64) * 1e3
        pairs = np.asarray(self.pairs, dtype=np.float64).reshape(-1, 2)
        share = (lambda n: n / self.images) if self.images else (lambda n: None)
        return {
            "task": self.task,
            "model": self.name,
            "version": self.version,
            "family": self.family,
            "requests": self.requests,
            "images": self.images,
            "errors": self.errors,
            "dropped": self.dropped,
            "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_ms_p99": float(np.percentile(lat, 99)) if lat.size else None,
            "rank_agreement": spearman(pairs[:, 0], pairs[:, 1]),
            "verdict_agreement": share(self.agree) if self.task != "generation" else None,
            "flagged_rate": share(self.flagged),
            "champion_flagged_rate": share(self.champion_flagged),
            "target_fpr": self.target_fpr,
        }


class Shadow:
    """Offers finished champion requests to the task's challenger (see the module doc)."""

    def __init__(
        self,
        share: float,
        capacity: int,
        busy: Any,
        nice: int = 15,
        seed: int | None = None,
        max_busy: float = 0.02,
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"GENOPS_SHADOW_SHARE must be in [0, 1], got {share}")
        if capacity < 1:
            raise ValueError(f"GENOPS_SHADOW_CAPACITY must be >= 1, got {capacity}")
        if not 0.0 < max_busy <= 1.0:
            raise ValueError(f"GENOPS_SHADOW_MAX_BUSY must be in (0, 1], got {max_busy}")
        self.share, self.capacity, self.nice = share, capacity, nice
        self.max_busy, self.duty = max_busy, DutyCycle()
        self.busy = busy  # the champion's lane: shadow work waits for nothing it queues
        self.in_flight = 0  # event-loop thread only
        self.random = np.random.default_rng(seed)  # not the random module: hypothesis flags it
        self.evidence: dict[tuple[str, str, str], Evidence] = {}
        self._tasks: set[asyncio.Task] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            from serving.admission import _thread_setup

            self._executor = ThreadPoolExecutor(
                1, thread_name_prefix="genops-shadow", initializer=_thread_setup,
                initargs=(1, self.nice),
            )  # fmt: skip
        return self._executor

    def _of(self, task: str, challenger: ServedModel) -> Evidence:
        meta = challenger.meta
        key = (task, meta.name, meta.version)
        if key not in self.evidence:
            self.evidence[key] = Evidence(
                task, meta.name, meta.version, meta.family, challenger.calibration.target_fpr
            )
        return self.evidence[key]

    def _admit(self, task: str, challenger: ServedModel | None, busy: Any) -> Evidence | str:
        """The evidence record to run under, or why nothing runs ("off", "skipped",
        "dropped")."""
        if challenger is None or self.share <= 0.0:
            return "off"
        if self.random.random() >= self.share:
            return "skipped"
        evidence = self._of(task, challenger)
        if (
            self.in_flight >= self.capacity
            or busy.backlog_s > SLACK_S * busy.workers
            or self.duty.share() >= self.max_busy
        ):
            evidence.dropped += 1
            shadow_metrics()["requests"].labels(task, evidence.version, "dropped").inc()
            return "dropped"
        return evidence

    def _start(
        self, evidence: Evidence, work: Callable[[], Any], record: Callable[[Any], None]
    ) -> str:
        self.in_flight += 1
        job = asyncio.get_running_loop().create_task(self._run(evidence, work, record))
        self._tasks.add(job)
        job.add_done_callback(self._tasks.discard)
        return "sent"

    def offer(
        self,
        task: str,
        challenger: ServedModel | None,
        images: np.ndarray,
        champion_scores: np.ndarray,
        champion_flags: np.ndarray,
    ) -> str:
        """Maybe score `images` on the challenger in the background and compare its calibrated
        scores and verdicts with the champion's; returns what happened: "off" (no share or no
        challenger), "skipped" (not drawn), "dropped" or "sent"."""
        admitted = self._admit(task, challenger, self.busy)
        if isinstance(admitted, str):
            return admitted

        def work() -> np.ndarray:
            scores = challenger.calibration.statistic(challenger.score(images), images)
            if not np.isfinite(scores).all():  # what the service answers as ModelFailed
                raise ValueError("non-finite scores")
            return scores

        def record(scores: np.ndarray) -> None:
            evidence, metrics = admitted, shadow_metrics()
            labels = (evidence.task, evidence.version)
            flags = scores > 1.0
            agree = int(np.sum(flags == champion_flags))
            evidence.agree += agree
            self._count(evidence, flags, champion_flags)
            evidence.pairs.extend(zip(champion_scores.tolist(), scores.tolist(), strict=True))
            metrics["images"].labels(*labels, "agree").inc(agree)
            metrics["images"].labels(*labels, "disagree").inc(len(flags) - agree)
            if evidence.requests % 25 == 1:  # ranking 5,000 pairs takes ~1 ms of the event loop
                rank = spearman(*np.asarray(evidence.pairs, dtype=np.float64).reshape(-1, 2).T)
                if rank is not None:
                    metrics["rank"].labels(*labels).set(rank)

        return self._start(admitted, work, record)

    def offer_samples(
        self,
        challenger: ServedModel | None,
        busy: Any,
        sample: Callable[[ServedModel], np.ndarray],
        champion_images: np.ndarray,
        judge: ServedModel | None,
    ) -> str:
        """Maybe run a finished /generate request on the generation challenger (`sample`, the
        same n, seed, label and steps) in the background. With `judge` (the anomaly
        champion), both the champion's and the challenger's samples are scored: the share of
        each that the anomaly champion flags is their live plausibility (the service has no
        digit classifier of its own: the judge's class histogram and FD stay offline)."""
        admitted = self._admit("generation", challenger, busy)
        if isinstance(admitted, str):
            return admitted

        def flags(images: np.ndarray) -> np.ndarray:
            return judge.calibration.statistic(judge.score(images), images) > 1.0

        def work() -> tuple[np.ndarray, np.ndarray] | None:
            images = sample(challenger)
            if not np.isfinite(images).all():
                raise ValueError("non-finite samples")
            return None if judge is None else (flags(images), flags(champion_images))

        def record(result: tuple[np.ndarray, np.ndarray] | None) -> None:
            if result is not None:
                self._count(admitted, *result)

        return self._start(admitted, work, record)

    @staticmethod
    def _count(evidence: Evidence, flags: np.ndarray, champion_flags: np.ndarray) -> None:
        evidence.images += len(flags)
        evidence.flagged += int(flags.sum())
        evidence.champion_flagged += int(np.sum(champion_flags))
        shadow_metrics()["flagged"].labels(evidence.task, evidence.version).inc(int(flags.sum()))

    async def _run(
        self, evidence: Evidence, work: Callable[[], Any], record: Callable[[Any], None]
    ) -> None:
        metrics, labels = shadow_metrics(), (evidence.task, evidence.version)
        started = time.perf_counter()

        spent: list[float] = []  # the work's own time, without waiting for the thread

        def timed() -> Any:
            began = time.perf_counter()
            try:
                return work()
            finally:
                spent.append(time.perf_counter() - began)

        try:
            result = await asyncio.get_running_loop().run_in_executor(self._pool(), timed)
        except Exception as exc:  # the client never sees it; the evidence does
            evidence.requests += 1
            evidence.errors += 1
            metrics["requests"].labels(*labels, "error").inc()
            log.warning("shadow: %s v%s failed: %s", evidence.name, evidence.version, exc)
            return
        finally:
            self.in_flight -= 1
            self.duty.add(sum(spent))  # on the event loop, like every other use of the duty
        seconds = time.perf_counter() - started
        evidence.requests += 1
        evidence.latencies.append(seconds)
        metrics["requests"].labels(*labels, "ok").inc()
        metrics["latency"].labels(*labels).observe(seconds)
        record(result)

    async def drain(self) -> None:
        """Wait for the shadow work in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "capacity": self.capacity,
            "max_busy": self.max_busy,
            "busy": round(self.duty.share(), 4),
            "in_flight": self.in_flight,
            "challengers": [e.describe() for e in self.evidence.values()],
        }

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
