"""The metric table: every metric a person reads, declared once.

A `MetricSpec` names a metric as the evaluation writes it (its key in `metrics/<family>.json`)
and says how it is labelled and formatted, which way is better, what it measures, where it is
defined and where it is shown. The leaderboard (pipelines.evaluation.leaderboard), the promotion
report (pipelines.registry.reports), the model cards (pipelines.registry.cards) and the gate
iterate this table instead of retyping names; tests/pipelines/evaluation/test_metric_table.py
checks that the evaluation produces every metric listed here wherever the table says it exists.

The tasks' deciding metrics and their directions have their home on the ground floor
(`models.spec.TASKS`, which serving and the gate read): their rows are built from it, so a
task's metric and direction are written once.

This module imports nothing heavy (models.spec only): a stage that renders reports stays narrow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from models.spec import ANOMALY, GENERATION, TASKS

# what a metric measures, besides the two tasks (models.spec)
LIKELIHOOD, RECONSTRUCTION, COST, TRAINING = "likelihood", "reconstruction", "cost", "training"


class Direction(StrEnum):
    HIGHER = "higher"
    LOWER = "lower"
    NEITHER = "neither"  # context (a reference, a count, a rate to compare with its target)


class Place(StrEnum):
    """Where a metric is shown."""

    GENERATION_TABLE = "leaderboard: generation"
    ANOMALY_TABLE = "leaderboard: anomaly detection"
    COMPARISON = "leaderboard: comparison table"
    REPORT = "promotion report"
    CARD = "model card"
    GATE = "gate"  # decides a task's champion (models.spec.TASKS)


class Source(StrEnum):
    """Who writes the metric into `metrics/<family>.json`."""

    EVALUATION = "evaluation"  # pipelines.evaluation.evaluator.evaluate_model
    EVALUATE_STAGE = "evaluate stage"  # pipelines.stages.evaluate: training record, derived rates


class Requires(StrEnum):
    """Where a metric is defined: a `models.base.Capabilities` flag, or failure monitors."""

    CONDITIONAL = "conditional"
    LIKELIHOOD = "likelihood"
    RECONSTRUCTION = "reconstruction"
    FAILURE_MONITORS = "failure_monitors"  # the family logs `warn_<name>` while it trains


# formats: a Python format spec, or "count" (50.0k, 2.50M) or "rate" (14,050; 5.54)
def format_value(value: Any, fmt: str) -> str:
    """`value` in format `fmt`; "—" when it is not a number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "—"
    if fmt == "count":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k"
    if fmt == "rate":  # whole numbers once there are many
        return format(value, ",.0f") if value >= 100 else format(value, ".3g")
    return format(value, fmt)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its key, label, direction, format, task and the places that show it."""

    key: str
    label: str
    direction: Direction
    fmt: str
    task: str
    shown: frozenset[Place]
    requires: Requires | None = None  # None: every model has it
    source: Source = Source.EVALUATION
    report_fmt: str | None = None  # finer, where the gate's numbers are read (default: fmt)
    baseline: str | None = None  # key of the same metric measured on real data

    @property
    def higher_is_better(self) -> bool:
        if self.direction is Direction.NEITHER:
            raise ValueError(f"{self.key} has no better direction")
        return self.direction is Direction.HIGHER

    @property
    def arrow(self) -> str:
        return {Direction.HIGHER: "↑", Direction.LOWER: "↓"}.get(self.direction, "")

    def format(self, value: Any, *, report: bool = False) -> str:
        return format_value(value, (self.report_fmt or self.fmt) if report else self.fmt)

    def defined(self, capabilities: Any, monitored: bool = False) -> bool:
        """Whether a model with these `Capabilities` (and failure monitors) has the metric."""
        if self.requires is None:
            return True
        if self.requires is Requires.FAILURE_MONITORS:
            return monitored
        return bool(getattr(capabilities, self.requires.value))


def _decides(task: str, label: str, fmt: str, shown: set[Place], **extra: Any) -> MetricSpec:
    """The row of a task's deciding metric: key and direction from models.spec.TASKS."""
    t = TASKS[task]
    direction = Direction.HIGHER if t.higher_is_better else Direction.LOWER
    return MetricSpec(t.metric, label, direction, fmt, task, frozenset(shown | {Place.GATE}),
                      **extra)  # fmt: skip


def _m(key: str, label: str, direction: Direction, fmt: str, task: str, shown: set[Place],
       **extra: Any) -> MetricSpec:  # fmt: skip
    return MetricSpec(key, label, direction, fmt, task, frozenset(shown), **extra)


H, L, N = Direction.HIGHER, Direction.LOWER, Direction.NEITHER
GEN, ANO, CMP = Place.GENERATION_TABLE, Place.ANOMALY_TABLE, Place.COMPARISON
REP, CARD = Place.REPORT, Place.CARD
_AUROC = {"report_fmt": ".4f"}  # the gate's AUROCs: the report reads them to 4 decimals

# Declaration order is display order (a leaderboard table puts its own task's metrics first).
METRIC_TABLE: tuple[MetricSpec, ...] = (
    # ---- generation: judge features of samples vs the real test digits
    _decides(GENERATION, "FD-judge", ".3g", {GEN, ANO, CMP, CARD},
             baseline="fd_judge_real_reference"),
    _m("fd_judge_real_reference", "real-vs-real FD", N, ".3g", GENERATION, {GEN}),
    _m("precision", "precision", H, ".3f", GENERATION, {GEN, CARD}),
    _m("recall", "recall", H, ".3f", GENERATION, {GEN, CMP, CARD}),
    _m("classes_covered", "classes covered", H, ".3g", GENERATION, {GEN, CARD}),
    _m("kl_to_uniform", "class mix KL to uniform", L, ".3g", GENERATION, {CARD}),
    _m("inception_score", "IS", H, ".3g", GENERATION, {GEN, CARD},
       baseline="inception_score_real_reference"),
    _m("label_agreement", "label agreement", H, ".3f", GENERATION, {GEN, CARD},
       requires=Requires.CONDITIONAL),
    # ---- likelihood (nats per test image)
    _m("elbo_nats", "ELBO (nats)", H, ".4g", LIKELIHOOD, {GEN, CARD},
       requires=Requires.LIKELIHOOD),
    _m("iwae_nats", "IWAE bound (nats)", H, ".4g", LIKELIHOOD, {CARD},
       requires=Requires.LIKELIHOOD),
    # ---- reconstruction of test digits
    _m("recon_mse", "recon MSE", L, ".3g", RECONSTRUCTION, {ANO, CARD},
       requires=Requires.RECONSTRUCTION),
    # ---- anomaly detection: tuned suite + held-out benchmark, the calibrated verdict
    _decides(ANOMALY, "anomaly AUROC", ".3f", {GEN, ANO, REP, CARD}, **_AUROC),
    _m("suite_auroc_mean", "tuned suite mean", H, ".3f", ANOMALY, {ANO, REP, CARD}, **_AUROC),
    _m("heldout_auroc_mean", "held-out mean", H, ".3f", ANOMALY, {ANO, REP, CARD}, **_AUROC),
    _m("heldout_auroc_real_mean", "held-out real kinds", H, ".3f", ANOMALY, {ANO, REP, CARD},
       **_AUROC),
    _m("heldout_auroc_min", "held-out worst kind", H, ".3f", ANOMALY, {ANO, REP, CARD},
       **_AUROC),
    _m("degenerate_flagged_min", "degenerate flagged (min)", H, ".0%", ANOMALY,
       {ANO, REP, CARD}),
    _m("anomaly_tpr_at_threshold", "TPR @ threshold", H, ".3f", ANOMALY, {ANO, CARD}),
    _m("test_fpr", "test FPR", N, ".3f", ANOMALY, {ANO, REP, CARD}),
    _m("target_fpr", "target FPR", N, ".3g", ANOMALY, {ANO}),
    _m("anomaly_aupr_mean", "tuned suite AUPR", H, ".3f", ANOMALY, {CARD}),
    # ---- cost
    _m("sample_ms_per_image", "sample ms/image", L, ".3g", COST, {GEN, CMP, CARD}),
    _m("score_ms_per_image", "score ms/image", L, ".3g", COST, {ANO, REP, CARD}),
    _m("score_images_per_s", "score images/s", H, "rate", COST, {ANO, REP, CARD},
       source=Source.EVALUATE_STAGE),
    _m("params", "params", N, "count", COST, {GEN, ANO, CMP, CARD}),
    # ---- training record (train_metrics.json, history.json), added by the evaluate stage
    _m("train_wall_time_s", "training wall time (s)", L, ".0f", TRAINING, {CMP},
       source=Source.EVALUATE_STAGE),
    _m("train_images_per_s", "training images/s", H, ".0f", TRAINING, {CMP},
       source=Source.EVALUATE_STAGE),
    _m("train_warning_windows", "windows flagged", L, ".0f", TRAINING, {CMP},
       source=Source.EVALUATE_STAGE, requires=Requires.FAILURE_MONITORS),
    _m("train_log_windows", "logged windows", N, ".0f", TRAINING, {CMP},
       source=Source.EVALUATE_STAGE, requires=Requires.FAILURE_MONITORS),
)  # fmt: skip
METRICS: dict[str, MetricSpec] = {m.key: m for m in METRIC_TABLE}


def shown_in(place: Place, first: str | None = None) -> list[MetricSpec]:
    """The metrics shown in `place`, in table order; with `first` (a task), that task's
    metrics come first (a leaderboard table leads with what it ranks)."""
    specs = [m for m in METRIC_TABLE if place in m.shown]
    return sorted(specs, key=lambda m: m.task != first) if first else specs


def task_metric(task: str) -> MetricSpec:
    """The row of the metric that decides `task` (models.spec.TASKS)."""
    return METRICS[TASKS[task].metric]


# ---- per-kind anomaly metrics: `<prefix>_auroc/<kind>`, `<prefix>_tpr/<kind>` ----------------
@dataclass(frozen=True)
class KindSet:
    """A set of anomaly kinds the evaluation reports one AUROC and one share flagged for."""

    name: str  # how reports and cards name the set
    title: str  # how the leaderboard names it
    prefix: str
    auroc_fmt: str = ".3f"
    flagged_fmt: str = ".0%"

    def auroc(self, kind: str) -> str:
        return f"{self.prefix}_auroc/{kind}"

    def flagged(self, kind: str) -> str:
        """The share of the kind the calibrated verdict flags."""
        return f"{self.prefix}_tpr/{kind}"

    def kinds_in(self, keys: Iterable[str]) -> set[str]:
        """The kinds that have an AUROC among `keys`."""
        head = self.auroc("")
        return {k.removeprefix(head) for k in keys if k.startswith(head)}


TUNED = KindSet("tuned", "tuned suite", "anomaly")  # pipelines.evaluation.anomalies
HELDOUT = KindSet("held-out", "held-out", "heldout")  # pipelines.evaluation.heldout
KIND_SETS = (TUNED, HELDOUT)

__all__ = [
    "HELDOUT",
    "KIND_SETS",
    "METRICS",
    "METRIC_TABLE",
    "TUNED",
    "Direction",
    "KindSet",
    "MetricSpec",
    "Place",
    "Requires",
    "Source",
    "format_value",
    "shown_in",
    "task_metric",
]
