"""`genops canary`: a challenger earns its promotion on live traffic, or is rolled back (issue 22).

    1. Optionally, the challenger must first have shadow evidence (serving/shadow.py): enough
       shadowed requests, verdict agreement with the champion, a latency bound. Otherwise
       the canary is refused and the reason recorded.
    2. The champion's baseline: its median latency over `baseline_s` before the canary (the
       service measures champion requests always). A slow challenger slows the champion on
       the workers they share, so during the canary the champion's own median can hide it;
       the baseline does not. It is used while the traffic stays steady (the request rate
       during the canary at most `max_rate_growth` times the rate before): then the p50 rule
       below reads the faster of the champion's two medians.
    3. The canary starts: a registered-model tag (models.canary) every serving worker follows,
       made effective at once by one `/admin/reload` (passed on to every worker).
    4. Every `poll_s`, the service's /metrics is read and judged on this canary's own window
       (counts since the start; pipelines/monitoring/live.py). Once the challenger answered
       `judge_after` requests, an error rate above `max_error_rate`, a p99 above
       `max_p99_ms` or a p50 above `max_p50_ratio` times the champion's (and more than
       `min_p50_excess_ms` above it: medians of a millisecond or two sit inside one histogram
       bucket, where their ratio is noise) ends the canary at once: the challenger alias is
       removed (a rollback) and the reason recorded. Clients never saw those errors: the
       service answers a failed canary request again with the champion (serving/canary.py).
    5. When `window_s` has passed and the challenger answered at least `min_requests`, it
       becomes the champion. Too little traffic by `timeout_s` ends the canary undecided.

Every event, with its figures, is tagged on the challenger's version (`canary.<time>`, shown by
`genops history`) and the last figures as `live.*` tags. Budgets: params.yaml `canary:`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import httpx

from models.spec import TASKS
from pipelines.monitoring.live import (
    Samples,
    canary_figures,
    champion_baseline,
    read_metrics,
    shadow_figures,
)

log = logging.getLogger(__name__)
PROMOTED, ROLLED_BACK, UNDECIDED, REFUSED = "promoted", "rolled back", "undecided", "refused"


@dataclass(frozen=True)
class CanaryBudget:
    """params.yaml `canary:`; see the module doc for what each bound does."""

    share: float = 0.1
    window_s: float = 300.0
    min_requests: int = 200
    judge_after: int = 20
    max_error_rate: float = 0.01
    max_p99_ms: float = 250.0
    max_p50_ratio: float = 2.0  # canary p50 / champion p50 over the same window
    min_p50_excess_ms: float = 5.0  # ... and canary p50 - champion p50 above this
    baseline_s: float = 0.0  # the champion's median over this long before the canary (0: none)
    max_rate_growth: float = 1.5  # the baseline counts while the rate grew at most this much
    poll_s: float = 5.0
    timeout_s: float = 1800.0
    shadow_min_requests: int = 0  # 0: no shadow evidence needed before a canary
    shadow_min_agreement: float = 0.9
    shadow_max_p99_ms: float = 250.0

    def __post_init__(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ValueError(f"canary.share must be in (0, 1], got {self.share}")
        if not 0.0 <= self.max_error_rate < 1.0:
            raise ValueError(f"canary.max_error_rate must be in [0, 1), got {self.max_error_rate}")
        for name in ("window_s", "poll_s", "timeout_s", "max_p99_ms", "shadow_max_p99_ms",
                     "max_p50_ratio"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"canary.{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_p50_excess_ms", "baseline_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"canary.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_rate_growth < 1:
            raise ValueError(f"canary.max_rate_growth must be >= 1, got {self.max_rate_growth}")
        if self.judge_after < 1 or self.min_requests < self.judge_after:
            raise ValueError("canary needs 1 <= judge_after <= min_requests")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CanaryBudget:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown canary params {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)


@dataclass
class Outcome:
    task: str
    version: str
    champion_version: str | None
    event: str
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Service:
    """The running service the canary is judged on: its /metrics and its admin reload."""

    url: str
    token: str | None = None

    def metrics(self) -> Samples:
        return read_metrics(self.url)

    def reload(self) -> None:
        """Make a registry change effective on every worker now (else: at their next poll)."""
        if not self.token:
            log.warning("no GENOPS_ADMIN_TOKEN: the service picks the change up at its next poll")
            return
        answer = httpx.post(f"{self.url.rstrip('/')}/admin/reload", json={}, timeout=60,
                            headers={"X-Admin-Token": self.token})  # fmt: skip
        if answer.status_code != 200:
            raise RuntimeError(f"/admin/reload answered {answer.status_code}: {answer.text}")

    @classmethod
    def from_env(cls, url: str) -> Service:
        return cls(url, os.environ.get("GENOPS_ADMIN_TOKEN") or None)


def shadow_refusal(figures: dict[str, Any], budget: CanaryBudget) -> str | None:
    """Why the shadow evidence does not allow a canary yet (None: it does, or none needed)."""
    if budget.shadow_min_requests <= 0:
        return None
    n, agreement = figures["shadow_requests"], figures["shadow_verdict_agreement"]
    if n < budget.shadow_min_requests:
        return f"shadowed on {n} requests, needs {budget.shadow_min_requests}"
    if figures["shadow_errors"]:
        return f"{figures['shadow_errors']} shadow errors"
    if agreement is None or agreement < budget.shadow_min_agreement:
        return f"verdict agreement {agreement} < {budget.shadow_min_agreement}"
    if (figures["shadow_p99_ms"] or 0.0) > budget.shadow_max_p99_ms:
        return f"shadow p99 {figures['shadow_p99_ms']:.0f} ms > {budget.shadow_max_p99_ms:g} ms"
    return None


def breach(figures: dict[str, Any], budget: CanaryBudget) -> str | None:
    """Why the canary must end now (None: within budget, or too few requests to judge)."""
    n = figures["canary_requests"]
    if n < budget.judge_after:
        return None
    rate, p99 = figures["canary_error_rate"] or 0.0, figures["canary_p99_ms"]
    if rate > budget.max_error_rate:
        return (f"error rate {rate:.1%} ({figures['canary_errors']} of {n}) > budget "
                f"{budget.max_error_rate:.1%}")  # fmt: skip
    if p99 is not None and p99 > budget.max_p99_ms:
        return f"p99 {p99:.0f} ms over {n} requests > budget {budget.max_p99_ms:g} ms"
    # the champion's tail shares the workers with the canary (a slow canary lengthens it too),
    # its median much less: the canary's median against it catches a challenger many times
    # slower that still fits the absolute p99 budget. Both medians are interpolated inside
    # histogram buckets (1 ms, 2.5 ms, 5 ms, ...): two millisecond medians in one bucket can
    # differ 2x by chance, so the excess must also exceed `min_p50_excess_ms`
    p50, (base, when) = figures.get("canary_p50_ms"), champion_median(figures, budget)
    if (p50 is not None and base and p50 > budget.max_p50_ratio * base
            and p50 - base > budget.min_p50_excess_ms):  # fmt: skip
        return (f"p50 {p50:.1f} ms is {p50 / base:.1f}x the champion's {base:.1f} ms {when} > "
                f"budget {budget.max_p50_ratio:g}x (and {p50 - base:.1f} ms > "
                f"{budget.min_p50_excess_ms:g} ms above it)")  # fmt: skip
    return None


def champion_median(figures: dict[str, Any], budget: CanaryBudget) -> tuple[float | None, str]:
    """The champion's median the canary's is read against, and when it was taken: the faster
    of its median during the canary and its baseline from before (when the baseline has
    `judge_after` requests and the traffic stayed steady: the rate during the canary at most
    `max_rate_growth` times the rate before). A challenger that slows the champion on the
    workers they share is then read against the champion as it was without it."""
    during = figures.get("champion_p50_ms")
    if figures.get("champion_requests", 0) < budget.judge_after:
        during = None
    before, rate, rate_before = (figures.get(k) for k in
                                 ("baseline_p50_ms", "rate_during", "baseline_rate"))  # fmt: skip
    steady = bool(rate is not None and rate_before and rate <= budget.max_rate_growth * rate_before)
    if (before and steady and figures.get("baseline_requests", 0) >= budget.judge_after
            and (during is None or before < during)):  # fmt: skip
        return before, "before the canary"
    return during, "during it"


def run_canary(
    task_name: str,
    budget: CanaryBudget,
    service: Service,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Outcome:
    """Shadow check, canary, then promotion or rollback (module doc). Returns what happened."""
    from pipelines.registry import client as registry

    task = TASKS[task_name]
    held, current = registry.challenger(task), registry.champion(task)
    if held is None:
        raise ValueError(f"{task.registered_model} has no challenger to canary")
    version = str(held.version)
    champion_version = None if current is None else str(current.version)
    before = service.metrics()
    shadow = shadow_figures(before, task.name, version)
    refused = shadow_refusal(shadow, budget)
    if refused:
        registry.end_canary(task.name, version, REFUSED, refused, shadow)
        return Outcome(task.name, version, champion_version, REFUSED, refused, shadow)
    baseline = {}
    if budget.baseline_s > 0 and champion_version is not None:
        since = clock()
        sleep(budget.baseline_s)
        baseline = champion_baseline(service.metrics().minus(before), task.name,
                                     champion_version, clock() - since)  # fmt: skip
    registry.start_canary(task.name, budget.share, "genops canary", shadow)
    service.reload()
    started = clock()
    base = service.metrics()  # judged on this canary's own window
    while True:
        sleep(budget.poll_s)
        elapsed = clock() - started
        figures = {**canary_figures(service.metrics().minus(base), task.name, version,
                                    champion_version), **shadow, **baseline,
                   "share": budget.share, "window_s": round(elapsed, 1)}  # fmt: skip
        answered = figures["canary_requests"] + figures.get("champion_requests", 0)
        figures["rate_during"] = answered / elapsed if elapsed > 0 else None
        if progress is not None:
            progress(figures)
        if reason := breach(figures, budget):
            event, promote = ROLLED_BACK, False
        elif elapsed >= budget.window_s and figures["canary_requests"] >= budget.min_requests:
            event, promote = PROMOTED, True
            reason = (f"{figures['canary_requests']} canary requests over {elapsed:.0f} s "
                      "within budget")  # fmt: skip
        elif elapsed >= budget.timeout_s:
            event, promote = UNDECIDED, False
            reason = f"only {figures['canary_requests']} canary requests in {elapsed:.0f} s"
        else:
            continue
        registry.end_canary(task.name, version, event, reason, figures, promote=promote,
                            drop_challenger=event == ROLLED_BACK)  # fmt: skip
        service.reload()
        log.info("%s canary of v%s: %s (%s)", task.name, version, event, reason)
        return Outcome(task.name, version, champion_version, event, reason, figures, elapsed)
