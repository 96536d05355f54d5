"""Two-sided verdicts on a small real model, and the anomaly gate's metric over both benchmarks.

A tiny MLP autoencoder trained for a few seconds on real digits is enough to show the failure
(one-sided: blank, faint and single-dot inputs pass as the most normal digits) and the fix.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import Batch
from models.calibration import Calibration
from models.io import build_model
from pipelines.evaluation.evaluator import EvalConfig, _anomaly, score_images
from pipelines.evaluation.heldout import DEGENERATE_KINDS, HELDOUT_KINDS, build_heldout_benchmark
from pipelines.evaluation.paired import (
    EVIDENCE_FILE,
    HELDOUT_PREFIX,
    Evidence,
    anomaly_task_metric,
    paired_bootstrap,
)

TARGET_FPR = 0.05


@pytest.fixture(scope="module")
def split(real_digits) -> dict[str, torch.Tensor]:
    images, _ = real_digits
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(11))
    parts = {"train": order[:2500], "val": order[2500:3500], "test": order[3500:]}
    return {name: images[idx] for name, idx in parts.items()}


@pytest.fixture(scope="module")
def tiny_ae(split):
    """A 784-128-16 MLP autoencoder, 500 steps of 128 real digits (a few seconds): trained
    enough to reconstruct "nothing" well, which is the failure."""
    torch.manual_seed(0)
    model = build_model("autoencoder", {"arch": "mlp", "hidden_dims": [128], "latent_dim": 16,
                                        "conditional": False})  # fmt: skip
    optimizers, generator = model.configure_optimizers(), torch.Generator().manual_seed(0)
    labels = torch.zeros(len(split["train"]), dtype=torch.long)
    model.train()
    for step in range(500):
        idx = torch.randint(0, len(split["train"]), (128,), generator=generator)
        model.training_step(Batch(split["train"][idx], labels[idx], step, generator), optimizers)
    return model.eval()


def verdicts(cal: Calibration, scores: np.ndarray, images: np.ndarray) -> np.ndarray:
    """The service's verdict, image by image."""
    pairs = zip(scores, images, strict=True)
    return np.array([cal.is_anomaly(score, image) for score, image in pairs])


def test_degenerate_inputs_are_flagged_and_the_test_fpr_stays_at_target(tiny_ae, split):
    val, test = split["val"], split["test"]
    val_scores = score_images(tiny_ae, val, 256)
    one_sided = Calibration.fit(val_scores, TARGET_FPR)
    two_sided = Calibration.fit(val_scores, TARGET_FPR, 0.01, val.numpy(), 0.01)
    images, kinds = build_heldout_benchmark(
        test.numpy(), n_per_kind=20, seed=3, kinds=DEGENERATE_KINDS
    )
    scores = score_images(tiny_ae, torch.from_numpy(images), 256)

    def flagged(cal: Calibration, kind: str) -> float:
        return verdicts(cal, scores[kinds == kind], images[kinds == kind]).mean()

    for kind in DEGENERATE_KINDS:
        assert flagged(two_sided, kind) == 1.0, kind
    for kind in ("blank", "faint", "dot"):  # the failure the two-sided verdict fixes
        assert flagged(one_sided, kind) == 0.0, kind
    test_scores = score_images(tiny_ae, test, 256)
    test_fpr = verdicts(two_sided, test_scores, test.numpy()).mean()
    assert abs(test_fpr - TARGET_FPR) <= 0.02, test_fpr  # 1,500 held-out normals


def test_evaluation_reports_both_benchmarks_and_its_metric_is_the_gates_statistic(
    tiny_ae, split, tmp_path
):
    # labels by position: the content-proxy kinds flip digits picked by class
    splits = {name: (x, torch.arange(len(x)) % 10) for name, x in split.items()}
    cfg = EvalConfig(anomaly_per_kind=10, heldout_per_kind=10)
    out, raw = _anomaly(tiny_ae, splits, cfg, tmp_path)
    assert {f"heldout_auroc/{k}" for k in HELDOUT_KINDS} <= set(out)
    assert out["degenerate_flagged_min"] == 1.0 and abs(out["test_fpr"] - TARGET_FPR) <= 0.02
    assert out["anomaly_auroc_mean"] == pytest.approx(
        (out["suite_auroc_mean"] + out["heldout_auroc_mean"]) / 2
    )
    assert Calibration.load(tmp_path).two_sided and Calibration.load(tmp_path).tests_energy
    ev = Evidence(np.zeros((20, 2)), np.zeros((20, 2)), raw["test"], raw["suite"], raw["kinds"])
    interval = paired_bootstrap("anomaly", ev, ev, n_bootstrap=20)
    assert interval.candidate == pytest.approx(out["anomaly_auroc_mean"], abs=1e-12)


def test_the_task_metric_weighs_both_sets_equally_and_stale_evidence_is_refused(tmp_path):
    aurocs = {"blur": 1.0, "shapes": 0.8, HELDOUT_PREFIX + "photo": 0.5}
    assert anomaly_task_metric(aurocs) == pytest.approx((0.9 + 0.5) / 2)
    assert anomaly_task_metric({"blur": 0.7}) == 0.7
    rng = np.random.default_rng(0)
    kinds = np.repeat(["blur", HELDOUT_PREFIX + "photo"], 100)
    champion = Evidence(np.zeros((5, 2)), np.zeros((5, 2)), rng.normal(0, 1, 200),
                        rng.normal(2, 1, 200), kinds)  # fmt: skip
    better_on_heldout = champion.suite_scores + np.where(kinds == "blur", 0.0, 1.5)
    candidate = Evidence(**{**champion.__dict__, "suite_scores": better_on_heldout})
    assert paired_bootstrap("anomaly", candidate, champion, n_bootstrap=50).ci_low > 0
    champion.save(tmp_path)
    assert Evidence.load(tmp_path).anomaly_statistic == champion.anomaly_statistic
    with np.load(tmp_path / EVIDENCE_FILE) as data:  # as written before two-sided verdicts
        np.savez(
            tmp_path / "old.npz", **{k: data[k] for k in data.files if k != "anomaly_statistic"}
        )
    with pytest.raises(ValueError, match="measure the model again"):
        Evidence.load(tmp_path / "old.npz")
