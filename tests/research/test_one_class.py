"""The one-class protocol: the kNN scorer, the ensemble, seeds and the CLI, on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.data.dataset import images_path, labels_path, write_idx
from pipelines.training.loop import TrainConfig
from research.one_class import (
    encoder_knn_fitter,
    family_fitter,
    knn_fitter,
    markdown,
    one_class_run,
    standardise,
    summarise,
)
from research.one_class_knn import KnnConfig, KnnScorer, gaussian_blur, translations


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, real_digits) -> object:
    """Real digits, 3 classes: 20 train, 6 val, 8 test per class."""
    x, y = real_digits
    images = (x.squeeze(1) * 255).round().to(torch.uint8).numpy()
    labels = y.numpy().astype(np.uint8)
    out = tmp_path_factory.mktemp("one_class_data")
    rng = np.random.default_rng(0)
    per = {"train": 20, "val": 6, "test": 8}
    picks = {s: [] for s in per}
    for digit in (0, 1, 7):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for split, n in per.items():
            picks[split].append(idx[start : start + n])
            start += n
    for split, chunks in picks.items():
        keep = np.concatenate(chunks)
        write_idx(images_path(out, split), images[keep])
        write_idx(labels_path(out, split), labels[keep])
    return out


@pytest.mark.parametrize(
    "kwargs", [{"k": 0}, {"blur": -1.0}, {"blur": 9.0}, {"shift": -1}, {"shift": 5}]
)
def test_knn_config_rejects_invalid(kwargs) -> None:
    with pytest.raises(ValueError):
        KnnConfig(**kwargs)


def test_blur_and_translations_shapes() -> None:
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(gaussian_blur(x, 0.0), x)
    blurred = gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape
    assert blurred.sum().item() == pytest.approx(x.sum().item(), rel=0.1)
    moved = translations(x, 1)
    assert moved.shape == (9, 4, 1, 28, 28)
    assert torch.equal(moved[4], x)  # the middle translation is the identity


def test_knn_scores_normals_below_anomalies_and_is_shift_tolerant(real_digits) -> None:
    x, y = real_digits
    ones, sevens = x[y == 1][:40], x[y == 7][:10]
    scorer = KnnScorer(KnnConfig()).fit(ones[:30])
    scores = scorer.score(torch.cat([ones[30:], sevens]))
    assert scores.shape == (20,) and np.isfinite(scores).all()
    assert scores[:10].mean() < scores[10:].mean()
    # a training image moved by one pixel is still at distance ~0 from itself (k=1)
    near = KnnScorer(KnnConfig(k=1)).fit(ones[:30]).score(torch.roll(ones[:3], 1, dims=-1))
    assert np.allclose(near, 0.0, atol=1e-5)
    # deterministic, and a blank image gets a finite score
    assert np.array_equal(scores, scorer.score(torch.cat([ones[30:], sevens])))
    assert np.isfinite(scorer.score(torch.zeros(1, 1, 28, 28))).all()


def test_knn_needs_fit_and_enough_normals() -> None:
    with pytest.raises(ValueError):
        KnnScorer().score(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError):
        KnnScorer(KnnConfig(k=3)).fit(torch.rand(2, 1, 28, 28))


def test_standardise_uses_reference_moments() -> None:
    z = standardise(np.array([1.0, 3.0, 5.0]), np.array([1.0, 3.0]))
    assert np.allclose(z, [-1.0, 1.0, 3.0])


def test_one_class_run_with_ensemble(tiny_data) -> None:
    fitters = {
        "knn": knn_fitter(KnnConfig()),
        "knn_raw": knn_fitter(KnnConfig(k=1, blur=0.0, shift=0, cosine=False)),
    }
    results = one_class_run(fitters, tiny_data, digits=(0, 1, 7), ensemble=True, seed=3)
    assert [r["method"] for r in results] == ["knn", "knn_raw", "ensemble(knn+knn_raw)"]
    for r in results:
        assert set(r["per_digit_auroc"]) == {"0", "1", "7"}
        assert 0.5 < r["mean_auroc"] <= 1.0 and 0.0 <= r["val_mean_auroc"] <= 1.0
        assert r["seed"] == 3 and r["test_images"] == 24
    summary = summarise([*results, {**results[0], "seed": 4, "mean_auroc": 0.5}])
    knn = next(s for s in summary if s["method"] == "knn")
    assert knn["seeds"] == [3, 4] and knn["std_auroc"] > 0
    assert "| knn |" in markdown(summary)


def test_the_max_ensemble_is_the_maximum_of_calibrated_atypicalities(tiny_data) -> None:
    """combine="max" is the served champion's rule: each chosen scorer calibrated on the
    digit's validation normals, the maximum of their atypicalities; `ensemble_of` picks the
    scorers, and a scorer outside the run is refused."""
    from models.calibration import Calibration
    from pipelines.data.dataset import load_tensors
    from pipelines.evaluation.metrics import auroc
    from research.one_class import MAX_LOW_FPR, MAX_TARGET_FPR, _combined

    fitters = {
        "knn": knn_fitter(KnnConfig()),
        "knn_raw": knn_fitter(KnnConfig(k=1, blur=0.0, shift=0, cosine=False)),
        "knn_k3": knn_fitter(KnnConfig(k=3, blur=0.0, shift=0)),
    }
    results = one_class_run(
        fitters, tiny_data, digits=(1, 7), ensemble=True, combine="max",
        ensemble_of=("knn", "knn_raw"),
    )  # fmt: skip
    assert [r["method"] for r in results] == [
        "knn", "knn_raw", "knn_k3", "ensemble-max(knn+knn_raw)"
    ]  # fmt: skip
    # the digit-7 figure recomputed by hand from the two scorers' own scores
    tx, ty = load_tensors(tiny_data, "train")
    vx, vy = load_tensors(tiny_data, "val")
    ex, ey = load_tensors(tiny_data, "test")
    stats = []
    for name in ("knn", "knn_raw"):
        score = fitters[name](7, tx[ty == 7], vx[vy == 7])
        calibration = Calibration.fit(score(vx)[(vy == 7).numpy()], MAX_TARGET_FPR, MAX_LOW_FPR)
        stats.append(calibration.statistic(score(ex)))
    by_hand = np.max(stats, 0)
    normal = (ey == 7).numpy()
    assert results[-1]["per_digit_auroc"]["7"] == pytest.approx(
        float(auroc(by_hand[normal], by_hand[~normal]))
    )
    # the mean is the standardised mean, as before
    parts = [(np.array([1.0, 2.0]), np.array([3.0, 5.0]), np.array([1.0, 3.0]))]
    assert np.allclose(_combined(parts, "mean")[1], [1.0, 3.0])
    with pytest.raises(ValueError, match="names no scorer"):
        one_class_run(fitters, tiny_data, digits=(1,), ensemble=True, ensemble_of=("gan",))
    with pytest.raises(ValueError, match="combine"):
        one_class_run(fitters, tiny_data, digits=(1,), ensemble=True, combine="median")


def test_one_class_run_rejects_no_scorer(tiny_data) -> None:
    with pytest.raises(ValueError):
        one_class_run({}, tiny_data)


def test_cli_knn_run_writes_reports(tiny_data, tmp_path) -> None:
    out = tmp_path / "report"
    digits = ["--digit", "0", "--digit", "1", "--digit", "7"]
    result = CliRunner().invoke(
        main,
        ["one-class", "--data-dir", str(tiny_data), "--out", str(out), "--knn-k", "2", *digits],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "one_class.json").read_text())
    assert [r["method"] for r in report["summary"]] == ["knn"]
    assert (out / "one_class.md").read_text().startswith("| method |")
    # digits absent from the data fail with a clear error
    missing = CliRunner().invoke(main, ["one-class", "--data-dir", str(tiny_data), "--digit", "2"])
    assert missing.exit_code != 0 and "digit 2" in str(missing.exception)


def test_cli_rejects_bad_options(tiny_data, tmp_path) -> None:
    runner = CliRunner()
    bad = (
        ["--no-knn"],
        ["--knn-k", "0"],
        ["--seeds", "a,b"],
        ["--encoder-knn", "3"],
        ["--family", "autoencoder", "--encoder-knn-shift", "1"],  # without --encoder-knn
        ["--family", "autoencoder", "--encoder-knn", "3", "--encoder-knn-shift", "5"],
        ["--ensemble-of", "knn"],  # without --ensemble
        ["--ensemble", "--ensemble-of", "gan"],  # not a scorer of this run
        ["--ensemble", "--combine", "median"],
    )
    for args in bad:
        result = runner.invoke(main, ["one-class", "--data-dir", str(tiny_data), *args])
        assert result.exit_code == 2, args
    help_text = runner.invoke(main, ["one-class", "--help"]).output
    options = ("--seeds", "--knn-k", "--knn-shift", "--ensemble", "--combine", "--ensemble-of")
    for option in (*options, "--encoder-knn-shift"):
        assert option in help_text


def test_family_scorer_ensemble_and_rerun_resumes(tiny_data, tmp_path) -> None:
    cfg = TrainConfig(
        steps=4, batch_size=16, val_every=4, checkpoint_every=4, progress=False, num_threads=1
    )
    model_cfg = {"channels": [8, 16], "latent_dim": 4}
    fitters = {
        "knn": knn_fitter(KnnConfig()),
        "autoencoder": family_fitter("autoencoder", model_cfg, cfg, tmp_path),
    }
    first = one_class_run(fitters, tiny_data, digits=(1, 7), ensemble=True)
    assert [r["method"] for r in first] == ["knn", "autoencoder", "ensemble(knn+autoencoder)"]
    assert (tmp_path / "autoencoder" / "seed0" / "7").is_dir()
    # day two: the same run resumes the finished checkpoints and gives the same numbers
    again = one_class_run(fitters, tiny_data, digits=(1, 7), ensemble=True)
    assert [r["per_digit_auroc"] for r in again] == [r["per_digit_auroc"] for r in first]


def test_a_shorter_run_keeps_the_gans_encoder_phase():
    """600 steps of a GAN configured for 1,800 with the encoder from 1,500: encoder from 500."""
    from research.one_class import phases_within

    assert phases_within("gan", {"encoder_start_step": 1500}, 1800, 600) == {
        "encoder_start_step": 500
    }
    assert phases_within("gan", {}, 1800, 600)["encoder_start_step"] == 500  # the default, 1500
    assert phases_within("vae", {"latent_dim": 16}, 1800, 600) == {"latent_dim": 16}


def test_the_encoder_knn_scorer_reads_the_autoencoder_trained_on_the_digit(
    tiny_data, tmp_path
) -> None:
    """The champion's encoder-kNN view per digit: it reuses the `autoencoder` scorer's run
    (no second training), a training normal is its own nearest neighbour (distance ~0 at
    k=1), noise is far, and it joins the ensemble like any scorer."""
    cfg = TrainConfig(
        steps=4, batch_size=16, val_every=4, checkpoint_every=4, progress=False, num_threads=1
    )
    model_cfg = {"channels": [8, 16], "latent_dim": 4}
    fitters = {
        "autoencoder": family_fitter("autoencoder", model_cfg, cfg, tmp_path),
        "autoencoder-eknn": encoder_knn_fitter(model_cfg, cfg, tmp_path, k=2),
    }
    results = one_class_run(fitters, tiny_data, digits=(1, 7), ensemble=True)
    assert [r["method"] for r in results] == [
        "autoencoder",
        "autoencoder-eknn",
        "ensemble(autoencoder+autoencoder-eknn)",
    ]
    assert sorted(p.name for p in (tmp_path / "autoencoder").iterdir()) == ["seed0"]
    assert all(0.0 <= a <= 1.0 for a in results[1]["per_digit_auroc"].values())

    from pipelines.data.dataset import load_tensors

    x, y = load_tensors(tiny_data, "train")
    normals = x[y == 7]
    score = encoder_knn_fitter(model_cfg, cfg, tmp_path, k=1)(7, normals, normals[:6])
    own = score(normals)
    noise = score(torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert own.shape == (len(normals),) and np.abs(own).max() < 1e-5
    assert noise.min() > own.max()
    # with query translations: the minimum over the 9 shifts, so never above the unshifted
    # distance, and a normal moved by a pixel is (nearly) back at its own neighbour
    shifted = encoder_knn_fitter(model_cfg, cfg, tmp_path, k=1, shift=1)(7, normals, normals[:6])
    moved = torch.roll(normals, 1, dims=-1)
    assert (shifted(moved) <= score(moved) + 1e-6).all()
    assert np.median(shifted(moved)) < np.median(score(moved))
    with pytest.raises(ValueError, match="shift"):
        encoder_knn_fitter(model_cfg, cfg, tmp_path, k=1, shift=5)
