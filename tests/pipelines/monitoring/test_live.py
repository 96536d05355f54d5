"""Live evidence from /metrics (pipelines/monitoring/live.py) and the canary's decisions on it
(pipelines/registry/canary.py): parsing, windows, histogram quantiles, budgets."""

from __future__ import annotations

import math

import numpy as np
import prometheus_client as prom
import pytest

from pipelines.monitoring.live import Samples, canary_figures, champion_baseline, shadow_figures
from pipelines.registry.canary import CanaryBudget, breach, shadow_refusal
from serving.canary import LATENCY_BUCKETS


def _exposition(latencies: dict[tuple[str, str], list[float]], outcomes: dict) -> str:
    """A real prometheus_client exposition of the service's canary metrics."""
    registry = prom.CollectorRegistry()
    labels = ["task", "version", "role"]
    requests = prom.Counter("genops_canary_requests", "", [*labels, "outcome"], registry=registry)
    latency = prom.Histogram("genops_canary_latency_seconds", "", labels, registry=registry,
                             buckets=LATENCY_BUCKETS)  # fmt: skip
    for (version, role), values in latencies.items():
        for v in values:
            latency.labels("anomaly", version, role).observe(v)
    for (version, role, outcome), n in outcomes.items():
        requests.labels("anomaly", version, role, outcome).inc(n)
    return prom.generate_latest(registry).decode()


def test_canary_figures_come_from_the_window_not_from_before_it():
    rng = np.random.default_rng(0)
    before = Samples.parse(_exposition({("5", "canary"): [5.0] * 50}, {("5", "canary", "ok"): 50}))
    fast = rng.uniform(0.005, 0.02, 400)
    now = Samples.parse(_exposition(
        {("5", "canary"): [5.0] * 50 + list(fast), ("2", "champion"): list(fast)},
        {("5", "canary", "ok"): 450, ("5", "canary", "fallback"): 4, ("2", "champion", "ok"): 400},
    ))  # fmt: skip
    figures = canary_figures(now.minus(before), "anomaly", "5", "2")
    assert figures["canary_requests"] == 404 and figures["canary_errors"] == 4
    assert figures["canary_error_rate"] == pytest.approx(4 / 404)
    # the 50 five-second answers before the window do not count; quantiles interpolate buckets
    assert 10 <= figures["canary_p50_ms"] <= 25 and figures["canary_p99_ms"] <= 25
    assert figures["champion_requests"] == 400
    whole = canary_figures(now, "anomaly", "5", "2")
    assert whole["canary_p99_ms"] > 2500  # with them, the p99 is in the 2.5-5 s bucket


def test_quantiles_match_numpy_within_a_bucket_and_say_inf_beyond_the_last_edge():
    values = np.linspace(0.0101, 0.0249, 100)  # all inside the 10-25 ms bucket
    s = Samples.parse(_exposition({("5", "canary"): list(values)}, {}))
    p50, p99 = s.quantiles("genops_canary_latency_seconds", (0.5, 0.99), version="5")
    assert p50 == pytest.approx(0.0175, abs=1e-9) and 0.0174 < p99 <= 0.025
    over = Samples.parse(_exposition({("5", "canary"): [20.0] * 10}, {}))
    assert over.quantiles("genops_canary_latency_seconds", (0.5,), version="5") == [math.inf]
    assert over.quantiles("genops_canary_latency_seconds", (0.5,), version="9") == [None]


def test_shadow_figures_and_the_shadow_requirement():
    empty = shadow_figures(Samples({}), "anomaly", "5")
    assert empty["shadow_requests"] == 0 and empty["shadow_verdict_agreement"] is None
    budget = CanaryBudget(shadow_min_requests=20, shadow_min_agreement=0.9)
    assert shadow_refusal(empty, CanaryBudget()) is None  # none required by default
    assert "needs 20" in shadow_refusal(empty, budget)
    good = {**empty, "shadow_requests": 25, "shadow_verdict_agreement": 0.95,
            "shadow_p99_ms": 12.0}  # fmt: skip
    assert shadow_refusal(good, budget) is None
    assert "agreement" in shadow_refusal({**good, "shadow_verdict_agreement": 0.5}, budget)
    assert "shadow errors" in shadow_refusal({**good, "shadow_errors": 1}, budget)
    assert "p99" in shadow_refusal({**good, "shadow_p99_ms": 900.0}, budget)


def test_budgets_are_judged_only_with_enough_requests():
    budget = CanaryBudget(judge_after=20, min_requests=50, max_error_rate=0.01, max_p99_ms=100)
    figures = {"canary_requests": 19, "canary_errors": 19, "canary_error_rate": 1.0,
               "canary_p99_ms": 900.0}  # fmt: skip
    assert breach(figures, budget) is None  # too few to judge
    assert "error rate" in breach({**figures, "canary_requests": 20}, budget)
    slow = {**figures, "canary_requests": 20, "canary_errors": 0, "canary_error_rate": 0.0}
    assert "p99 900 ms" in breach(slow, budget)
    assert breach({**slow, "canary_p99_ms": 99.0}, budget) is None
    # many times slower than the champion at the median, though within the p99 budget
    relative = {**slow, "canary_p99_ms": 99.0, "canary_p50_ms": 60.0, "champion_p50_ms": 3.0,
                "champion_requests": 400}  # fmt: skip
    assert "20.0x the champion's 3.0 ms" in breach(relative, budget)
    assert breach({**relative, "champion_requests": 5}, budget) is None  # too few to compare
    assert breach({**relative, "canary_p50_ms": 5.9}, budget) is None
    # two millisecond medians inside one histogram bucket: 2.2x, but 1.2 ms apart (CI, stop 35)
    noise = {**relative, "canary_p50_ms": 2.29, "champion_p50_ms": 1.05}
    assert breach(noise, budget) is None
    assert "2.2x" in breach(noise, CanaryBudget(judge_after=20, min_requests=50,
                                                 min_p50_excess_ms=1.0))  # fmt: skip


def test_the_champions_baseline_from_before_the_canary():
    """A challenger that slows the champion on the workers they share (CI at 16c8e69: v4 at
    p50 47 ms, the champion queued behind it at 57 ms) is read against the champion's median
    from before the canary, while the traffic stays steady."""
    empty = Samples.parse(_exposition({}, {}))
    window = Samples.parse(_exposition({("2", "champion"): [0.003] * 300},
                                       {("2", "champion", "ok"): 300}))  # fmt: skip
    baseline = champion_baseline(window.minus(empty), "anomaly", "2", 3.0)
    assert baseline["baseline_requests"] == 300 and baseline["baseline_rate"] == 100.0
    assert 2.5 <= baseline["baseline_p50_ms"] <= 5.0
    budget = CanaryBudget(judge_after=20, min_requests=50, max_p99_ms=120.0, baseline_s=3.0)
    during = {"canary_requests": 40, "canary_errors": 0, "canary_error_rate": 0.0,
              "canary_p99_ms": 99.0, "canary_p50_ms": 47.0, "champion_p50_ms": 57.0,
              "champion_requests": 360, "rate_during": 100.0}  # fmt: skip
    assert breach(during, budget) is None  # the champion's own median hides it
    ci = {**during, **baseline, "baseline_p50_ms": 3.0}
    assert "15.7x the champion's 3.0 ms before the canary" in breach(ci, budget)
    # the traffic grew (2x > max_rate_growth 1.5): the baseline does not say what the champion
    # would answer now, and is not used; nor with too few requests behind it
    assert breach({**ci, "rate_during": 200.0}, budget) is None
    assert breach({**ci, "baseline_requests": 10}, budget) is None
    # the faster of the two medians: a champion faster now than before is read as it is now
    now = {**ci, "canary_p50_ms": 20.0, "champion_p50_ms": 2.0, "baseline_p50_ms": 8.0}
    assert "10.0x the champion's 2.0 ms during it" in breach(now, budget)
    # a good challenger, as fast as the champion before it: within budget
    assert breach({**ci, "canary_p50_ms": 4.0, "champion_p50_ms": 4.2}, budget) is None


@pytest.mark.parametrize(
    "values, message",
    [({"share": 0}, "share"), ({"share": 1.5}, "share"), ({"poll_s": 0}, "poll_s"),
     ({"judge_after": 60, "min_requests": 50}, "judge_after"),
     ({"min_p50_excess_ms": -1}, "min_p50_excess_ms"), ({"baseline_s": -1}, "baseline_s"),
     ({"max_rate_growth": 0.5}, "max_rate_growth"), ({"windows": 3}, "unknown")],
)  # fmt: skip
def test_budget_values_are_checked(values, message):
    with pytest.raises(ValueError, match=message):
        CanaryBudget.from_dict(values)


def test_the_shipped_params_are_a_valid_budget():
    from pipelines.settings import load_params, section

    budget = CanaryBudget.from_dict(section(load_params(), "canary"))
    assert budget.share == 0.1 and budget.max_error_rate == 0.01


def test_the_cli_takes_a_baseline_and_refuses_a_bad_one():
    """`genops canary --baseline-s`: 0 is a value (no baseline), a negative one is refused
    before anything is contacted."""
    from click.testing import CliRunner

    from pipelines.cli.registry import canary_cmd

    result = CliRunner().invoke(canary_cmd, ["--task", "anomaly", "--baseline-s", "-1"])
    assert result.exit_code == 2 and "baseline_s must be >= 0" in result.output
    assert "--baseline-s" in CliRunner().invoke(canary_cmd, ["--help"]).output
