"""The ensemble in the pipeline: the build stage (validation normals only), and the register
step treating it as one more anomaly candidate (never a generation one), with the promotion
report showing the tuned suite and the held-out benchmark beside the gate metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.ensemble import Ensemble
from models.io import load_model, save_model, sha256_file
from models.spec import ANOMALY, FAMILIES, GENERATION, WEIGHTS_FILE
from pipelines.data.dataset import SPLITS, images_path, labels_path, write_idx
from pipelines.stages.ensemble import build_ensemble
from tests.models.contract import make_scoring

PARAMS = {
    "evaluate": {"target_fpr": 0.05, "anomaly_low_fpr": 0.01, "anomaly_energy_fpr": 0.01},
    "ensemble": {"members": list(FAMILIES), "combine": "mean", "sampler": "gan"},
}
SPLIT_ROWS = {"train": slice(0, 60), "val": slice(4000, 4120), "test": slice(4500, 4560)}


def write_data(data_dir: Path, real_digits, test_images: np.ndarray | None = None) -> Path:
    images, labels = real_digits
    data_dir.mkdir(parents=True, exist_ok=True)
    for split, rows in SPLIT_ROWS.items():
        pixels = (images[rows, 0].numpy() * 255).round().astype(np.uint8)
        if split == "test" and test_images is not None:
            pixels = test_images
        write_idx(images_path(data_dir, split), pixels)
        write_idx(labels_path(data_dir, split), labels[rows].numpy().astype(np.uint8))
    assert set(SPLITS) == set(SPLIT_ROWS)
    return data_dir


@pytest.fixture(scope="module")
def models_root(tmp_path_factory, real_digits) -> Path:
    root = tmp_path_factory.mktemp("models")
    for family in FAMILIES:
        save_model(make_scoring(family, real_digits[0][:300]), root / family)
    return root


def test_build_stage_fits_on_validation_normals_only(models_root, tmp_path, real_digits):
    data = write_data(tmp_path / "data", real_digits)
    info = build_ensemble(PARAMS, data, models_root, tmp_path / "ens")
    assert info["members"] == list(FAMILIES) and info["n_val"] == 120
    ensemble = load_model(tmp_path / "ens")  # weights + JSON config, like any trained family
    assert isinstance(ensemble, Ensemble) and ensemble.config.combine == "mean"
    extra = json.loads((tmp_path / "ens" / "config.json").read_text())["extra"]
    assert extra["member_weights_sha256"] == {
        f: sha256_file(models_root / f / WEIGHTS_FILE) for f in FAMILIES
    }

    # other test images (here: noise, i.e. anomalies) -> the very same ensemble, byte for byte
    noise = np.random.default_rng(0).integers(0, 256, (60, 28, 28), dtype=np.uint8)
    other = write_data(tmp_path / "data-noise", real_digits, test_images=noise)
    build_ensemble(PARAMS, other, models_root, tmp_path / "ens-noise")
    for name in ("config.json", WEIGHTS_FILE):
        assert (tmp_path / "ens" / name).read_bytes() == (
            tmp_path / "ens-noise" / name
        ).read_bytes()

    # other validation normals -> other calibrations (the fit does read them)
    images, labels = real_digits
    val = (images[4200:4320, 0].numpy() * 255).round().astype(np.uint8)
    write_idx(images_path(other, "val"), val)
    write_idx(labels_path(other, "val"), labels[4200:4320].numpy().astype(np.uint8))
    build_ensemble(PARAMS, other, models_root, tmp_path / "ens-val")
    assert load_model(tmp_path / "ens-val").config.calibrations != ensemble.config.calibrations


def test_build_stage_refuses_bad_settings(models_root, tmp_path, real_digits):
    data = write_data(tmp_path / "data", real_digits)
    for bad in ({"sampler": "diffusion", "members": ["autoencoder"]}, {"members": ["ensemble"]}):
        with pytest.raises(ValueError):
            build_ensemble(PARAMS | {"ensemble": bad}, data, models_root, tmp_path / "x")
    no_ae = {"members": ["gan"], "sampler": "gan", "encoder_knn": 10}
    with pytest.raises(ValueError, match="autoencoder"):
        build_ensemble(PARAMS | {"ensemble": no_ae}, data, models_root, tmp_path / "x")


def test_build_stage_fits_the_encoder_knn_bank_on_the_training_split(
    models_root, tmp_path, real_digits
):
    data = write_data(tmp_path / "data", real_digits)
    settings = {"members": ["autoencoder", "gan"], "sampler": "gan", "encoder_knn": 3}
    info = build_ensemble(PARAMS | {"ensemble": settings}, data, models_root, tmp_path / "ens")
    assert info["encoder_knn"] == 3 and info["members"] == ["autoencoder", "gan"]
    ensemble = load_model(tmp_path / "ens")
    n_train = SPLIT_ROWS["train"].stop - SPLIT_ROWS["train"].start
    assert ensemble.knn_bank.shape[0] == n_train  # the training split, not validation or test
    assert set(ensemble.config.calibrations) == {"autoencoder", "gan", "encoder_knn"}

    # the default's shape: the autoencoder serves the view only, the rest combined by their max
    settings |= {"view_only": ["autoencoder"], "combine": "max"}
    info = build_ensemble(PARAMS | {"ensemble": settings}, data, models_root, tmp_path / "ens2")
    assert info["view_only"] == ["autoencoder"]
    ensemble = load_model(tmp_path / "ens2")
    assert set(ensemble.config.calibrations) == {"gan", "encoder_knn"}
    assert ensemble.config.view_only == ("autoencoder",) and ensemble.config.combine == "max"
    for bad in ({"view_only": ["gan"]}, {"view_only": ["autoencoder"], "encoder_knn": 0}):
        with pytest.raises(ValueError, match="view_only"):
            build_ensemble(PARAMS | {"ensemble": settings | bad}, data, models_root,
                           tmp_path / "x")  # fmt: skip

    # the default's format view: its reference side read from the training split
    settings |= {"format_test": True}
    info = build_ensemble(PARAMS | {"ensemble": settings}, data, models_root, tmp_path / "ens3")
    assert info["format_side"] == 20.0
    ensemble = load_model(tmp_path / "ens3")
    assert ensemble.config.statistics() == ["gan", "encoder_knn", "format"]
    with pytest.raises(ValueError, match="format_test"):
        build_ensemble(PARAMS | {"ensemble": settings | {"format_test": "yes"}}, data,
                       models_root, tmp_path / "x")  # fmt: skip
    # ... at a share of the false-positive budget
    assert info["format_share"] == 1.0
    info = build_ensemble(PARAMS | {"ensemble": settings | {"format_share": 0.2}}, data,
                          models_root, tmp_path / "ens4")  # fmt: skip
    assert info["format_share"] == 0.2
    assert load_model(tmp_path / "ens4").calibrations["format"].target_fpr == pytest.approx(
        0.2 * ensemble.calibrations["format"].target_fpr
    )
    for bad in (0, 1.5, True, "half"):
        with pytest.raises(ValueError, match="format_share"):
            build_ensemble(PARAMS | {"ensemble": settings | {"format_share": bad}}, data,
                           models_root, tmp_path / "x")  # fmt: skip


# ---- the register step -------------------------------------------------------------------------
TUNED, HELD = ("blur", "shapes"), ("letters", "blank")


def _metrics(fd: float, suite: float, held: float, ms: float) -> dict:
    out = {"fd_judge": fd, "suite_auroc_mean": suite, "heldout_auroc_mean": held,
           "anomaly_auroc_mean": (suite + held) / 2, "heldout_auroc_real_mean": held - 0.01,
           "heldout_auroc_min": held - 0.05, "degenerate_flagged_min": 1.0, "test_fpr": 0.05,
           "score_ms_per_image": ms, "score_images_per_s": 1000 / ms}  # fmt: skip
    out |= {f"anomaly_auroc/{k}": suite for k in TUNED}
    return out | {f"heldout_auroc/{k}": held for k in HELD}


def _evaluated(root: Path, family: str, metrics: dict) -> None:
    """What `genops evaluate` leaves for the register step: metrics, bundle run, evidence."""
    from pipelines import tracking
    from pipelines.evaluation.paired import Evidence

    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / f"{family}.json").write_text(json.dumps({"family": family, **metrics}))
    out = root / "eval" / family
    (out / "bundle").mkdir(parents=True)
    (out / "bundle" / "config.json").write_text(json.dumps({"family": family}))
    (out / "metrics.json").write_text(json.dumps(metrics))
    run_id = tracking.log_run(f"evaluate-{family}", params={"family": family},
                              tags={"family": family}, metrics=metrics,
                              artifacts={"model": out / "bundle"})  # fmt: skip
    sha = f"{abs(hash(family)):064d}"[-64:]
    (out / "run.json").write_text(json.dumps({
        "family": family, "data_version": "md5:d1", "weights_sha256": sha,
        "judge_version": "j1", "run_id": run_id}))  # fmt: skip
    rng = np.random.default_rng(0)
    Evidence(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), rng.random(10),
             rng.random(8), np.array(["blur"] * 4 + ["heldout/letters"] * 4)).save(out)  # fmt: skip


def test_register_gates_the_ensemble_as_an_anomaly_candidate_only(tmp_path, monkeypatch):
    from pipelines.stages import register as promotion

    monkeypatch.setenv("GENOPS_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(promotion, "data_version", lambda **_: "md5:d1")
    monkeypatch.setattr(promotion, "judge_version", lambda _: "j1")
    # the ensemble has the best anomaly metric *and* (delegating to the GAN) the GAN's FD
    candidates = {
        "autoencoder": _metrics(fd=30.0, suite=0.97, held=0.98, ms=0.07),
        "gan": _metrics(fd=9.0, suite=0.96, held=0.97, ms=0.4),
        "ensemble": _metrics(fd=9.0, suite=0.975, held=0.99, ms=14.0),
    }
    for family, metrics in candidates.items():
        _evaluated(tmp_path, family, metrics)
    report = promotion.register_and_promote(
        {"registry": {"n_bootstrap": 20}}, list(candidates), tmp_path / "eval",
        tmp_path / "metrics", tmp_path / "reports")  # fmt: skip
    decisions = {d["task"]: d for d in report["decisions"]}
    assert decisions[ANOMALY]["candidate_family"] == "ensemble" and decisions[ANOMALY]["promoted"]
    assert decisions[GENERATION]["candidate_family"] == "gan"  # tie on FD: never the ensemble
    assert report["champions"][ANOMALY]["family"] == "ensemble"

    board = json.loads((tmp_path / "reports" / "leaderboard.json").read_text())
    assert [r["family"] for r in board[GENERATION]] == ["gan", "autoencoder"]
    assert [r["family"] for r in board[ANOMALY]] == ["ensemble", "autoencoder", "gan"]

    breakdown = report[ANOMALY]
    rows = {r["family"]: r for r in breakdown["families"]}
    assert [r["family"] for r in breakdown["families"]] == ["ensemble", "autoencoder", "gan"]
    assert rows["ensemble"]["suite_auroc_mean"] == 0.975
    assert rows["ensemble"]["heldout_auroc_mean"] == 0.99
    assert rows["ensemble"]["score_ms_per_image"] == 14.0
    assert list(breakdown["kinds"]["tuned"]) == list(TUNED)
    assert breakdown["kinds"]["held-out"]["letters"]["gan"] == 0.97

    text = (tmp_path / "reports" / "promotion.md").read_text()
    section = text.split("## Anomaly task: what the gate metric is made of")[1]
    header = next(line for line in section.splitlines() if line.startswith("| family"))
    for column in ("gate metric", "tuned suite mean", "held-out mean", "score ms/image"):
        assert column in header
    ensemble_row = next(line for line in section.splitlines() if line.startswith("| ensemble"))
    assert "| 0.9825 | 0.9750 | 0.9900 |" in ensemble_row and "| 14 |" in ensemble_row
    assert "| held-out | letters | 0.990 | 0.980 | 0.970 |" in section
    assert "| tuned | shapes |" in section
