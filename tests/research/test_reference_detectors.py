"""Reference detectors: the Mahalanobis detector's arithmetic, both detectors measured by the
families' own evaluation on real digits (`genops reference-detectors`), and their rows on the
leaderboard's anomaly tables, never ranked and never registered."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipelines.evaluation.anomalies import ANOMALY_KINDS
from pipelines.evaluation.leaderboard import baseline_runs, build_leaderboard, render_markdown
from research.reference_detectors import REFERENCE_FAMILY, MahalanobisDetector
from tests.pipelines.evaluation.test_metric_table import EVALUATE, _judge, _write_data

DATA_MD5 = "0123456789abcdef0123456789abcdef.dir"


def test_mahalanobis_is_the_smallest_distance_to_a_class_mean_under_the_shared_covariance():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(4, 4))
    means = np.array([[0, 0, 0, 0], [6, 0, 0, 0], [0, 6, 0, 0]], dtype=np.float64)
    labels = np.repeat([0, 1, 2], 400)
    x = means[labels] + rng.normal(size=(1200, 4)) @ mix
    detector = MahalanobisDetector(ridge=0.0).fit(x, labels)
    fitted_means = np.stack([x[labels == c].mean(0) for c in range(3)])
    within = x - fitted_means[labels]
    precision = np.linalg.inv(within.T @ within / len(x))
    probe = np.array([[0.5, 0.2, -0.1, 0.3], [6.2, 0.1, 0, 0], [30, 30, 30, 30]])
    expected = [min((p - m) @ precision @ (p - m) for m in fitted_means) for p in probe]
    np.testing.assert_allclose(detector.score(probe), expected, rtol=1e-8)
    assert detector.score(probe)[2] > 100 * detector.score(probe)[:2].max()
    assert np.median(detector.score(x)) == pytest.approx(4.0, rel=0.2)  # chi-square, 4 dof
    with pytest.raises(ValueError, match="fit"):
        MahalanobisDetector().score(probe)
    with pytest.raises(ValueError, match="features"):
        MahalanobisDetector().fit(x[:3], labels[:3])


def test_the_command_measures_both_detectors_with_the_evaluation_of_the_families(
    tmp_path, real_digits
):
    """Real digits (200 train, 100 val, 100 test), a briefly trained judge: both detectors get
    every metric the families' anomaly evaluation gives, calibrated the same way, and the
    results file keeps other detectors' and other data versions' rows."""
    from pipelines.cli import main as cli
    from pipelines.data.versioning import data_version

    data_dir = _write_data(tmp_path / "data", real_digits)
    judge_dir = _judge(tmp_path / "judge", data_dir)
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"evaluate": EVALUATE}))
    results = tmp_path / "reference_detectors.json"
    stale = {"name": "knn", "family": REFERENCE_FAMILY, "is_baseline": True,
             "data_version": "older.dir", "metrics": {}}  # fmt: skip
    results.write_text(json.dumps({"rows": [stale]}))
    args = ["--params", str(params), "reference-detectors", "--data-dir", str(data_dir),
            "--judge-dir", str(judge_dir), "--results", str(results),
            "--out", str(tmp_path / "out"), "--threads", "1"]  # fmt: skip
    outcome = CliRunner().invoke(cli, args)
    assert outcome.exit_code == 0, outcome.output
    rows = json.loads(results.read_text())["rows"]
    version = data_version(data_dir=data_dir)
    assert [(r["name"], r["data_version"]) for r in rows] == [
        ("knn", "older.dir"), ("knn", version), ("mahalanobis", version)
    ]  # fmt: skip
    for row in rows[1:]:
        m = row["metrics"]
        assert (
            row["is_reference"]
            and row["family"] == REFERENCE_FAMILY
            and row["n_test_scored"] == 100
        )
        assert {f"anomaly_auroc/{k}" for k in ANOMALY_KINDS} <= set(m)
        assert 0.0 <= m["anomaly_auroc_mean"] <= 1.0 and m["val_fpr"] <= 0.05
        assert (tmp_path / "out" / row["name"] / "calibration.json").is_file()
    assert rows[1]["bank"] == 200  # the whole training split
    # kNN on real digits: inverted digits and noise are nothing like any training digit
    assert rows[1]["metrics"]["anomaly_auroc/inverted"] > 0.95
    # run again with one detector: its row is replaced, the other kept
    again = CliRunner().invoke(cli, [*args, "--detector", "knn", "--knn-bank", "50"])
    assert again.exit_code == 0, again.output
    rows = json.loads(results.read_text())["rows"]
    assert [(r["name"], r.get("bank")) for r in rows if r["data_version"] == version] == [
        ("mahalanobis", None), ("knn", 50)
    ]  # fmt: skip
    missing = CliRunner().invoke(cli, [*args[:-2], "--judge-dir", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "no trained judge" in missing.output


def _reference(name: str, auroc: float) -> dict:
    metrics = {"anomaly_auroc_mean": auroc, "anomaly_auroc/blur": auroc, "fd_judge": 0.1}
    return {"name": name, "family": REFERENCE_FAMILY, "is_baseline": True, "is_reference": True,
            "data_version": DATA_MD5, "metrics": metrics}  # fmt: skip


def test_reference_rows_sit_in_the_anomaly_tables_only_and_are_never_ranked():
    families = {
        "vae": {"fd_judge": 150.0, "anomaly_auroc_mean": 0.97, "anomaly_auroc/blur": 0.9},
        "gan": {"fd_judge": 9.0, "anomaly_auroc_mean": 0.98, "anomaly_auroc/blur": 0.8},
    }
    refs = baseline_runs({"rows": [_reference("knn", 0.999), _reference("mahalanobis", 0.5)]},
                         DATA_MD5)  # fmt: skip
    board = build_leaderboard(families, refs)
    for task in board["tasks"]:  # better than every family, yet never in a ranking
        assert {r["family"] for r in board[task]} == set(families)
    text = render_markdown(board)
    generation, anomaly = text.split("## Anomaly detection")
    assert "reference" not in generation and "baseline" not in generation
    table = [line for line in anomaly.splitlines() if line.startswith("| ")]
    assert table[1].startswith("| 1 | gan |") and table[2].startswith("| 2 | vae |")
    assert table[3].startswith("| — | ↳ reference: knn | 0.999 |")
    assert table[4].startswith("| — | ↳ reference: mahalanobis | 0.500 |")
    per_kind = anomaly.split("### Per kind")[1]
    assert "| Set | Kind | gan | vae | knn (reference) | mahalanobis (reference) |" in per_kind
    assert "| tuned suite | blur | 0.800 | 0.900 | 0.999 | 0.500 |" in per_kind
    assert "never ranked, never promoted" in anomaly


def test_the_score_study_candidates_on_real_digits(real_digits):
    """benchmarks/bench_scores.py's parts: the class Gaussians rank codes far from every class
    above codes of the class; the compressed length is longer for noise than for a digit; a
    combination fitted on validation normals flags about the budget of held-out normals."""
    from benchmarks.bench_scores import (
        class_gaussians,
        combine,
        compressed_length,
        gaussian_over_scores,
    )
    from pipelines.evaluation.evaluator import EvalConfig

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 60)
    codes = rng.normal(size=(600, 3)) + 8.0 * np.eye(10, 3)[labels]
    nll = class_gaussians(codes, labels)
    assert nll(np.array([[40.0, 40.0, 40.0]]))[0] > nll(codes).max()

    images = real_digits[0][:400].numpy()
    noise = rng.random((5, 1, 28, 28)).astype(np.float32)
    assert compressed_length(noise).min() > compressed_length(images).max()

    def ink(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).mean(1) + 1e-3

    cfg = EvalConfig.from_dict(EVALUATE)
    mean_of = combine({"recon": ink, "length": compressed_length}, images[:200], "mean", cfg)
    learned = gaussian_over_scores({"ink": ink, "length": compressed_length}, images[:200])
    for score in (mean_of, learned):
        normal = score(images[200:])
        assert score(noise).min() > np.quantile(normal, 0.95)
