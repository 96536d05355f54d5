"""Drift watch, the pure part: live served scores vs the champion's calibration distribution.

The service exports every served anomaly score as a Prometheus histogram (cumulative bucket
counts per family/version) plus a counter of flagged images (serving.runtime.score_metrics).
This module parses that exposition text, bins the calibration scores (sorted validation
normals, models.calibration) on the same bucket edges, and computes three statistics:

    PSI        population stability index over the buckets (alarm level 0.1 is the usual one)
    KS         max |F_live - F_ref| at the bucket edges: the two-sample Kolmogorov-Smirnov
               statistic as far as the buckets resolve it (thresholded, not a p-value)
    W1         Wasserstein-1 distance in log10(score), in decades (reported, not alarmed on)

plus the flagged rate against the calibrated target FPR. Everything here is numpy in, numbers
out: no HTTP, Prefect or MLflow (those live in pipelines.orchestration.drift_flow; the report
files in pipelines.monitoring.report; the command is `genops drift`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from models.calibration import Calibration
from models.config import Config

PSI_FLOOR = 1e-4  # lowest bucket share used in PSI (see psi)
OK, DRIFT, INSUFFICIENT = "ok", "drift", "insufficient data"


# ---- thresholds (params.yaml `drift:`) -------------------------------------------------------
@dataclass(frozen=True)
class DriftThresholds(Config):
    """Alarm levels; any one exceeded (with at least `min_count` live scores) means drift."""

    psi_alarm: float = 0.1
    ks_alarm: float = 0.1
    flagged_rate_alarm: float = 0.05  # |live flagged rate - target FPR| above this
    min_count: int = 500  # fewer live scores than this: "insufficient data", never a trigger

    def validate(self) -> None:
        if not (isinstance(self.min_count, int) and self.min_count >= 1):
            raise ValueError(f"drift.min_count must be an integer >= 1, got {self.min_count!r}")
        if not _finite_positive(self.psi_alarm):
            raise ValueError(f"drift.psi_alarm must be a number > 0, got {self.psi_alarm!r}")
        for name in ("ks_alarm", "flagged_rate_alarm"):
            value = getattr(self, name)
            if not (_finite_positive(value) and value < 1):
                raise ValueError(f"drift.{name} must be in (0, 1), got {value!r}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DriftThresholds:
        """From the whole params dict (its `drift:` section; missing keys take the defaults)."""
        section = params.get("drift") or {}
        if not isinstance(section, Mapping):
            raise ValueError(f"params section 'drift' must be a mapping, got {section!r}")
        return cls.from_dict(dict(section))


def _finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


# ---- binned distributions ------------------------------------------------------------------
def _cumulative(cum: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(cum, dtype=np.float64)
    if arr.ndim != 1 or arr.size < 2:
        raise ValueError(f"{what}: need a 1-D cumulative count array with >= 2 buckets")
    if not np.isfinite(arr).all() or arr[0] < 0 or np.any(np.diff(arr) < 0):
        raise ValueError(f"{what}: cumulative counts must be finite, >= 0 and non-decreasing")
    if arr[-1] <= 0:
        raise ValueError(f"{what}: no observations")
    return arr


def _pair(cum_a: Any, cum_b: Any) -> tuple[np.ndarray, np.ndarray]:
    a, b = _cumulative(cum_a, "first distribution"), _cumulative(cum_b, "second distribution")
    if a.shape != b.shape:
        raise ValueError(f"bucket counts differ in length: {a.size} vs {b.size}")
    return a, b


def cdf(cum: Any) -> np.ndarray:
    """Cumulative counts (last = total, i.e. the +Inf bucket) -> CDF at each bucket edge."""
    arr = _cumulative(cum, "distribution")
    return arr / arr[-1]


def shares(cum: Any) -> np.ndarray:
    """Cumulative counts -> share of observations in each bucket (sums to 1)."""
    return np.diff(cdf(cum), prepend=0.0)


def cumulative_counts(scores: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Prometheus-style cumulative counts of `scores` at `edges` (<= edge), plus the total."""
    values = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    upper = np.asarray(edges, dtype=np.float64)
    if upper.ndim != 1 or np.any(np.diff(upper) <= 0):
        raise ValueError("bucket edges must be a strictly increasing 1-D sequence")
    below = np.searchsorted(values, upper, side="right").astype(np.float64)
    return np.append(below, float(values.size))


def psi(cum_ref: Any, cum_live: Any, floor: float = PSI_FLOOR) -> float:
    """Population stability index sum((q - p) * ln(q / p)) over the buckets (p = reference).

    Each side's shares are floored at half an observation (0.5 / n, and at least `floor`), so
    a bucket empty on one side adds a bounded term instead of log(0), and a handful of tail
    observations cannot dominate; buckets empty on both sides add nothing. Symmetric; 0 for
    identical shares.
    """
    a, b = _pair(cum_ref, cum_live)
    p = np.maximum(shares(a), max(floor, 0.5 / a[-1]))
    q = np.maximum(shares(b), max(floor, 0.5 / b[-1]))
    return float(np.sum((q - p) * np.log(q / p)))


def ks_statistic(cum_a: Any, cum_b: Any) -> float:
    """Kolmogorov-Smirnov statistic max |F_a - F_b| over the bucket edges (in [0, 1])."""
    a, b = _pair(cum_a, cum_b)
    return float(np.max(np.abs(cdf(a) - cdf(b))))


def wasserstein_1(cum_a: Any, cum_b: Any, positions: Sequence[float]) -> float:
    """Wasserstein-1 distance of two bucketed distributions, in the units of `positions`.

    `positions` are the finite bucket edges (in any monotone coordinate, e.g. log10 score);
    each bucket's mass sits at its upper edge, the +Inf bucket's at the last finite edge.
    Then W1 = integral |F_a - F_b| = sum_i |F_a(e_i) - F_b(e_i)| (x_{i+1} - x_i).
    """
    a, b = _pair(cum_a, cum_b)
    x = np.asarray(positions, dtype=np.float64)
    if x.shape != (a.size - 1,) or np.any(np.diff(x) <= 0) or not np.isfinite(x).all():
        raise ValueError(f"need {a.size - 1} finite, strictly increasing positions, got {x.shape}")
    gaps = np.diff(x)
    return float(np.sum(np.abs(cdf(a) - cdf(b))[: gaps.size] * gaps))


# ---- the live histogram from /metrics ------------------------------------------------------
@dataclass(frozen=True)
class LiveScores:
    """One label set of the served-score histogram: cumulative counts at `edges` + total."""

    family: str
    version: str
    edges: tuple[float, ...]  # finite bucket upper bounds, ascending
    cumulative: tuple[float, ...]  # len(edges) + 1: counts <= each edge, then the +Inf total
    flagged: float = 0.0  # the anomaly counter for the same labels
    label_sets: tuple[str, ...] = ()  # every family/version seen on /metrics (for diagnosis)

    @property
    def count(self) -> int:
        return int(self.cumulative[-1]) if self.cumulative else 0

    @property
    def flagged_rate(self) -> float:
        return self.flagged / self.count if self.count else math.nan

    def since(self, earlier: LiveScores | None) -> tuple[LiveScores, bool]:
        """The scores observed after `earlier` (same labels and edges, no counter reset).

        Returns (window, True), or (self, False) when `earlier` cannot be subtracted (none,
        other labels or edges, or counts went down because the service restarted).
        """
        if (
            earlier is None
            or (earlier.family, earlier.version, earlier.edges)
            != (self.family, self.version, self.edges)
            or not self.cumulative
            or len(earlier.cumulative) != len(self.cumulative)
        ):
            return self, False
        now, then = np.asarray(self.cumulative), np.asarray(earlier.cumulative)
        if np.any(now < then) or self.flagged < earlier.flagged:
            return self, False
        window = LiveScores(
            self.family,
            self.version,
            self.edges,
            tuple(float(v) for v in now - then),
            self.flagged - earlier.flagged,
            self.label_sets,
        )
        return window, True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LiveScores:
        return cls(
            str(values["family"]),
            str(values["version"]),
            tuple(float(v) for v in values["edges"]),
            tuple(float(v) for v in values["cumulative"]),
            float(values.get("flagged", 0.0)),
            tuple(values.get("label_sets", ())),
        )


def parse_live_scores(
    text: str, histogram: str, counter: str, family: str, version: str
) -> LiveScores:
    """The `histogram`/`counter` samples labelled family/version in a Prometheus exposition.

    Missing labels give an empty LiveScores (count 0) whose `label_sets` say what was there;
    a malformed histogram (not cumulative, +Inf != count) raises ValueError.
    """
    from prometheus_client.parser import text_string_to_metric_families

    buckets: dict[tuple[str, str], dict[float, float]] = {}
    flagged = 0.0
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            labels = sample.labels
            key = (labels.get("family", ""), labels.get("version", ""))
            if metric.name == histogram and sample.name == f"{histogram}_bucket":
                buckets.setdefault(key, {})[float(labels["le"])] = float(sample.value)
            elif (
                metric.name == counter
                and sample.name in (counter, f"{counter}_total")
                and key == (family, version)
            ):
                flagged = float(sample.value)
    label_sets = tuple(f"{f} v{v}" for f, v in sorted(buckets))
    mine = buckets.get((family, version))
    if mine is None:
        any_set = next(iter(buckets.values()), {})
        edges = tuple(sorted(le for le in any_set if math.isfinite(le)))
        zeros = tuple(0.0 for _ in range(len(edges) + 1)) if any_set else ()
        return LiveScores(family, version, edges, zeros, 0.0, label_sets)
    if math.inf not in mine:
        raise ValueError(f"{histogram}{{family={family!r},version={version!r}}} has no +Inf bucket")
    edges = tuple(sorted(le for le in mine if math.isfinite(le)))
    cumulative = tuple(mine[le] for le in (*edges, math.inf))
    if np.any(np.diff(cumulative) < 0):
        raise ValueError(f"{histogram} buckets for {family} v{version} are not cumulative")
    return LiveScores(family, version, edges, cumulative, flagged, label_sets)


# ---- the assessment -------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftReport:
    """What one drift check found; `status` is OK, DRIFT or INSUFFICIENT."""

    status: str
    family: str
    version: str
    live_count: int
    reference_count: int
    psi: float
    ks: float
    wasserstein_log10: float
    flagged_rate: float
    target_fpr: float
    threshold: float  # the calibrated score threshold the service flags above
    thresholds: DriftThresholds
    alarms: tuple[str, ...]  # the statistics past their alarm level (only when judged)
    reason: str
    edges: tuple[float, ...] = ()
    live_shares: tuple[float, ...] = ()
    reference_shares: tuple[float, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def drifted(self) -> bool:
        return self.status == DRIFT

    def metrics(self) -> dict[str, float]:
        """The numbers worth a time series (MLflow metrics, the history file)."""
        return {
            "drift_psi": self.psi,
            "drift_ks": self.ks,
            "drift_wasserstein_log10": self.wasserstein_log10,
            "drift_flagged_rate": self.flagged_rate,
            "drift_live_count": float(self.live_count),
            "drift_alarm": float(self.drifted),
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def past_alarm(
    values: Mapping[str, float], target_fpr: float, thresholds: DriftThresholds
) -> dict[str, str]:
    """The statistics past their alarm level, each with a phrase saying by how much."""
    t, fired = thresholds, {}
    if values["psi"] > t.psi_alarm:
        fired["psi"] = f"PSI {values['psi']:.3g} > {t.psi_alarm:g}"
    if values["ks"] > t.ks_alarm:
        fired["ks"] = f"KS {values['ks']:.3g} > {t.ks_alarm:g}"
    if abs(values["flagged_rate"] - target_fpr) > t.flagged_rate_alarm:
        fired["flagged_rate"] = (
            f"flagged rate {values['flagged_rate']:.3g} is more than "
            f"{t.flagged_rate_alarm:g} from the target {target_fpr:g}"
        )
    return fired


def assess(live: LiveScores, calibration: Calibration, thresholds: DriftThresholds) -> DriftReport:
    """Compare live scores with the calibration scores on the live histogram's buckets."""
    nan = math.nan
    ref_n = len(calibration.val_scores)
    base = {
        "family": live.family,
        "version": live.version,
        "live_count": live.count,
        "reference_count": ref_n,
        "target_fpr": calibration.target_fpr,
        "threshold": calibration.threshold,
        "thresholds": thresholds,
        "edges": live.edges,
    }
    if live.count == 0 or not live.edges:
        seen = ", ".join(live.label_sets) or "none"
        reason = (
            f"no live scores for {live.family} v{live.version} on /metrics "
            f"(histogram label sets present: {seen})"
        )
        return DriftReport(
            INSUFFICIENT,
            psi=nan,
            ks=nan,
            wasserstein_log10=nan,
            flagged_rate=nan,
            alarms=(),
            reason=reason,
            **base,
        )
    ref_cum = cumulative_counts(calibration.val_scores, live.edges)
    live_cum = np.asarray(live.cumulative)
    values = {
        "psi": psi(ref_cum, live_cum),
        "ks": ks_statistic(ref_cum, live_cum),
        "wasserstein_log10": wasserstein_1(ref_cum, live_cum, np.log10(live.edges)),
        "flagged_rate": live.flagged_rate,
    }
    fired = past_alarm(values, calibration.target_fpr, thresholds)
    if live.count < thresholds.min_count:
        status, alarms = INSUFFICIENT, ()
        reason = f"{live.count} live scores < min_count {thresholds.min_count}: not judged"
    elif fired:
        status, alarms = DRIFT, tuple(fired)
        reason = "past alarm level: " + "; ".join(fired.values())
    else:
        status, alarms = OK, ()
        reason = "every statistic within its alarm level"
    ref_shares = shares(ref_cum)
    warnings = ()
    if ref_shares.max() > 0.5:
        warnings = (
            f"{ref_shares.max():.0%} of the calibration scores fall in one histogram bucket: "
            "the service's buckets barely resolve this model's scores",
        )
    return DriftReport(
        status,
        **base,
        **values,
        alarms=alarms,
        reason=reason,
        live_shares=tuple(float(v) for v in shares(live_cum)),
        reference_shares=tuple(float(v) for v in ref_shares),
        warnings=warnings,
    )


# ---- the report ---------------------------------------------------------------------------
def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def report_markdown(
    report: DriftReport,
    *,
    champion: str,
    service_url: str,
    window: str,
    retrain: str,
    plot: str | None = None,
) -> str:
    """The drift report as Markdown (the Prefect artifact and reports/drift/drift.md)."""
    t = report.thresholds
    fired = set(report.alarms)
    rows = [
        ("PSI (histogram buckets)", report.psi, f"> {t.psi_alarm:g}", "psi"),
        ("KS statistic (at bucket edges)", report.ks, f"> {t.ks_alarm:g}", "ks"),
        (
            "flagged rate",
            report.flagged_rate,
            f"\\|rate - {report.target_fpr:g}\\| > {t.flagged_rate_alarm:g}",
            "flagged_rate",
        ),
        ("Wasserstein-1, log10(score) decades", report.wasserstein_log10, "reported only", ""),
    ]
    lines = [
        f"# Drift watch: {report.status.upper()}",
        "",
        f"- champion: {champion} ({report.family} v{report.version}), calibrated threshold "
        f"{report.threshold:.4g} at target FPR {report.target_fpr:g}",
        f"- live scores: {report.live_count} from {service_url}/metrics ({window}); "
        f"reference: {report.reference_count} calibration (validation-normal) scores",
        f"- verdict: {report.reason}",
        f"- retraining: {retrain}",
        *(f"- warning: {w}" for w in report.warnings),
        "",
        "| statistic | value | alarm when | fired |",
        "|---|---|---|---|",
        *(
            f"| {name} | {_fmt(value)} | {level} | {'**yes**' if key in fired else 'no'} |"
            for name, value, level, key in rows
        ),
    ]
    if report.edges and report.live_shares:
        lines += ["", "| score bucket (upper edge) | calibration share | live share |"]
        lines.append("|---|---|---|")
        for le, ref, live in zip(
            (*report.edges, math.inf), report.reference_shares, report.live_shares, strict=True
        ):
            if ref > 0 or live > 0:
                lines.append(f"| <= {le:g} | {ref:.3f} | {live:.3f} |")
    if plot:
        lines += ["", f"![calibration vs live score distribution]({plot})"]
    return "\n".join(lines) + "\n"
