"""Evaluation toolkit: pure functions, no tracking/orchestration code.

Import the modules themselves; this package re-exports nothing (importing it stays cheap).

evaluator.py     EvalConfig, real_reference, evaluate_model (the model contract only)
metric_table.py  every metric declared once: key, label, direction, format, task, where shown
metrics.py       FD, precision/recall, mode coverage, IS, AUROC/AUPR, TPR/FPR at a threshold
judge.py         JudgeNet digit classifier (features for FD-judge, probabilities for coverage)
anomalies.py     seeded out-of-distribution suite (ANOMALY_KINDS), tuned on
heldout.py       held-out real out-of-distribution benchmark, never tuned on
denoising.py     the denoising demonstration (corrupted test digits cleaned up by a model)
paired.py        paired evidence of one evaluation and the paired bootstrap of a comparison
sequential.py    the generation gate's sequential test on fresh samples
plots.py         PNG figures written atomically
leaderboard.py   build_leaderboard, render_markdown (iterates metric_table)
"""
