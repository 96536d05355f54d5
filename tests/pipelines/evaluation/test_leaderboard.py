"""Leaderboard: per-task ranking order, multi-seed mean ± spread, Markdown rendering."""

from __future__ import annotations

import math

import pytest

from pipelines.evaluation.leaderboard import build_leaderboard, render_markdown

METRICS = {
    "autoencoder": {"fd_judge": 30.0, "anomaly_auroc_mean": 0.95, "params": 50_000},
    "gan": [
        {"fd_judge": 4.0, "anomaly_auroc_mean": 0.70, "params": 900_000},
        {"fd_judge": 6.0, "anomaly_auroc_mean": 0.80, "params": 900_000},
    ],
    "diffusion": {"fd_judge": 2.0, "anomaly_auroc_mean": 0.90, "params": 2_500_000},
    "vae": {"anomaly_auroc_mean": float("nan"), "elbo_nats": -95.5, "family": "vae"},
}


def test_generation_ranked_by_fd_ascending_and_anomaly_by_auroc_descending():
    board = build_leaderboard(METRICS)
    assert [r["family"] for r in board["generation"]] == ["diffusion", "gan", "autoencoder", "vae"]
    assert [r["rank"] for r in board["generation"]] == [1, 2, 3, None]
    assert [r["family"] for r in board["anomaly"]] == ["autoencoder", "diffusion", "gan", "vae"]
    assert board["anomaly"][-1]["rank"] is None  # NaN is "missing", ranked last
    assert board["tasks"]["generation"] == {"metric": "fd_judge", "higher_is_better": False}


def test_several_seeds_give_mean_and_sample_std():
    board = build_leaderboard(METRICS)
    fd = board["families"]["gan"]["metrics"]["fd_judge"]
    assert fd == {"mean": 5.0, "spread": pytest.approx(math.sqrt(2.0)), "n": 2}
    assert board["families"]["gan"]["n_runs"] == 2
    assert board["families"]["diffusion"]["metrics"]["fd_judge"]["spread"] == 0.0
    assert "family" not in board["families"]["vae"]["metrics"]  # non-numeric keys skipped


def test_markdown_has_both_ranked_tables_with_spread_and_placeholders():
    text = render_markdown(build_leaderboard(METRICS))
    generation, anomaly = text.split("## Anomaly detection")
    rows = [line for line in generation.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[1] for row in rows] == ["diffusion", "gan", "autoencoder", "vae"]
    assert "5 ± 1.4" in generation and "0.750 ± 0.071" in generation  # gan's fd and auroc
    assert "| 1 | autoencoder | 0.950 |" in anomaly
    assert "-95.5" in generation and "—" in generation
    assert "2.50M" in generation and "50.0k" in generation


def test_empty_input_raises():
    with pytest.raises(ValueError):
        build_leaderboard({})
    with pytest.raises(ValueError, match="gan"):
        build_leaderboard({"gan": []})


def test_tuned_suite_and_held_out_benchmark_side_by_side_per_kind_and_family():
    per_kind = {
        "autoencoder": {"anomaly_auroc_mean": 0.95, "suite_auroc_mean": 0.97,
                        "heldout_auroc_mean": 0.93, "anomaly_auroc/shapes": 0.9,
                        "anomaly_auroc/blur": 0.99, "heldout_auroc/letters": 0.86,
                        "heldout_auroc/blank": 1.0, "heldout_tpr/blank": 1.0},
        "gan": {"anomaly_auroc_mean": 0.90, "anomaly_auroc/blur": 0.8,
                "heldout_auroc/letters": 0.7, "heldout_tpr/letters": 0.25},
    }  # fmt: skip
    text = render_markdown(build_leaderboard(per_kind))
    assert "| 1 | autoencoder | 0.950 | 0.970 | 0.930 |" in text
    table = text.split("### Per kind")[1].split("## The comparison table")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == "| Set | Kind | autoencoder | gan |"
    assert rows[1:] == [  # the suites' own kind order, tuned first; missing cells as "—"
        "| tuned suite | blur | 0.990 | 0.800 |",
        "| tuned suite | shapes | 0.900 | — |",
        "| held-out | letters | 0.860 | 0.700 (25%) |",
        "| held-out | blank | 1.000 (100%) | — |",
    ]
