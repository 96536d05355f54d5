"""The metric table is the one declaration of the metrics people read.

Every metric it lists is produced - by the evaluation or by the evaluate stage, as it says - for
exactly the models it says have it (tiny families trained by the real loop, then measured by
the real evaluate stage); the tasks' rows agree with models.spec.TASKS; and the leaderboard,
the promotion report and the model card show what the table says, in its order.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from models.base import Capabilities
from models.io import load_model
from models.spec import FAMILIES, TASKS, metric_tag
from pipelines.data.dataset import images_path, labels_path, write_idx
from pipelines.evaluation.anomalies import ANOMALY_KINDS
from pipelines.evaluation.heldout import HELDOUT_KINDS
from pipelines.evaluation.metric_table import (
    HELDOUT,
    KIND_SETS,
    METRIC_TABLE,
    METRICS,
    TUNED,
    Direction,
    Place,
    Requires,
    Source,
    shown_in,
    task_metric,
)
from tests.models.contract import TINY

SPLIT_ROWS = {"train": slice(0, 200), "val": slice(4000, 4100), "test": slice(4500, 4600)}
EVALUATE = {"n_samples": 20, "sample_batch_size": 20, "pr_k": 3, "anomaly_per_kind": 3,
            "heldout_per_kind": 2, "score_batch_size": 100, "likelihood_max_images": 16,
            "n_plot": 4}  # fmt: skip
TRAIN = {"steps": 4, "batch_size": 16, "val_every": 2, "val_size": 32, "checkpoint_every": 100,
         "log_every": 2, "progress": False, "device": "cpu", "num_threads": 1}  # fmt: skip


def _write_data(data_dir: Path, real_digits) -> Path:
    images, labels = real_digits
    data_dir.mkdir(parents=True)
    for split, rows in SPLIT_ROWS.items():
        write_idx(
            images_path(data_dir, split), (images[rows, 0].numpy() * 255).round().astype(np.uint8)
        )
        write_idx(labels_path(data_dir, split), labels[rows].numpy().astype(np.uint8))
    return data_dir


def _judge(judge_dir: Path, data_dir: Path) -> Path:
    from pipelines.data.dataset import load_tensors
    from pipelines.evaluation.evaluator import EvalConfig, real_reference, save_reference
    from pipelines.evaluation.judge import save_judge, train_judge

    train, val, test = (load_tensors(data_dir, s) for s in ("train", "val", "test"))
    judge, _ = train_judge(*train, *val, epochs=1, max_steps=2, progress=False)
    save_judge(judge, judge_dir)
    reference = real_reference(judge, train[0], test[0], EvalConfig.from_dict(EVALUATE))
    save_reference(reference, judge_dir / "reference.npz")
    return judge_dir


@pytest.fixture(scope="module")
def measured(tmp_path_factory, real_digits) -> dict[str, dict]:
    """Family -> what the pipeline wrote for it: `stage` (metrics/<family>.json), `evaluation`
    (evaluate_model's own metrics.json), the model's capabilities, whether it has monitors."""
    from pipelines.data.dataset import load_tensors
    from pipelines.stages.evaluate import evaluate_family
    from pipelines.training.loop import TrainConfig, save_trained, train

    root = tmp_path_factory.mktemp("metric-table")
    data = _write_data(root / "data", real_digits)
    judge_dir = _judge(root / "judge", data)
    params = {"evaluate": EVALUATE}
    out = {}
    for family in FAMILIES:
        result = train(family, TINY[family], TrainConfig.from_dict(TRAIN),
                       load_tensors(data, "train"), load_tensors(data, "val"),
                       root / "ckpt" / family)  # fmt: skip
        model_dir = root / "models" / family
        save_trained(result, model_dir)
        history = json.loads((model_dir / "history.json").read_text())
        eval_dir, metrics_file = root / "eval" / family, root / "metrics" / f"{family}.json"
        evaluate_family(params, family, data, model_dir, judge_dir, eval_dir, metrics_file,
                        log_mlflow=False)  # fmt: skip
        out[family] = {
            "stage": json.loads(metrics_file.read_text()),
            "evaluation": json.loads((eval_dir / "metrics.json").read_text()),
            "capabilities": load_model(model_dir).capabilities,
            "monitored": any(k.startswith("warn_") for row in history for k in row),
            "eval_dir": eval_dir,
        }
    return out


def test_every_listed_metric_is_produced_exactly_where_the_table_says(measured):
    for family, m in measured.items():
        for spec in METRIC_TABLE:
            defined = spec.defined(m["capabilities"], m["monitored"])
            assert (spec.key in m["stage"]) == defined, (family, spec.key, defined)
            by_evaluation = spec.source is Source.EVALUATION and defined
            assert (spec.key in m["evaluation"]) == by_evaluation, (family, spec.key)
            if defined:
                value = m["stage"][spec.key]
                assert isinstance(value, int | float) and math.isfinite(value), (family, spec.key)
                spec.format(value), spec.format(value, report=True)  # every format applies
            if defined and spec.baseline:
                assert spec.baseline in m["evaluation"], (family, spec.baseline)
        for kind_set, kinds in ((TUNED, ANOMALY_KINDS), (HELDOUT, HELDOUT_KINDS)):
            assert kind_set.kinds_in(m["stage"]) == set(kinds), (family, kind_set.name)
            assert all(kind_set.flagged(k) in m["stage"] for k in kinds), (family, kind_set.name)
    # the "where defined" rows were exercised both ways where the families differ
    seen = {r: {s.defined(m["capabilities"], m["monitored"]) for s in METRIC_TABLE
                if s.requires is r for m in measured.values()} for r in Requires}  # fmt: skip
    for requirement in (Requires.CONDITIONAL, Requires.LIKELIHOOD, Requires.FAILURE_MONITORS):
        assert seen[requirement] == {True, False}, requirement


def test_one_row_per_key_and_the_tasks_rows_are_models_spec_tasks():
    assert len(METRICS) == len(METRIC_TABLE)
    capability_flags = {f.name for f in fields(Capabilities)}
    assert {r.value for r in Requires} - capability_flags == {Requires.FAILURE_MONITORS.value}
    assert {m.key for m in shown_in(Place.GATE)} == {t.metric for t in TASKS.values()}
    for name, task in TASKS.items():
        spec = task_metric(name)
        assert spec.task == name and Place.GATE in spec.shown
        assert spec.higher_is_better == task.higher_is_better
    for spec in METRIC_TABLE:
        assert spec.shown, spec.key
        if Place.GATE in spec.shown:
            assert spec.direction is not Direction.NEITHER, spec.key


def test_leaderboard_report_and_card_show_the_table(measured):
    from pipelines.evaluation.leaderboard import build_leaderboard, render_markdown
    from pipelines.registry.cards import card_inputs
    from pipelines.registry.cards import render_markdown as card_markdown
    from pipelines.registry.reports import anomaly_breakdown, anomaly_markdown

    stage = {f: m["stage"] for f, m in measured.items()}
    text = render_markdown(build_leaderboard(stage))
    headers = [line for line in text.splitlines() if line.startswith("| Rank |")]
    for line, place, task in zip(headers, (Place.GENERATION_TABLE, Place.ANOMALY_TABLE),
                                 TASKS, strict=True):  # fmt: skip
        cells = [c.strip().rstrip(" ↑↓").lower() for c in line.strip("|").split("|")]
        assert cells[2:-1] == [m.label.lower() for m in shown_in(place, first=task)]
    assert all(f"| {kind_set.title} |" in text for kind_set in KIND_SETS)

    anomaly = TASKS["anomaly"].metric
    report = "\n".join(anomaly_markdown(anomaly_breakdown(stage, anomaly)))
    header = next(line for line in report.splitlines() if line.startswith("| family"))
    labels = [m.label for m in shown_in(Place.REPORT) if m.key != anomaly]
    assert header == f"| family | gate metric `{anomaly}` | " + " | ".join(labels) + " |"

    for family, m in measured.items():
        tags = {metric_tag(k): str(v) for k, v in m["stage"].items() if k != "family"}
        card = card_markdown(card_inputs(f"genops-{family}", "1", tags, m["eval_dir"]))
        section = card.split("## Metrics")[1].split("## ")[0]
        rows = [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines()]
        listed = [s.key for s in shown_in(Place.CARD)
                  if s.defined(m["capabilities"], m["monitored"])]  # fmt: skip
        assert [r for r in rows if r in METRICS] == listed, family
