"""Markdown for the people reading the registry: this run's decisions, and the whole history."""

from __future__ import annotations

import time
from typing import Any

from models.spec import ANOMALY, rank
from pipelines.evaluation.metric_table import (
    KIND_SETS,
    METRICS,
    MetricSpec,
    Place,
    format_value,
    shown_in,
)
from pipelines.evaluation.sequential import METHOD as SEQUENTIAL


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


def _outcome(decision: dict[str, Any]) -> str:
    if decision["promoted"]:
        return "promoted"
    return "made challenger" if decision.get("challenged") else "kept champion"


def _num(value: Any) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return "—"


def _short(version: str | None) -> str:
    return "—" if not version or version == "none" else str(version).removeprefix("md5:")[:10]


def _interval(d: dict[str, Any]) -> str:
    interval = d.get("interval")
    if not interval:
        return "—"
    if "improvement" not in interval:  # refused before any comparison (lineage)
        return f"refused: {interval.get('reason', '?')}"
    if interval.get("method") == SEQUENTIAL:  # relative improvement, with its cost
        return (
            f"{interval.get('statistic', 'fd').upper()} {interval['improvement']:+.1%} "
            f"[{interval['ci_low']:+.1%}, "
            f"{interval['ci_high']:+.1%}]; {interval['rounds']} rounds, "
            f"{interval['n_per_model']:,} fresh samples/model, {interval['seconds']:.1f} s"
        )
    return f"{interval['improvement']:+.4g} [{interval['ci_low']:+.4g}, {interval['ci_high']:+.4g}]"


def _report_columns(metric: str) -> list[MetricSpec]:
    """The promotion report's columns besides the gate metric (pipelines.evaluation.
    metric_table, Place.REPORT): the parts of the anomaly task's metric (the mean of the two
    means: pipelines.evaluation.paired), the verdict's behaviour and the cost per image."""
    return [m for m in shown_in(Place.REPORT) if m.key != metric]


def anomaly_breakdown(metrics: dict[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """The anomaly gate's metric of each candidate beside its tuned-suite and held-out means,
    per kind and per family (best first), with the cost per image: for the promotion report."""
    from pipelines.evaluation.leaderboard import ordered_kinds

    keys = [metric, *(m.key for m in _report_columns(metric))]
    higher = METRICS[metric].higher_is_better
    order = rank(metrics, lambda f: metrics[f].get(metric), higher_is_better=higher)
    families = [
        {"family": f, **{k: metrics[f][k] for k in keys if k in metrics[f]}} for f, _ in order
    ]
    kinds: dict[str, dict[str, dict[str, float]]] = {}
    for kind_set in KIND_SETS:
        kinds[kind_set.name] = {}
        for kind in ordered_kinds(kind_set, (k for m in metrics.values() for k in m)):
            key = kind_set.auroc(kind)
            kinds[kind_set.name][kind] = {f: metrics[f][key] for f, _ in order if key in metrics[f]}
    return {"metric": metric, "families": families, "kinds": kinds}


def anomaly_markdown(breakdown: dict[str, Any]) -> list[str]:
    """Two tables: per family the gate metric beside its two halves and the cost; per kind."""
    metric, rows = breakdown["metric"], breakdown["families"]
    if not rows:
        return []
    gate, columns = METRICS[metric], _report_columns(metric)
    headers = ["family", f"gate metric `{metric}`", *(m.label for m in columns)]
    lines = [
        "## Anomaly task: what the gate metric is made of",
        "",
        f"`{metric}` = mean of the tuned suite's mean AUROC and the held-out benchmark's mean "
        "AUROC (docs/anomaly.md); nothing was chosen on the held-out images. Cost: model score "
        "per image in the evaluation's batched scoring.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    for row in rows:
        cells = [row["family"], gate.format(row.get(metric), report=True)]
        cells += [m.format(row.get(m.key), report=True) for m in columns]
        lines.append("| " + " | ".join(cells) + " |")
    families = [row["family"] for row in rows]
    lines += ["", "AUROC per kind:", "", "| set | kind | " + " | ".join(families) + " |",
              "|" + "---|" * (len(families) + 2)]  # fmt: skip
    for kind_set in KIND_SETS:
        for kind, values in breakdown["kinds"].get(kind_set.name, {}).items():
            cells = [format_value(values.get(f), kind_set.auroc_fmt) for f in families]
            lines.append(f"| {kind_set.name} | {kind} | " + " | ".join(cells) + " |")
    return lines


def promotion_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Promotion decisions (data {_short(report['data_version'])}, "
        f"judge {_short(report.get('judge_version'))})",
        "",
        "Generation: both models draw fresh samples in rounds of 1,000 until a sequential test "
        "on the blocks' FD-judge decides (the challenger must be closer to the real test digits "
        "by the relative margin; false-promotion rate and power measured in docs/gate.md). "
        "Anomaly: the champion is measured again on this data and the paired bootstrap "
        "interval of the AUROC improvement must clear the margin.",
        "",
        "| task | candidate | metric | champion (on this data) | champion's first data "
        "| improvement [CI] | margin | decision | reason |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report["decisions"]:
        if d["champion_version"] is None:
            champ = "none"
        else:
            champ = f"{d.get('champion_family') or ''} v{d['champion_version']}"
            if d["champion_metric"] is not None:
                champ += f" ({d['champion_metric']:.4g}, {d.get('champion_evidence') or 'tags'})"
        lines.append(
            f"| {d['task']} | {d['candidate_family']} v{d['candidate_version']} | "
            f"{d['candidate_metric']:.4g} | {champ} | {_short(d.get('champion_data_version'))} | "
            f"{_interval(d)} | {d['margin']:g} | "
            f"{_outcome(d)} | {d['reason']} |"
        )
    lines += ["", "Champions now:", ""]
    for task, state in report["champions"].items():
        lines.append(
            f"- {task}: " + ("none" if state is None else f"{state['family']} v{state['version']}")
        )
    if report.get(ANOMALY):
        lines += ["", *anomaly_markdown(report[ANOMALY])]
    return "\n".join(lines) + "\n"


def history_markdown(events: list[dict[str, Any]]) -> str:
    """Every gate decision and rollback across data versions, oldest first."""
    lines = [
        "# Promotion history",
        "",
        "Every decision of the promotion gate and every rollback, read from the MLflow registry "
        "(`genops history`). Improvement is in the task's metric, positive = candidate better.",
        "",
        "| when (UTC) | task | event | candidate | data | champion before | "
        "candidate | champion | improvement [CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in events:
        when = _when(e["at"])
        improvement = "—"
        if e.get("method") == SEQUENTIAL and e.get("ci_low") is not None:
            improvement = (
                f"{float(e['improvement']):+.1%} [{float(e['ci_low']):+.1%}, "
                f"{float(e['ci_high']):+.1%}], n={e.get('n_per_model')}, {e.get('seconds')} s"
            )
        elif e.get("ci_low") is not None:
            improvement = (
                f"{float(e['improvement']):+.4g} "
                f"[{float(e['ci_low']):+.4g}, {float(e['ci_high']):+.4g}]"
            )
        lines.append(
            f"| {when} | {e['task']} | {e['event']} | {e.get('family') or '?'} v{e['version']} | "
            f"{_short(e.get('data_version'))} | "
            f"v{e.get('champion_version', '—')} | {_num(e.get('candidate_metric'))} | "
            f"{_num(e.get('champion_metric'))} | {improvement} |"
        )
    if not events:
        lines.append("| — | — | no decisions yet | | | | | | |")
    canaries = [e for e in events if e["event"].startswith("canary ")]
    if canaries:
        lines += [
            "",
            "## Live evidence (shadow and canary, `genops canary`)",
            "",
            "| when (UTC) | task | event | version | canary requests | errors | p99 ms "
            "(champion) | shadow requests | verdict agreement | reason |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for e in canaries:
            when = _when(e["at"])
            lines.append(
                f"| {when} | {e['task']} | {e['event']} | v{e['version']} | "
                f"{e.get('canary_requests', '—')} | {e.get('canary_errors', '—')} | "
                f"{_num(e.get('canary_p99_ms'))} ({_num(e.get('champion_p99_ms'))}) | "
                f"{e.get('shadow_requests', '—')} | {_num(e.get('shadow_verdict_agreement'))} | "
                f"{e.get('reason', '')} |"
            )
    return "\n".join(lines) + "\n"
