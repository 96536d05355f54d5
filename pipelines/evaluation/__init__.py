"""Evaluation toolkit: pure functions, no tracking/orchestration code.

judge.py        JudgeNet digit classifier (features for FD-judge, probabilities for coverage)
metrics.py      FD, precision/recall, mode coverage, IS, AUROC/AUPR, TPR/FPR at a threshold
anomalies.py    seeded out-of-distribution suite (ANOMALY_KINDS)
plots.py        PNG figures written atomically
evaluate.py     EvalConfig, real_reference, evaluate_model (the contract only)
leaderboard.py  build_leaderboard, render_markdown
"""

from pipelines.evaluation.anomalies import ANOMALY_KINDS, build_anomaly_suite
from pipelines.evaluation.evaluate import (
    EvalConfig,
    evaluate_model,
    load_reference,
    numeric_metrics,
    real_reference,
    save_reference,
)
from pipelines.evaluation.judge import (
    JudgeConfig,
    JudgeNet,
    judge_accuracy,
    judge_outputs,
    load_judge,
    save_judge,
    train_judge,
)
from pipelines.evaluation.leaderboard import build_leaderboard, render_markdown

__all__ = [
    "ANOMALY_KINDS",
    "EvalConfig",
    "JudgeConfig",
    "JudgeNet",
    "build_anomaly_suite",
    "build_leaderboard",
    "evaluate_model",
    "judge_accuracy",
    "judge_outputs",
    "load_judge",
    "load_reference",
    "numeric_metrics",
    "real_reference",
    "render_markdown",
    "save_judge",
    "save_reference",
    "train_judge",
]
