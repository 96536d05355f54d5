"""Markdown for the people reading the registry: this run's decisions, and the whole history."""

from __future__ import annotations

import time
from typing import Any


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
    return f"{interval['improvement']:+.4g} [{interval['ci_low']:+.4g}, {interval['ci_high']:+.4g}]"


def promotion_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Promotion decisions (data {_short(report['data_version'])}, "
        f"judge {_short(report.get('judge_version'))})",
        "",
        "The champion is measured again on this data with this judge; a candidate is promoted "
        "only when the paired bootstrap interval of its improvement clears the margin.",
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
            f"{'promoted' if d['promoted'] else 'kept champion'} | {d['reason']} |"
        )
    lines += ["", "Champions now:", ""]
    for task, state in report["champions"].items():
        lines.append(
            f"- {task}: " + ("none" if state is None else f"{state['family']} v{state['version']}")
        )
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
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["at"]))
        improvement = "—"
        if e.get("ci_low") is not None:
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
    return "\n".join(lines) + "\n"
