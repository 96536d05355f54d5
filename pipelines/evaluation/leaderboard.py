"""Rank families per task from their `evaluate_model` metrics and render a Markdown report.

Input: family -> one metrics dict, or a list of them (one per seed). Every numeric key is
summarised as mean and spread (sample standard deviation over seeds; 0 for a single run).
Rankings: each task by its metric in its direction (models.spec.TASKS: generation by `fd_judge`
ascending, anomaly detection by `anomaly_auroc_mean` descending); families lacking the metric
(or with NaN) come last with rank None. The Markdown's columns, labels and formats are the metric
table's (pipelines.evaluation.metric_table); it also puts the tuned suite and the held-out
benchmark side by side per kind and family (AUROC and share flagged).

Baselines (the textbook references of `benchmarks/bench_baselines.py`, stored in
metrics/baselines.json with the data version they were measured on) are shown beside the family
they are a baseline of, marked as baselines and never ranked: the task rankings, which the
promotion gate shares, hold families only. Only rows measured on the current data are shown.
Reference detectors (research/reference_detectors.py: kNN, Mahalanobis in the judge's features;
metrics/reference_detectors.json, same row format with `is_reference`) are shown the same way
in the anomaly tables, under the families, so that every generative score is read against them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from models.spec import ANOMALY, GENERATION, TASKS, competes, rank
from pipelines.evaluation.anomalies import ANOMALY_KINDS
from pipelines.evaluation.heldout import HELDOUT_KINDS
from pipelines.evaluation.metric_table import (
    HELDOUT,
    KIND_SETS,
    METRICS,
    TUNED,
    KindSet,
    MetricSpec,
    Place,
    format_value,
    shown_in,
    task_metric,
)

# the tables' titles; their columns are the metric table's (pipelines.evaluation.metric_table)
_TITLES = {GENERATION: "Generation", ANOMALY: "Anomaly detection"}
_TABLE_OF = {GENERATION: Place.GENERATION_TABLE, ANOMALY: Place.ANOMALY_TABLE}
_KNOWN_KINDS = {TUNED: ANOMALY_KINDS, HELDOUT: HELDOUT_KINDS}  # the suites' own kind order


def _header(spec: MetricSpec, ranked: bool) -> str:
    label = spec.label[:1].upper() + spec.label[1:]
    return f"{label} {spec.arrow}" if ranked else label


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def summarise_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """key -> {"mean", "spread", "n"} over the runs that report a finite value for it."""
    keys = sorted({k for run in runs for k, v in run.items() if _is_number(v)})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [float(r[key]) for r in runs if _is_number(r.get(key)) and math.isfinite(r[key])]
        if not values:
            continue
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "spread": math.sqrt(var), "n": len(values)}
    return out


def _rank(families: Mapping[str, Mapping[str, Any]], metric: str, higher: bool) -> list[dict]:
    def mean(name: str) -> float | None:
        stat = families[name]["metrics"].get(metric)
        return None if stat is None else stat["mean"]

    rows = []
    for position, (name, value) in enumerate(rank(families, mean, higher), start=1):
        stat = families[name]["metrics"].get(metric)
        rows.append({
            "rank": position if value is not None else None,
            "family": name,
            metric: value,
            f"{metric}_spread": None if stat is None else stat["spread"],
        })  # fmt: skip
    return rows


def baseline_runs(
    results: Mapping[str, Any], data_version: str | None
) -> dict[str, dict[str, Any]]:
    """Baseline name -> {"family", "runs": [metrics per seed], "capped"} from a baselines
    results payload (metrics/baselines.json), keeping rows of `data_version` (all when None)."""
    out: dict[str, dict[str, Any]] = {}
    for row in results.get("rows", []):
        if not row.get("is_baseline"):
            continue
        if data_version is not None and row.get("data_version") != data_version:
            continue
        entry = out.setdefault(
            row["name"],
            {"family": row["family"], "runs": [], "capped": False,
             "reference": bool(row.get("is_reference"))},
        )  # fmt: skip
        run = {**row.get("metrics", {})}
        run |= {k: row[k] for k in ("train_cpu_seconds", "steps") if row.get(k) is not None}
        entry["runs"].append(run)
        entry["capped"] = entry["capped"] or bool(row.get("capped"))
    return out


def load_baselines(path: Path, data_version: str | None) -> dict[str, dict[str, Any]]:
    """`baseline_runs` of the results file at `path`; {} when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    return baseline_runs(json.loads(path.read_text()), data_version)


def build_leaderboard(
    metrics_by_family: Mapping[str, Mapping[str, Any] | Sequence[Mapping[str, Any]]],
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """{"families": {name: {"n_runs", "metrics": summaries}}, "<task>": ranked rows, "tasks",
    "baselines": {name: {"family", "is_baseline", "n_runs", "capped", "metrics"}}}.

    `baselines` (from `baseline_runs` / `load_baselines`) are summarised like families but
    never enter the task rankings: nothing reads a baseline as a candidate.
    """
    if not metrics_by_family:
        raise ValueError("build_leaderboard needs metrics for at least one family")
    families: dict[str, dict[str, Any]] = {}
    for name, runs in metrics_by_family.items():
        runs = [runs] if isinstance(runs, Mapping) else list(runs)
        if not runs:
            raise ValueError(f"family {name!r} has an empty list of runs")
        families[name] = {"n_runs": len(runs), "metrics": summarise_runs(runs)}
    clash = sorted(set(baselines or {}) & set(families))
    if clash:
        raise ValueError(f"baseline name(s) {clash} clash with family names")
    board: dict[str, Any] = {
        "families": families,
        "tasks": {
            name: {"metric": t.metric, "higher_is_better": t.higher_is_better}
            for name, t in TASKS.items()
        },
        "baselines": {
            name: {
                "family": entry["family"],
                "is_baseline": True,
                "n_runs": len(entry["runs"]),
                "capped": bool(entry.get("capped")),
                "reference": bool(entry.get("reference")),
                "metrics": summarise_runs(entry["runs"]),
            }
            for name, entry in (baselines or {}).items()
            if entry["runs"]
        },
    }
    for name, t in TASKS.items():  # composites rank only in their tasks (models.spec.competes)
        entrants = {f: v for f, v in families.items() if competes(f, name)}
        board[name] = _rank(entrants, t.metric, t.higher_is_better)
    return board


def _cell(stat: Mapping[str, float] | None, spec: MetricSpec, fmt: str | None = None) -> str:
    """mean (± sample std over seeds) in the metric's format; a count is the same every seed."""
    if stat is None:
        return "—"
    text = format_value(stat["mean"], fmt or spec.fmt)
    if stat["n"] > 1 and spec.fmt != "count":
        return f"{text} ± {format(stat['spread'], '.2g')}"
    return text


def _row_cells(
    rank: str, name: str, entry: Mapping[str, Any], columns: Sequence[MetricSpec]
) -> list[str]:
    stats = entry["metrics"]
    return [rank, name, *[_cell(stats.get(m.key), m) for m in columns], str(entry["n_runs"])]


def _baselines_of(board: Mapping[str, Any], families: Sequence[str] | None) -> list[str]:
    """Baselines of `families` (a one-name list), or with None those of no listed family
    (reference detectors excepted: `_references`)."""
    found = {n: b for n, b in board.get("baselines", {}).items() if not b.get("reference")}
    if families is None:
        listed = {row["family"] for row in board["generation"]}
        return sorted(n for n, b in found.items() if b["family"] not in listed)
    return sorted(n for n, b in found.items() if b["family"] in families)


def _references(board: Mapping[str, Any]) -> list[str]:
    """The reference detectors' names (not generative; shown in the anomaly tables)."""
    return sorted(n for n, b in board.get("baselines", {}).items() if b.get("reference"))


def _baseline_line(board: Mapping[str, Any], name: str, columns: Sequence[MetricSpec]) -> str:
    entry = board["baselines"][name]
    kind = "reference" if entry.get("reference") else "baseline"
    label = f"↳ {kind}: {name}{' (capped)' if entry.get('capped') else ''}"
    return "| " + " | ".join(_row_cells("—", label, entry, columns)) + " |"


def _table(board: Mapping[str, Any], task: str, with_baselines: bool = False) -> list[str]:
    """The task's ranked rows, one column per metric the table shows there (the task's own
    first); with_baselines puts each family's baselines under it."""
    columns = shown_in(_TABLE_OF[task], first=task)
    ranked = TASKS[task].metric
    headers = ["Rank", "Family", *[_header(m, m.key == ranked) for m in columns], "Seeds"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in board[task]:
        rank = str(row["rank"]) if row["rank"] is not None else "—"
        fam = board["families"][row["family"]]
        lines.append("| " + " | ".join(_row_cells(rank, row["family"], fam, columns)) + " |")
        if with_baselines:
            names = _baselines_of(board, [row["family"]])
            lines += [_baseline_line(board, n, columns) for n in names]
    if with_baselines:
        lines += [_baseline_line(board, n, columns) for n in _baselines_of(board, None)]
    if task == ANOMALY:
        lines += [_baseline_line(board, n, columns) for n in _references(board)]
    return lines


def ordered_kinds(kind_set: KindSet, keys: Iterable[str]) -> list[str]:
    """The kinds of `kind_set` with an AUROC among `keys`, in the suite's own order."""
    found = kind_set.kinds_in(keys)
    known = _KNOWN_KINDS[kind_set]
    return [k for k in known if k in found] + sorted(found - set(known))


def _kinds(board: Mapping[str, Any], kind_set: KindSet) -> list[str]:
    return ordered_kinds(kind_set, (k for f in board["families"].values() for k in f["metrics"]))


def _per_kind_table(board: Mapping[str, Any]) -> list[str]:
    """Rows: tuned-suite kinds, then held-out kinds; columns: families in anomaly rank order,
    then the reference detectors. Cells: AUROC (share flagged by the calibrated verdict)."""
    families = [row["family"] for row in board["anomaly"]]
    references = _references(board)
    entries = [board["families"][f] for f in families]
    entries += [board["baselines"][n] for n in references]
    names = families + [f"{n} (reference)" for n in references]
    auroc = task_metric(ANOMALY)
    lines = ["| Set | Kind | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for kind_set in KIND_SETS:
        for kind in _kinds(board, kind_set):
            cells = []
            for entry in entries:
                stats = entry["metrics"]
                cell = _cell(stats.get(kind_set.auroc(kind)), auroc, kind_set.auroc_fmt)
                flagged = stats.get(kind_set.flagged(kind))
                if flagged is not None:
                    cell += f" ({format_value(flagged['mean'], kind_set.flagged_fmt)})"
                cells.append(cell)
            lines.append(f"| {kind_set.title} | {kind} | " + " | ".join(cells) + " |")
    return lines


def _baseline_note(board: Mapping[str, Any]) -> list[str]:
    if not _baselines_of(board, None) and not any(
        _baselines_of(board, [row["family"]]) for row in board["generation"]
    ):
        return []
    return [
        "",
        "↳ rows are textbook baselines (research/baselines.py), each trained by "
        "benchmarks/bench_baselines.py at one CPU budget and evaluated with this evaluation on "
        "this data; shown under the family they are a baseline of, never ranked and never "
        "candidates for promotion. Capped: trained fewer steps than its config asks.",
    ]


def _reference_note(board: Mapping[str, Any]) -> list[str]:
    if not _references(board):
        return []
    return [
        "",
        "↳ reference rows are detectors that are not generative (research/reference_detectors.py: "
        "kNN over the training digits, Mahalanobis in the judge's features), measured by this "
        "evaluation on this data by `genops reference-detectors`; never ranked, never promoted.",
    ]


def _stars(board: Mapping[str, Any], spec: MetricSpec) -> dict[str, str]:
    """Family -> stars for `spec` among the generating families: the best of N gets N, ties
    share; families without the metric get none."""
    names = [row["family"] for row in board["generation"]]
    values = {n: board["families"][n]["metrics"].get(spec.key) for n in names}
    values = {n: v["mean"] for n, v in values.items() if v is not None and math.isfinite(v["mean"])}
    ordered = sorted(set(values.values()), reverse=spec.higher_is_better)
    total = len(names)
    return {n: "★" * (total - ordered.index(v)) for n, v in values.items()}


# the comparison table's columns and the metric whose stars rank each (Place.COMPARISON)
_COST, _STEADY, _QUALITY, _SPEED = (METRICS[k] for k in (
    "train_wall_time_s", "train_warning_windows", TASKS[GENERATION].metric, "sample_ms_per_image"
))  # fmt: skip
_LOGGED, _RECALL, _TRAIN_RATE, _PARAMS = (METRICS[k] for k in (
    "train_log_windows", "recall", "train_images_per_s", "params"
))  # fmt: skip


def _comparison_table(board: Mapping[str, Any]) -> list[str]:
    """The tutorial's star table, measured: per column the stars rank the families and the
    numbers behind them follow (more stars = better for the user)."""
    names = [row["family"] for row in board["generation"]]
    stats = {n: board["families"][n]["metrics"] for n in names}

    def num(name: str, spec: MetricSpec) -> str:
        return _cell(stats[name].get(spec.key), spec)

    light, quality = _stars(board, _COST), _stars(board, _QUALITY)
    speed, steady = _stars(board, _SPEED), _stars(board, _STEADY)
    lines = [
        "| Family | Training cost | Training stability | Sample quality | Sampling speed |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        seeds = stats[n].get(_QUALITY.key, {}).get("n", 1)
        flagged = stats[n].get(_STEADY.key)
        if flagged is None:
            stability = f"no failure monitor; {seeds} seed(s)"
        else:
            windows = format_value(stats[n].get(_LOGGED.key, {}).get("mean", 0), _LOGGED.fmt)
            stability = (f"{steady.get(n, '')} {format_value(flagged['mean'], _STEADY.fmt)} of "
                         f"{windows} logged windows flagged; {seeds} seed(s)")  # fmt: skip
        if seeds > 1:
            stability += f", {_QUALITY.label} ± {stats[n][_QUALITY.key]['spread']:.2g}"
        lines.append(
            f"| {n} | {light.get(n, '')} {num(n, _COST)} s, {num(n, _PARAMS)} params | "
            f"{stability} | {quality.get(n, '')} {_QUALITY.label} {num(n, _QUALITY)}, recall "
            f"{num(n, _RECALL)} | {speed.get(n, '')} {num(n, _SPEED)} ms/sample, train "
            f"{num(n, _TRAIN_RATE)} img/s |"
        )
    return lines


def _heading(task: str) -> str:
    spec = task_metric(task)
    return f"## {_TITLES[task]} (ranked by {spec.label}, {spec.direction} is better)"


def render_markdown(leaderboard: Mapping[str, Any]) -> str:
    """Two ranked tables (generation, anomaly detection); multi-seed cells read mean ± std."""
    lines = [
        "# Leaderboard",
        "",
        "Cells are mean ± sample std over seeds where several runs were given.",
        "",
        _heading(GENERATION),
        "",
        *_table(leaderboard, GENERATION, with_baselines=True),
        *_baseline_note(leaderboard),
        "",
        _heading(ANOMALY),
        "",
        f"{_header(task_metric(ANOMALY), ranked=False)} = mean of the tuned suite's and the "
        "held-out benchmark's mean AUROC (the promotion gate's metric; docs/anomaly.md). Every "
        "AUROC ranks by the calibrated two-sided atypicality that the verdict thresholds.",
        "",
        *_table(leaderboard, ANOMALY),
        *_reference_note(leaderboard),
    ]
    if any(_kinds(leaderboard, kind_set) for kind_set in KIND_SETS):
        lines += [
            "",
            "### Per kind: the tuned suite and the held-out benchmark side by side",
            "",
            "AUROC (share flagged by the calibrated verdict). The tuned suite's corruptions come "
            "from the code the scoring rules were chosen against; nothing was chosen on the "
            "held-out images (pipelines/evaluation/heldout.py).",
            "",
            *_per_kind_table(leaderboard),
        ]
    lines += [
        "",
        "## The comparison table, measured",
        "",
        "The tutorials' star table of the generating families, from this run's measurements: "
        "stars rank the families on each column (more = better for the user), the numbers "
        "follow. Training stability counts the logging windows in which a family's failure "
        "monitors fired (docs/gan_failures.md) and, with several seeds, the spread of FD-judge.",
        "",
        *_comparison_table(leaderboard),
    ]
    return "\n".join(lines) + "\n"
