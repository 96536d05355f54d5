"""A model card for every registered version: Markdown + self-contained HTML, logged to MLflow.

`log_model_cards` is meant to run in the register step, after the gate (that call in
pipelines/stages/register.py needs this file among the stage's dvc.yaml deps). A card is built
from what the evaluation already wrote (`artifacts/eval/<family>/`: `metrics.json`,
`calibration.json`, `plots/*.png`) and from the version's registry tags (lineage, metrics,
the promotion decision). Which metrics it lists, and how, is the metric table's
(pipelines.evaluation.metric_table, `Place.CARD`). It is logged to the version's run under
`model_cards/<name>/v<version>/card/` (card.md, card.html and the plots) and the version is
tagged `model_card=<that path>`, so anyone can find it from the registry, the serving sources
copy it into the bundle (`card/`), and the service's page shows it (`/ui/cards/<role>`).
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.spec import (
    CALIBRATION_FILE,
    MODEL_CARD_DIR,
    MODEL_CARD_TAG,
    Tag,
    metrics_from_tags,
    model_card_artifact_path,
    redact_uri,
)
from pipelines.evaluation.metric_table import KIND_SETS, Direction, MetricSpec, Place, shown_in

# (file in plots/, section title, what it shows); missing plots are left out of the card
PLOTS = (
    ("samples.png", "Samples", "random draws of the model"),
    ("class_grid.png", "Samples per class", "one row per requested digit (conditional models)"),
    ("reconstructions.png", "Reconstructions", "test digits (top) and their reconstructions"),
    ("roc.png", "ROC curves", "anomaly detection per anomaly kind, test normals vs anomalies"),
    ("score_histograms.png", "Score histograms", "normals vs anomalies, with the threshold"),
)


@dataclass(frozen=True)
class CardInputs:
    """Everything a card shows, gathered once."""

    name: str
    version: str
    family: str
    tags: Mapping[str, str]
    metrics: Mapping[str, Any]
    calibration: Mapping[str, Any]
    plots: tuple[tuple[str, str, Path], ...] = ()  # (title, caption, png path)
    run_id: str | None = None
    source: str = ""
    written_at: float = field(default_factory=time.time)
    config: Mapping[str, Any] = field(default_factory=dict)  # the bundle's model config


def card_inputs(
    name: str,
    version: str,
    tags: Mapping[str, str],
    eval_dir: Path,
    run_id: str | None = None,
    source: str = "",
) -> CardInputs:
    """Collect a card's contents from the evaluation folder and the version's tags."""
    eval_dir = Path(eval_dir)
    metrics_file = eval_dir / "metrics.json"
    # the evaluation's own numbers, then what the evaluate stage added (the training record,
    # derived rates), which reach the card only through the version's `metric.<name>` tags
    metrics: dict[str, Any] = metrics_from_tags(tags)
    metrics |= json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    calibration: dict[str, Any] = {}
    if (eval_dir / CALIBRATION_FILE).is_file():
        raw = json.loads((eval_dir / CALIBRATION_FILE).read_text())
        scores = raw.get("val_scores") or raw.get("scores") or []
        calibration = {k: v for k, v in raw.items() if not isinstance(v, list)}
        calibration["validation_normals"] = len(scores)
    plots = tuple(
        (title, caption, eval_dir / "plots" / file)
        for file, title, caption in PLOTS
        if (eval_dir / "plots" / file).is_file()
    )
    family = tags.get(Tag.FAMILY) or str(metrics.get("family", "unknown"))
    config_file = eval_dir / "bundle" / "config.json"
    config = json.loads(config_file.read_text()).get("config", {}) if config_file.is_file() else {}
    return CardInputs(
        name, str(version), family, dict(tags), metrics, calibration, plots, run_id, source,
        config=config,
    )  # fmt: skip


def config_rows(config: Mapping[str, Any], prefix: str = "") -> list[list[str]]:
    """The model config as (dotted key, value) rows: what is served, an ensemble's members
    included. A composite's per-member calibrations become one row (their thresholds are in
    the model's own config, their validation scores are not worth a row each); long lists are
    counted, not listed."""
    rows: list[list[str]] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key == "calibrations" and isinstance(value, Mapping):
            counts = {k: len(v.get("val_scores", [])) for k, v in value.items()}
            rows.append([name, ", ".join(f"{k} ({n:,} validation normals)"
                                         for k, n in counts.items())])  # fmt: skip
        elif isinstance(value, Mapping):
            rows += config_rows(value, f"{name}.")
        elif isinstance(value, list | tuple) and len(value) > 8:
            rows.append([name, f"{len(value):,} values"])
        else:
            rows.append([name, _fmt(value) if not isinstance(value, list | tuple) else
                         ", ".join(_fmt(v) for v in value)])  # fmt: skip
    return rows


# ---- rendering ----------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


METRIC_HEADER = ["metric", "value", "real-data baseline", "meaning"]


def _meaning(spec: MetricSpec) -> str:
    better = "" if spec.direction is Direction.NEITHER else f", {spec.direction} is better"
    return spec.label + better


def _sections(c: CardInputs) -> list[tuple[str, list[list[str]] | str, list[str] | None]]:
    """(title, rows or text, header) of every table section, shared by Markdown and HTML."""
    tags = c.tags
    identity = [
        ["registered model", f"{c.name}, version {c.version}"],
        ["family", c.family],
        ["data version", tags.get(Tag.DATA_VERSION, "unknown")],
        ["judge version", tags.get(Tag.JUDGE_VERSION, "unknown")],
        ["git commit", tags.get(Tag.GIT_COMMIT, "unknown")],
        ["params hash", tags.get(Tag.PARAMS_HASH, "unknown")],
        ["weights sha256", tags.get(Tag.WEIGHTS_SHA256, "unknown")],
        ["learned state sha256", tags.get(Tag.STATE_SHA256, "unknown")],
        ["MLflow run", c.run_id or "unknown"],
        ["artifact source", redact_uri(c.source) if c.source else "unknown"],
        ["card written", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(c.written_at))],
    ]
    promotion = {
        k.removeprefix(Tag.PROMOTION_PREFIX): v
        for k, v in sorted(tags.items())
        if k.startswith(Tag.PROMOTION_PREFIX)
    }
    metric_rows = []  # the metric table's card rows (pipelines.evaluation.metric_table)
    for spec in shown_in(Place.CARD):
        if spec.key in c.metrics:
            base = spec.baseline
            baseline = _fmt(c.metrics[base]) if base and base in c.metrics else ""
            metric_rows.append([spec.key, _fmt(c.metrics[spec.key]), baseline, _meaning(spec)])
    per_kind = []  # the tuned suite's kinds, then the held-out benchmark's
    for kind_set in KIND_SETS:
        for kind in sorted(kind_set.kinds_in(c.metrics)):
            tpr = c.metrics.get(kind_set.flagged(kind))
            per_kind.append(
                [f"{kind_set.name}: {kind}", _fmt(c.metrics[kind_set.auroc(kind)]), _fmt(tpr)]
            )
    calibration = [[k, _fmt(v)] for k, v in c.calibration.items()]
    lineage = [[k, v] for k, v in sorted(tags.items()) if not k.startswith(Tag.PROMOTION_PREFIX)]
    sections: list[tuple[str, list[list[str]] | str, list[str] | None]] = [
        ("Identity and lineage", identity, None),
    ]
    if promotion:
        rows = [[k, v] for k, v in promotion.items()]
        sections.append(("Promotion decision", rows, None))
    sections += [
        ("Metrics", metric_rows or "none recorded", METRIC_HEADER),
        ("Anomaly detection per kind", per_kind or "not evaluated", ["kind", "AUROC", "TPR"]),
        (
            "Calibration",
            calibration or "no calibration.json",
            None,
        ),
        ("Configuration", config_rows(c.config) or "no bundle config.json", ["key", "value"]),
        ("All registry tags", lineage, ["tag", "value"]),
    ]
    return sections


INTRO = (
    "Generated by the genops pipeline when this version was registered. Numbers come from "
    "the project's shared evaluation (FD-judge and friends for generation, AUROC over the "
    "synthetic anomaly suite for scoring); the threshold flags about `target_fpr` of normal "
    "validation digits. Trained and judged on MNIST-style 28x28 digits only: scores for "
    "other images say only that they are not such digits."
)


def render_markdown(c: CardInputs) -> str:
    lines = [f"# Model card: {c.name} v{c.version} ({c.family})", "", INTRO, ""]
    for title, body, header in _sections(c):
        lines += [f"## {title}", ""]
        if isinstance(body, str):
            lines += [body, ""]
            continue
        head = header or ["", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in body:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        lines.append("")
    if c.plots:
        lines += ["## Plots", ""]
        for title, caption, path in c.plots:
            lines += [f"### {title}", "", f"![{caption}]({path.name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;max-width:980px;margin:1.5rem auto;padding:0 1rem;"
    "color:#1d2330}table{border-collapse:collapse;margin:.4rem 0 1rem}td,th{border-bottom:1px "
    "solid #d0d5dd;padding:.25rem .6rem;text-align:left;font-size:.9rem;vertical-align:top}"
    "td{word-break:break-all}img{max-width:100%;border:1px solid #d0d5dd}"
    "figcaption{color:#667085;font-size:.85rem}h2{margin-top:1.6rem}"
)


def render_html(c: CardInputs) -> str:
    """One self-contained HTML page (plots inlined as data: URIs; no script, no remote URL)."""
    esc = html.escape
    title = f"Model card: {c.name} v{c.version} ({c.family})"
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1><p>{esc(INTRO)}</p>",
    ]
    for section, body, header in _sections(c):
        out.append(f"<h2>{esc(section)}</h2>")
        if isinstance(body, str):
            out.append(f"<p>{esc(body)}</p>")
            continue
        out.append("<table>")
        if header:
            out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for row in body:
            out.append("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>")
        out.append("</table>")
    if c.plots:
        out.append("<h2>Plots</h2>")
        for plot_title, caption, path in c.plots:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(
                f"<figure><h3>{esc(plot_title)}</h3><img alt='{esc(caption)}' "
                f"src='data:image/png;base64,{data}'><figcaption>{esc(caption)}</figcaption>"
                "</figure>"
            )
    out.append("</body></html>")
    return "\n".join(out)


def write_card(dst: Path, c: CardInputs) -> Path:
    """Write card.md, card.html and the plots into `dst` (replaced as a whole); return it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    try:
        for _, _, path in c.plots:
            shutil.copyfile(path, staging / path.name)
        (staging / "card.md").write_text(render_markdown(c))
        (staging / "card.html").write_text(render_html(c))
        if dst.exists():
            shutil.rmtree(dst)
        staging.rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dst


# ---- the registry side --------------------------------------------------------------------------
def log_model_card(name: str, version: str, eval_dir: Path) -> str:
    """Write the card of registered version `name` v`version`, log it to the version's run and
    tag the version with its artifact path; return that path."""
    from models.spec import mlflow_client
    from pipelines import tracking

    tracking.setup()
    client = mlflow_client()
    mv = client.get_model_version(name, str(version))
    inputs = card_inputs(name, str(version), dict(mv.tags or {}), eval_dir, mv.run_id, mv.source)
    artifact_path = model_card_artifact_path(name, str(version))
    with tempfile.TemporaryDirectory(prefix="genops-card-") as tmp:
        card = write_card(Path(tmp) / MODEL_CARD_DIR, inputs)
        with tracking.write_lock():
            client.log_artifacts(mv.run_id, str(card), artifact_path)
            client.set_model_version_tag(name, str(version), MODEL_CARD_TAG, artifact_path)
    return artifact_path


def log_model_cards(versions: Iterable[tuple[str, str, str]], eval_root: Path) -> list[str]:
    """Cards for `(registered name, version, family)` triples; the family picks the eval folder."""
    return [
        log_model_card(name, version, Path(eval_root) / family)
        for name, version, family in dict.fromkeys(versions)
    ]
