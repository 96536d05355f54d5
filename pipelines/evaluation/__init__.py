"""Evaluation toolkit: pure functions, no tracking/orchestration code.

Import the modules themselves; this package re-exports nothing (importing it stays cheap).

judge.py        JudgeNet digit classifier (features for FD-judge, probabilities for coverage)
metrics.py      FD, precision/recall, mode coverage, IS, AUROC/AUPR, TPR/FPR at a threshold
anomalies.py    seeded out-of-distribution suite (ANOMALY_KINDS), tuned on
heldout.py      held-out real out-of-distribution benchmark, never tuned on
paired.py       paired evidence of one evaluation and the paired bootstrap of a comparison
plots.py        PNG figures written atomically
evaluate.py     EvalConfig, real_reference, evaluate_model (the contract only)
leaderboard.py  build_leaderboard, render_markdown
"""
