"""The drift report on disk: Markdown, a PNG of the two distributions, JSON and a history line.

Files only (matplotlib, no Prefect or MLflow): the drift flow (pipelines.orchestration.drift_flow)
writes them after each check, and its MLflow run and Prefect artifact carry the same Markdown.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from pipelines.monitoring.drift import DriftReport

REPORT_DIR = Path("reports") / "drift"
HISTORY_FILE = "history.jsonl"
_HISTORY_KEYS = ("psi", "ks", "wasserstein_log10", "flagged_rate", "live_count", "alarms")


def distribution_plot(report: DriftReport, path: Path) -> Path:
    """Calibration vs live bucket shares on a log score axis, with the threshold; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from models.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 3.6))
    if report.edges and report.live_shares:
        edges = np.asarray(report.edges)
        step = edges[1] / edges[0] if edges.size > 1 else 10.0
        bounds = np.concatenate([[edges[0] / step], edges, [edges[-1] * step]])
        ax.stairs(report.reference_shares, bounds, label="calibration (validation normals)")
        ax.stairs(report.live_shares, bounds, label=f"live ({report.live_count} scores)")
        used = np.flatnonzero(np.add(report.reference_shares, report.live_shares) > 0)
        ax.set_xlim(bounds[max(used[0] - 1, 0)], bounds[min(used[-1] + 2, bounds.size - 1)])
        ax.set_xscale("log")
    else:
        ax.text(0.5, 0.5, "no live scores", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(report.threshold, color="k", ls="--", lw=1, label="calibrated threshold")
    ax.set_xlabel("anomaly score (service histogram buckets)")
    ax.set_ylabel("share of scores")
    ax.set_title(
        f"{report.family} v{report.version}: {report.status} "
        f"(PSI {report.psi:.3f}, KS {report.ks:.3f})",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report_files(out_dir: Path, report: DriftReport, markdown: str, summary: dict) -> dict:
    """drift.md + drift.png + drift.json (the latest check) and one line in history.jsonl."""
    from models.io import atomic_write_bytes, atomic_write_json

    out_dir.mkdir(parents=True, exist_ok=True)
    png = distribution_plot(report, out_dir / "drift.png")
    atomic_write_bytes(out_dir / "drift.md", markdown.encode())
    atomic_write_json(out_dir / "drift.json", summary)
    line = {k: summary[k] for k in ("at", "status", "family", "version", "window", "retrain")}
    line |= {k: v for k, v in summary["report"].items() if k in _HISTORY_KEYS}
    with open(out_dir / HISTORY_FILE, "a") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")
    return {
        "markdown": str(out_dir / "drift.md"),
        "plot": str(png),
        "json": str(out_dir / "drift.json"),
    }
