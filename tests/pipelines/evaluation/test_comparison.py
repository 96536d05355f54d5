"""The measured comparison table and the training-warning counts behind its stability column."""

from __future__ import annotations

from pipelines.evaluation.leaderboard import build_leaderboard, render_markdown
from pipelines.stages.evaluate import training_warnings


def _family(fd: float, train_s: float, ms: float, **extra) -> dict:
    cost = {"train_wall_time_s": train_s, "sample_ms_per_image": ms, "params": 1e5}
    return {"fd_judge": fd, "recall": 0.8, "anomaly_auroc_mean": 0.9, **cost, **extra}


def test_training_warnings_count_windows_per_monitor():
    history = [
        {"step": 20, "loss": 1.0, "warn_d_collapse": 0.0, "warn_mode_collapse": 0.5},
        {"step": 40, "loss": 1.0, "warn_d_collapse": 0.2, "warn_mode_collapse": 0.0},
        {"step": 60, "loss": 1.0, "warn_d_collapse": 0.0, "warn_mode_collapse": 0.0},
        {"step": 60, "val_loss": 0.9},  # validation rows carry no monitor
    ]
    counts = training_warnings(history)
    assert counts == {
        "train_warn_d_collapse_windows": 1.0,
        "train_warn_mode_collapse_windows": 1.0,
        "train_warning_windows": 2.0,
        "train_log_windows": 3.0,
    }
    assert training_warnings([{"step": 20, "loss": 1.0}]) == {}  # a family without monitors


def test_comparison_table_ranks_each_column_with_stars():
    board = build_leaderboard({
        "gan": _family(9.0, 300, 0.1, train_warning_windows=2.0, train_log_windows=90.0),
        "diffusion": _family(5.0, 400, 14.0),
        "vae": _family(50.0, 60, 0.05),
    })  # fmt: skip
    text = render_markdown(board)
    table = text.split("## The comparison table, measured")[1]
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    rows = {line.split("|")[1].strip(): line for line in lines}
    assert "★★★ FD-judge 5" in rows["diffusion"] and "★ FD-judge 50" in rows["vae"]
    assert "★★★ 60 s" in rows["vae"] and "★ 400 s" in rows["diffusion"]  # cheapest to train
    assert "★★★ 0.05 ms/sample" in rows["vae"] and "★ 14 ms/sample" in rows["diffusion"]
    assert "2 of 90 logged windows flagged" in rows["gan"]
    assert "no failure monitor" in rows["vae"]
