"""Live evidence from a running service's /metrics: what a challenger showed on real traffic.

The service counts per version (serving/shadow.py, serving/canary.py); its /metrics sums every
worker. This module reads one exposition into a flat table of samples, subtracts an earlier
read (so a canary is judged on its own window, not on what the server saw before), and turns
the result into figures: requests, errors, latency quantiles from the histogram buckets,
agreement with the champion. `genops canary` (pipelines/registry/canary.py) decides on them and
`genops champions --url` shows them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


@dataclass(frozen=True)
class Samples:
    """One /metrics read: sample (name, labels) -> value."""

    values: Mapping[Key, float]

    @classmethod
    def parse(cls, text: str) -> Samples:
        from prometheus_client.parser import text_string_to_metric_families

        values: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                values[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return cls(values)

    def minus(self, earlier: Samples) -> Samples:
        """Counters and histograms since `earlier` (gauges are kept as they are now)."""
        return Samples({k: v - earlier.values.get(k, 0.0) if _cumulative(k[0]) else v
                        for k, v in self.values.items()})  # fmt: skip

    def matching(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        found = []
        for (sample, pairs), value in self.values.items():
            have = dict(pairs)
            if sample == name and all(have.get(k) == v for k, v in labels.items()):
                found.append((have, value))
        return found

    def total(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.matching(name, **labels))

    def quantiles(self, name: str, qs: tuple[float, ...], **labels: str) -> list[float | None]:
        """Quantiles of histogram `name` over the matching series (summed), interpolated
        inside a bucket as Prometheus' histogram_quantile does; None when it is empty. A
        quantile in the +Inf bucket is reported as +inf (it is beyond every edge)."""
        buckets: dict[float, float] = {}
        for have, value in self.matching(f"{name}_bucket", **labels):
            le = float(have["le"])
            buckets[le] = buckets.get(le, 0.0) + value
        edges = sorted(buckets)
        if not edges or buckets[edges[-1]] <= 0:
            return [None for _ in qs]
        total, out = buckets[edges[-1]], []
        for q in qs:
            rank, below, lower = q * total, 0.0, 0.0
            for edge in edges:
                if buckets[edge] >= rank:
                    if math.isinf(edge):
                        out.append(math.inf)
                    else:
                        inside = buckets[edge] - below
                        share = (rank - below) / inside if inside > 0 else 1.0
                        out.append(lower + (edge - lower) * share)
                    break
                below, lower = buckets[edge], edge
        return out


def _cumulative(sample: str) -> bool:
    return sample.endswith(("_total", "_bucket", "_count", "_sum"))


def read_metrics(url: str, timeout_s: float = 10.0) -> Samples:
    """GET <url>/metrics (raises httpx errors when the service cannot be reached)."""
    response = httpx.get(f"{url.rstrip('/')}/metrics", timeout=timeout_s)
    response.raise_for_status()
    return Samples.parse(response.text)


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1e3


def canary_figures(s: Samples, task: str, version: str, champion: str | None) -> dict[str, Any]:
    """A canary's figures: the challenger's answers (ok + fallbacks = its requests), its
    latency quantiles, and the champion's beside them over the same window."""
    count = "genops_canary_requests_total"
    latency = "genops_canary_latency_seconds"
    ok = s.total(count, task=task, version=version, role="canary", outcome="ok")
    failed = s.total(count, task=task, version=version, role="canary", outcome="fallback")
    p50, p99 = s.quantiles(latency, (0.5, 0.99), task=task, version=version, role="canary")
    figures = {
        "canary_requests": int(ok + failed),
        "canary_errors": int(failed),
        "canary_error_rate": failed / (ok + failed) if ok + failed else None,
        "canary_p50_ms": _ms(p50),
        "canary_p99_ms": _ms(p99),
    }
    if champion is not None:
        served = s.total(count, task=task, version=champion, role="champion", outcome="ok")
        c50, c99 = s.quantiles(latency, (0.5, 0.99), task=task, version=champion, role="champion")
        figures |= {"champion_requests": int(served), "champion_p50_ms": _ms(c50),
                    "champion_p99_ms": _ms(c99)}  # fmt: skip
    return figures


def champion_baseline(s: Samples, task: str, champion: str, seconds: float) -> dict[str, Any]:
    """The champion's figures over `seconds` before a canary (the service measures champion
    requests always): its requests, their rate and its median latency, the canary's baseline."""
    count, latency = "genops_canary_requests_total", "genops_canary_latency_seconds"
    served = s.total(count, task=task, version=champion, role="champion", outcome="ok")
    (p50,) = s.quantiles(latency, (0.5,), task=task, version=champion, role="champion")
    return {
        "baseline_s": round(seconds, 1),
        "baseline_requests": int(served),
        "baseline_rate": served / seconds if seconds > 0 else None,
        "baseline_p50_ms": _ms(p50),
    }


def shadow_figures(s: Samples, task: str, version: str) -> dict[str, Any]:
    """What shadowing showed of challenger `version` (serving/shadow.py's metrics)."""
    labels = {"task": task, "version": version}
    ok = s.total("genops_shadow_requests_total", **labels, outcome="ok")
    errors = s.total("genops_shadow_requests_total", **labels, outcome="error")
    dropped = s.total("genops_shadow_requests_total", **labels, outcome="dropped")
    agree = s.total("genops_shadow_images_total", **labels, agreement="agree")
    disagree = s.total("genops_shadow_images_total", **labels, agreement="disagree")
    flagged = s.total("genops_shadow_flagged_total", **labels)
    images = agree + disagree
    p50, p99 = s.quantiles("genops_shadow_latency_seconds", (0.5, 0.99), **labels)
    ranks = [v for _, v in s.matching("genops_shadow_rank_agreement", **labels)]
    return {
        "shadow_requests": int(ok + errors),
        "shadow_errors": int(errors),
        "shadow_dropped": int(dropped),
        "shadow_images": int(images),
        "shadow_verdict_agreement": agree / images if images else None,
        "shadow_flagged_rate": flagged / images if images else None,
        "shadow_rank_agreement": sum(ranks) / len(ranks) if ranks else None,  # mean of workers
        "shadow_p50_ms": _ms(p50),
        "shadow_p99_ms": _ms(p99),
    }
