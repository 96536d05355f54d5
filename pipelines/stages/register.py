"""The register step (`genops register`): leaderboard, candidates, and the fair promotion gate.

Each task's best family (by the one ranking rule in models.spec) is registered and gated against
the task's champion. The champion is measured on the *current* data with the *current* judge
(its logged evidence when it was evaluated on exactly these, a fresh measurement otherwise), and
the decision rests on a paired bootstrap interval of the improvement (pipelines.evaluation.paired).
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import Config, require
from models.io import atomic_write_json
from models.spec import ANOMALY, GENERATION, TASKS, Tag, competes, family_model_name, rank
from pipelines.data.lineage import Overlap, Refusal, champion_overlap, write_unseen
from pipelines.data.versioning import data_version
from pipelines.evaluation.paired import Evidence, paired_bootstrap
from pipelines.evaluation.sequential import SequentialConfig
from pipelines.registry import client as registry
from pipelines.registry.cards import log_model_cards
from pipelines.registry.reports import anomaly_breakdown, history_markdown, promotion_markdown
from pipelines.settings import section
from pipelines.stages.evaluate import RUN_INFO, judge_version, registered_evidence

BASELINES_FILE = "baselines.json"  # benchmarks/bench_baselines.py writes it into metrics/
REFERENCE_FILE = "reference_detectors.json"  # `genops reference-detectors` writes it there
REPORT_FILES = ("leaderboard.json", "leaderboard.md", "promotion.json", "promotion.md")


@dataclass(frozen=True)
class GateConfig(Config):
    """params.yaml `registry`: the margin per task and the paired bootstrap's settings."""

    margin: dict[str, float] = field(default_factory=dict)  # task -> margin (0 when absent)
    sequential: dict[str, Any] = field(default_factory=dict)  # SequentialConfig (generation)
    n_bootstrap: int = 200
    confidence: float = 0.95
    seed: int = 0
    min_unseen: int = 100  # after leaving out what the champion saw: fewer test (or val) -> refuse
    promote_to: str = "champion"  # "challenger": a passing candidate is canaried, not promoted

    def validate(self) -> None:
        bad = sorted(set(self.margin) - set(TASKS))
        require(not bad, f"registry.margin: unknown task(s) {bad}; known: {list(TASKS)}")
        require(
            self.n_bootstrap >= 20, f"registry.n_bootstrap must be >= 20, got {self.n_bootstrap}"
        )
        require(
            0.5 < self.confidence < 1,
            f"registry.confidence must be in (0.5, 1), got {self.confidence}",
        )
        require(
            self.promote_to in ("champion", "challenger"),
            f"registry.promote_to must be champion or challenger, got {self.promote_to!r}",
        )
        self.sequential_config()  # raises ValueError naming the bad key
        require(
            0 <= self.margin_of(GENERATION) < 1,
            "registry.margin.generation is a relative KID improvement, in [0, 1)",
        )

    def sequential_config(self) -> SequentialConfig:
        return SequentialConfig.from_dict(self.sequential)

    def margin_of(self, task: str) -> float:
        return float(self.margin.get(task, 0.0))


def register_and_promote(
    params: dict[str, Any],
    families: list[str],
    eval_root: Path,
    metrics_root: Path,
    report_dir: Path,
    data_dir: Path = Path("data"),
    judge_dir: Path = Path("artifacts/judge"),
) -> dict[str, Any]:
    """Leaderboard -> register every candidate -> gate each task's best against its champion."""
    from pipelines.evaluation.leaderboard import build_leaderboard, load_baselines, render_markdown

    settings = GateConfig.from_dict(section(params, "registry"))
    metrics = {f: json.loads((Path(metrics_root) / f"{f}.json").read_text()) for f in families}
    # textbook baselines measured on this data are shown, never candidates (only `families` are)
    current = data_version(data_dir=data_dir)
    baselines = load_baselines(Path(metrics_root) / BASELINES_FILE, current)
    baselines |= load_baselines(Path(metrics_root) / REFERENCE_FILE, current)  # never candidates
    board = build_leaderboard(metrics, baselines)
    report_dir = Path(report_dir)
    atomic_write_json(report_dir / "leaderboard.json", board)
    (report_dir / "leaderboard.md").write_text(render_markdown(board))

    eval_root = Path(eval_root)
    runs = {f: json.loads((eval_root / f / RUN_INFO).read_text()) for f in families}
    version = data_version(data_dir=data_dir)
    judge = judge_version(judge_dir)
    registered = []  # (registered name, version, family): each gets a model card below
    for family in families:
        name = family_model_name(family)
        registered.append(
            (name, registry.register_candidate(name, runs[family], metrics[family]), family)
        )
    decisions = []
    for task in TASKS.values():
        entrants = [f for f in families if competes(f, task.name)]  # the ensemble: anomaly only
        ranked = rank(entrants, lambda f, m=task.metric: metrics[f].get(m), task.higher_is_better)
        if not ranked or ranked[0][1] is None:
            continue
        best = ranked[0][0]
        candidate = registry.register_candidate(task.registered_model, runs[best], metrics[best])
        registered.append((task.registered_model, candidate, best))
        evidence = Evidence.load(eval_root / best)

        compare = functools.partial(
            _compare, task_name=task.name, family=best, evidence=evidence, params=params,
            settings=settings, eval_root=eval_root, data_dir=data_dir, judge_dir=judge_dir,
        )  # fmt: skip
        decision = registry.gate(
            task,
            candidate,
            best,
            metrics[best],
            version,
            settings.margin_of(task.name),
            compare=compare,
            judge_version=judge,
            promote_to=settings.promote_to,
        )
        decisions.append(decision.to_dict())
    log_model_cards(registered, eval_root)  # after the gate: the cards show its decision
    report = {
        "data_version": version,
        Tag.JUDGE_VERSION: judge,
        "decisions": decisions,
        "champions": registry.registry_state(),
        # what the anomaly gate's metric is made of, per candidate: tuned suite and held-out
        # benchmark means (the metric is their mean), per kind, and the cost per image
        ANOMALY: anomaly_breakdown(
            {f: metrics[f] for f in families if competes(f, ANOMALY)}, TASKS[ANOMALY].metric
        ),
    }
    atomic_write_json(report_dir / "promotion.json", report)
    (report_dir / "promotion.md").write_text(promotion_markdown(report))
    (report_dir / "promotion_history.md").write_text(history_markdown(registry.history()))
    return report


# ---- one comparison: fair items first (lineage), then the task's test ---------------------------
def _overlap(champion_mv: Any, data_dir: Path) -> tuple[Overlap | None, Any, Any]:
    """What of the current test/val splits the champion saw (None: same data version, whose
    splits are disjoint by construction)."""
    theirs = (champion_mv.tags or {}).get(Tag.DATA_VERSION, "")
    if theirs == data_version(data_dir=data_dir):
        return None, None, None
    return champion_overlap(theirs, data_dir, Path(data_dir).resolve().parent)


def _compare(
    champion_mv: Any,
    *,
    task_name: str,
    family: str,
    evidence: Evidence,
    params: dict[str, Any],
    settings: GateConfig,
    eval_root: Path,
    data_dir: Path,
    judge_dir: Path,
) -> tuple[Any, str, dict[str, Any] | None]:
    """(comparison, how the champion was measured, overlap) for `registry.gate`."""
    overlap, test_mask, val_mask = _overlap(champion_mv, data_dir)
    record = overlap.to_dict() if overlap is not None else None
    leak = overlap is not None and overlap.any
    if overlap is not None and not overlap.known:
        return Refusal(overlap.describe(), record), "lineage unknown", record
    if leak and min(overlap.test_unseen, overlap.val_unseen) < settings.min_unseen:
        reason = (f"{overlap.describe()}: too few unseen digits left to compare fairly "
                  f"(registry.min_unseen {settings.min_unseen})")  # fmt: skip
        return Refusal(reason, record), "refused (lineage)", record
    bundle = Path(eval_root) / family / "bundle"
    if task_name == GENERATION:  # fresh samples of both models: the sequential test
        from pipelines.registry.generation_gate import run_generation_gate

        real = evidence.reference_features[test_mask] if leak else evidence.reference_features
        result = run_generation_gate(
            bundle,
            champion_mv,
            judge_dir,
            real,
            settings.margin_of(task_name),
            settings.sequential_config(),
        )
        return result, "fresh samples" + (", unseen test digits" if leak else ""), record
    if leak:  # both measured again on the items neither has seen
        from models.io import load_model
        from pipelines.stages.evaluate import download_registered, measure

        with tempfile.TemporaryDirectory(prefix="genops-unseen-") as tmp:
            unseen = write_unseen(data_dir, Path(tmp) / "data", test_mask, val_mask)
            measure(params, load_model(bundle), unseen, judge_dir, Path(tmp) / "candidate")
            champion = download_registered(champion_mv, Path(tmp) / "model")
            measure(params, champion, unseen, judge_dir, Path(tmp) / "champion")
            mine, champ = (Evidence.load(Path(tmp) / who) for who in ("candidate", "champion"))
        how = "re-measured on unseen items"
    else:
        champ, how = registered_evidence(params, champion_mv, data_dir, judge_dir, evidence)
        mine = evidence
    interval = paired_bootstrap(task_name, mine, champ, n_bootstrap=settings.n_bootstrap,
                                confidence=settings.confidence, seed=settings.seed)  # fmt: skip
    return interval, how, record
