"""Baselines harness: tiny rows trained and evaluated as the pipeline does, results stored with
the data version, mean ± std over seeds, and baseline rows on the leaderboard (never promoted)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipelines.evaluation.leaderboard import (
    baseline_runs,
    build_leaderboard,
    load_baselines,
    render_markdown,
)
from research.baselines import (
    BASELINES,
    Budget,
    RowSpec,
    baseline_specs,
    family_spec,
    read_results,
    results_markdown,
    run_row,
    summarise,
    write_results,
)

DATA_MD5 = "0123456789abcdef0123456789abcdef.dir"
EVALUATE = {"n_samples": 20, "sample_batch_size": 20, "anomaly_per_kind": 2,
            "heldout_per_kind": 2, "score_batch_size": 64, "n_plot": 8,
            "likelihood_max_images": 16, "pr_k": 2}  # fmt: skip
TINY_VAE = {"channels": [8, 16], "hidden_dim": 32, "latent_dim": 4, "kl_warmup_steps": 0}
REQUIRED = {"name", "family", "is_baseline", "seed", "fd_judge", "precision", "recall", "classes",
            "elbo", "train_seconds", "samples_per_s", "data_version"}  # fmt: skip


@pytest.fixture(scope="module")
def workspace(real_digits, tmp_path_factory):
    """data/ (300 digits, with a data.dvc beside it), a tiny judge with its real reference."""
    from pipelines.data.dataset import SplitConfig, write_splits
    from pipelines.evaluation.evaluator import EvalConfig, real_reference, save_reference
    from pipelines.evaluation.judge import JudgeConfig, JudgeNet, save_judge

    root = tmp_path_factory.mktemp("bench")
    images, labels = real_digits
    pick = np.arange(0, 5000, 16)[:300]
    raw = (images[pick].numpy().reshape(-1, 28, 28) * 255).round().astype(np.uint8)
    split = SplitConfig(val_fraction=0.15, test_fraction=0.15)
    write_splits(root / "data", raw, labels[pick].numpy(), split, "test")
    (root / "data.dvc").write_text(f"outs:\n- md5: {DATA_MD5}\n  path: data\n")

    from pipelines.data.dataset import load_tensors

    train_x, _ = load_tensors(root / "data", "train")
    test_x, _ = load_tensors(root / "data", "test")
    with torch.random.fork_rng():  # an untrained judge measures as well for this test
        torch.manual_seed(0)
        judge = JudgeNet(JudgeConfig()).eval()
    save_judge(judge, root / "judge")
    reference = real_reference(judge, train_x, test_x, EvalConfig.from_dict(EVALUATE))
    save_reference(reference, root / "judge" / "reference.npz")
    params = {"train": {"val_every": 5, "val_size": 50, "log_every": 5}, "evaluate": EVALUATE}
    return root, params


def test_harness_trains_two_tiny_rows_and_stores_them_with_the_data_version(workspace):
    root, params = workspace
    specs = [
        RowSpec("tiny-mlp", "vae", {"arch": "mlp", "hidden_dim": 16, "latent_dim": 4},
                {"steps": 1_000_000, "batch_size": 32}, True),
        RowSpec("vae", "vae", TINY_VAE, {"steps": 3, "batch_size": 32}, False),
    ]  # fmt: skip
    budget = Budget(0.3, "cpu")
    rows = [
        run_row(spec, 0, budget, params, root / "data", root / "judge", probe_cpu_s=0.05,
                log=lambda _: None)
        for spec in specs
    ]  # fmt: skip
    out = root / "metrics" / "baselines.json"
    payload = write_results(out, rows)
    stored = json.loads(out.read_text())
    assert stored == json.loads(json.dumps(payload))
    assert [r["name"] for r in stored["rows"]] == ["tiny-mlp", "vae"]
    for row in stored["rows"]:
        assert set(row) >= REQUIRED
        assert row["data_version"] == DATA_MD5
        assert math.isfinite(row["fd_judge"]) and 0 <= row["precision"] <= 1
        assert row["elbo"] < 0 and row["metrics"]["elbo_nats"] == row["elbo"]
        assert row["budget_kind"] == "cpu" and row["threads"] == 1
    baseline, family = stored["rows"]
    assert baseline["is_baseline"] and not family["is_baseline"]
    # the budget, not the configured million steps, stopped the baseline: it is capped
    assert baseline["capped"] and 1 <= baseline["steps"] < 1_000_000
    # the family row's 3 configured steps fit in the budget: not capped
    assert family["steps"] == 3 and not family["capped"]
    assert not list(root.glob("**/genops-bench-*"))  # temporary checkpoints removed
    assert "tiny-mlp (capped)" in results_markdown(stored["summary"], DATA_MD5)


def _row(name: str, seed: int, fd: float, version: str = DATA_MD5, **extra) -> dict:
    metrics = {"fd_judge": fd, "precision": 0.5 + seed / 10, "params": 1000.0}
    return {"name": name, "family": "vae", "is_baseline": True, "seed": seed, "fd_judge": fd,
            "precision": metrics["precision"], "recall": 0.4, "classes": 10.0, "elbo": -100.0,
            "train_seconds": 1.0, "train_cpu_seconds": 60.0, "samples_per_s": 1e4,
            "steps": 100, "capped": True, "data_version": version, "metrics": metrics,
            **extra}  # fmt: skip


def test_mean_and_sample_std_over_seeds_per_row_and_data_version(tmp_path):
    rows = [_row("mlp-vae", 0, 10.0), _row("mlp-vae", 1, 12.0), _row("mlp-vae", 2, 14.0),
            _row("mlp-vae", 0, 99.0, version="older.dir")]  # fmt: skip
    summary = summarise(rows)
    entry = summary[f"mlp-vae@{DATA_MD5}"]
    assert entry["seeds"] == [0, 1, 2] and entry["capped"]
    assert entry["stats"]["fd_judge"] == {"mean": 12.0, "spread": pytest.approx(2.0), "n": 3}
    assert entry["stats"]["precision"]["spread"] == pytest.approx(0.1)
    assert "seed" not in entry["stats"]
    assert summary["mlp-vae@older.dir"]["stats"]["fd_judge"]["mean"] == 99.0
    assert "12 ± 2" in results_markdown(summary, DATA_MD5)
    assert "99" not in results_markdown(summary, DATA_MD5)  # other data: not in this table
    # a rerun of a seed replaces its row; other rows are kept
    path = tmp_path / "baselines.json"
    write_results(path, rows)
    write_results(path, [_row("mlp-vae", 2, 20.0)])
    stored = read_results(path)
    assert len(stored["rows"]) == 4
    assert stored["summary"][f"mlp-vae@{DATA_MD5}"]["stats"]["fd_judge"]["mean"] == 14.0


def test_baseline_specs_and_family_spec():
    specs = {s.name: s for s in baseline_specs()}
    assert set(specs) == set(BASELINES) == {"mlp-vae", "dcgan", "ddpm"}
    assert all(s.is_baseline for s in specs.values())
    assert specs["mlp-vae"].model["arch"] == "mlp" and specs["mlp-vae"].model["latent_dim"] == 20
    assert specs["dcgan"].model["conditional"] is False and specs["dcgan"].model["ema_decay"] == 0
    assert specs["ddpm"].model["objective"] == "eps" and specs["ddpm"].model["sample_steps"] == 50
    from models.io import build_model

    for spec in specs.values():  # every baseline is a valid config of its family
        assert build_model(spec.family, spec.model).family == spec.family
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_specs(["pixelcnn"])
    params = {"train": {"batch_size": 64}, "vae": {"model": {}, "train": {"steps": 7}}}
    spec = family_spec(params, "vae", {"latent_dim": 16}, {"steps": 9})
    assert spec.name == "vae[latent_dim=16,train.steps=9]" and not spec.is_baseline
    assert spec.train["steps"] == 9 and spec.train["batch_size"] == 64
    assert family_spec(params, "vae").name == "vae"
    with pytest.raises(ValueError, match="kind"):
        Budget(10, "gpu")


def test_cli_help_and_argument_checks(capsys):
    from benchmarks.bench_baselines import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "--budget-s" in capsys.readouterr().out
    args = parse_args(["--families", "vae", "--set", "latent_dim=16", "--seeds", "0", "1"])
    assert args.baselines is None and args.families == ["vae"] and args.seeds == [0, 1]
    assert args.overrides == [("latent_dim", 16)]
    assert parse_args([]).baselines == list(BASELINES)
    with pytest.raises(SystemExit):
        parse_args(["--baselines", "mlp-vae", "--budget-s", "0"])


# ---- the leaderboard ------------------------------------------------------------------------
FAMILY_METRICS = {
    "vae": {"fd_judge": 150.0, "anomaly_auroc_mean": 0.97, "params": 1e6},
    "gan": {"fd_judge": 9.0, "anomaly_auroc_mean": 0.98, "params": 1e6},
}


def _results(*rows: dict) -> dict:
    return {"format": 1, "rows": list(rows)}


def test_leaderboard_shows_baselines_under_their_family_marked_and_unranked():
    results = _results(_row("mlp-vae", 0, 1.0), _row("mlp-vae", 1, 3.0),
                       _row("stale", 0, 0.5, version="older.dir"))  # fmt: skip
    board = build_leaderboard(FAMILY_METRICS, baseline_runs(results, DATA_MD5))
    assert set(board["baselines"]) == {"mlp-vae"}  # another data version's row is left out
    entry = board["baselines"]["mlp-vae"]
    assert entry["is_baseline"] and entry["family"] == "vae" and entry["n_runs"] == 2
    # the best FD on the board is a baseline's, yet the ranking holds families only
    for task in board["tasks"]:
        assert {r["family"] for r in board[task]} == set(FAMILY_METRICS)
    assert [r["family"] for r in board["generation"]] == ["gan", "vae"]
    text = render_markdown(board)
    generation = text.split("## Anomaly detection")[0]
    lines = [line for line in generation.splitlines() if line.startswith("| ")]
    assert lines[1].startswith("| 1 | gan |") and lines[2].startswith("| 2 | vae |")
    assert lines[3].startswith("| — | ↳ baseline: mlp-vae (capped) | 2 ± 1.4 |")
    assert "never ranked and never candidates for promotion" in text
    assert "baseline" not in text.split("## Anomaly detection")[1]


def test_leaderboard_without_baselines_file_is_unchanged(tmp_path):
    assert load_baselines(tmp_path / "missing.json", DATA_MD5) == {}
    plain = render_markdown(build_leaderboard(FAMILY_METRICS))
    assert plain == render_markdown(build_leaderboard(FAMILY_METRICS, {}))
    assert "baseline" not in plain
    with pytest.raises(ValueError, match="clash"):
        build_leaderboard(FAMILY_METRICS, {"vae": {"family": "vae", "runs": [{}]}})


def test_a_baseline_is_never_registered_or_promoted(tmp_path, monkeypatch):
    """The register step with a baseline far better than every family on every task: only
    families are registered and gated, while the leaderboard shows the baseline."""
    from pipelines.registry import client as registry
    from pipelines.stages import register as promotion

    metrics_root, eval_root = tmp_path / "metrics", tmp_path / "eval"
    metrics_root.mkdir()
    for family, values in FAMILY_METRICS.items():
        (metrics_root / f"{family}.json").write_text(json.dumps(values))
        (eval_root / family).mkdir(parents=True)
        (eval_root / family / "run.json").write_text(json.dumps({"run_id": family}))
    best = _row("mlp-vae", 0, 0.1)
    best["metrics"] |= {"anomaly_auroc_mean": 1.0}
    (metrics_root / "baselines.json").write_text(json.dumps(_results(best)))
    reference = {"name": "knn", "family": "reference", "is_baseline": True, "is_reference": True,
                 "data_version": DATA_MD5, "metrics": {"anomaly_auroc_mean": 1.0}}  # fmt: skip
    (metrics_root / "reference_detectors.json").write_text(json.dumps(_results(reference)))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (tmp_path / "data.dvc").write_text(f"outs:\n- md5: {DATA_MD5}\n  path: data\n")

    registered, gated = [], []

    def register_candidate(name, run, metrics):
        registered.append(run["run_id"])
        return "1"

    def gate(task, candidate, family, metrics, version, margin, compare, judge_version, **_):
        gated.append(family)
        return SimpleNamespace(to_dict=lambda: {"task": task.name, "family": family})

    monkeypatch.setattr(registry, "register_candidate", register_candidate)
    monkeypatch.setattr(registry, "gate", gate)
    monkeypatch.setattr(registry, "registry_state", lambda: {})
    monkeypatch.setattr(registry, "history", lambda: [])
    monkeypatch.setattr(promotion, "judge_version", lambda _: "judge")
    monkeypatch.setattr(promotion, "log_model_cards", lambda *a, **k: None)
    monkeypatch.setattr(promotion.Evidence, "load", classmethod(lambda cls, path: None))
    monkeypatch.setattr(promotion, "promotion_markdown", lambda report: "")
    monkeypatch.setattr(promotion, "history_markdown", lambda events: "")
    params = {"registry": {}}
    promotion.register_and_promote(params, list(FAMILY_METRICS), eval_root, metrics_root,
                                   tmp_path / "reports", data_dir=data_dir)  # fmt: skip
    assert set(registered) <= set(FAMILY_METRICS) and set(gated) <= set(FAMILY_METRICS)
    assert gated  # the gate ran, on families
    board = json.loads((tmp_path / "reports" / "leaderboard.json").read_text())
    assert board["baselines"]["mlp-vae"]["is_baseline"]
    assert board["baselines"]["knn"]["reference"]
    markdown = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "↳ baseline: mlp-vae" in markdown and "↳ reference: knn" in markdown
