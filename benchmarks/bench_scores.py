"""Which anomaly score sees what reconstruction misses (issue 24): candidate scores built from a
trained autoencoder (and, with --knn, the kNN reference), each measured exactly as evaluation
measures a family (pipelines.evaluation.evaluator.detection_metrics: calibrated on validation
normals with the two-sided budget and the energy test, AUROC on the test normals vs the tuned
suite and vs the held-out benchmark).

The protocol: the candidates and the choice rule are fixed before anything is scored; a
candidate is *chosen* on the tuned suite's mean AUROC and the validation split only (combinations
are fitted on validation normals only); the held-out benchmark is printed once, beside, and
never used to choose.

Candidates (names as printed):
  recon          the autoencoder's reconstruction MSE (the family's score today)
  latent         latent density: the smallest -log N(z; mu_c, Sigma_c) over the ten digit
                 classes, Gaussians fitted on the training split's latent codes
  complexity     Serra et al. 2020's input-complexity correction, for a reconstruction error:
                 log(MSE) - log(zlib-compressed length of the uint8 image)
  recon+latent   mean of the two scores' atypicalities, each calibrated on validation normals
  max(recon,latent)  their maximum (a union of the two tests)
  recon+complexity   mean of recon's and complexity's atypicalities (added after the first
                 run had printed complexity's held-out rows: its held-out figures are not clean)
  gauss(recon,latent,complexity)  a Gaussian fitted on the validation normals' score vectors,
                 scored by Mahalanobis distance (the issue's "learned combination fitted on
                 validation normals only"; written after the first print, same caveat)
  knn            the kNN reference (--knn), and recon+knn, recon+latent+knn (means as above)
  ren@R          Ren et al. 2019's likelihood ratio (--ren, added in a second round, before
                 its first run): a background model of the same family and config, trained by
                 the product's trainer (same steps and seed) on the training digits with each
                 pixel replaced by a uniform draw with probability R (R = 0.1, 0.2, 0.3, Ren et
                 al.'s range); the score is -log p_model(x) + log p_background(x), the
                 likelihood being the family's own (the autoencoder's Bernoulli decoder: the
                 summed binary cross-entropy of its reconstruction; the VAE's: its -ELBO)
  recon+ren@0.2, max(recon,ren@0.2)   the mean and the maximum of the two atypicalities

With --graham (a third round, fixed before its first run; --family diffusion): Graham et al.
2023's multi-noise-level reconstruction. Each image is noised to every level t in
GRAHAM_LEVELS (100, 200, ..., 900 of 1,000) with one fixed noise image per level, brought back
by the family's own DDIM scoring path (one-shot x0 estimate, null label), and its per-level
MSE z-scored against the validation normals' mean and std at that level. Graham et al. also
use LPIPS, which needs pretrained weights from the network; MSE alone here.
  diffusion      the diffusion family's own score (levels 500-700, two draws: today's)
  graham         the mean of the nine per-level z-scores (the paper's combination)
  gauss(levels)  a Gaussian over the nine per-level log-MSEs of the validation normals,
                 scored by Mahalanobis distance (the learned combination)
  ae, ae+graham  the autoencoder's reconstruction MSE (read from --models) and the mean of its
                 and graham's atypicalities
--per-level (a diagnostic, run after those figures were printed) instead prints each level's
raw MSE alone as a one-sided score: AUROC of 100 glyphs of each glyph kind (seed
evaluate.heldout_seed) against the first 1,000 test digits.

A fourth round (each option fixed before its first run; docs/anomaly.md "Fourth round"):
  --conditional N  (--family diffusion, a diagnostic like --per-level, against the first N test
                 digits, tuned-suite kinds too) one-step reconstruction at t = 300, 500, 700
                 with each digit label and with the null label: null@t, min_c@t (the smallest
                 error over the ten labels), their gap and log-ratio, and means over the levels
  --memory       the autoencoder's memory reconstruction: mem@k compares an image with the
                 decodings of the k nearest training codes (k = 1, 3, 10; MemAE-like, Gong et
                 al. 2019, no retraining); recon+mem@k the mean of the two atypicalities
  --discriminator  (--family gan) the GAN's critic: gan (its score), -D(x) (the real/fake
                 logit), Dknn@k (mean cosine distance to the k nearest training digits in D's
                 unit-length penultimate features, k = 1, 10), gan+Dknn@k. With --bank-sizes
                 (rule: the smallest bank within 0.001 tuned of the full one) fp16 banks of
                 5k, 10k, 20k seeded random training digits and all of them; with --pca (same
                 rule) the centred features projected on 64-512 principal components
  --missed       (any family) which glyphs of each glyph kind the verdict calls normal
  --encoder-knn  (a fifth pass, written after --discriminator's held-out print) the same kNN in
                 the autoencoder's encoder trunk: recon, Eknn@10, recon+Eknn@10
  --cross        (a sixth pass, fixed before its run, written after the fifth's held-out print:
                 its held-out figures are not clean held-out figures) the two feature spaces
                 together, reading both the GAN and the autoencoder from --models: Dknn@10
                 (the served GAN score), recon+Eknn@10, Dknn@10+Eknn@10, Dknn@10+recon+Eknn@10
                 (means of atypicalities) and gauss(Dknn@10,recon,Eknn@10) (the learned
                 combination); rule: the highest tuned mean, and a product change only if it
                 beats Dknn@10's by at least 0.001
  --layers       (a seventh pass, fixed before its run, after the sixth's held-out print) the
                 same kNN in earlier layers, for stroke texture the last layers may pool away:
                 E1knn@10 (the autoencoder encoder's first convolution, 32 x 14 x 14), D1knn@10
                 and D2knn@10 (the discriminator's first and second, 32 x 14 x 14 and 64 x 7 x 7),
                 each alone and added to the champion's three parts (champion+...); rule: the
                 highest tuned mean, and a product change only if it beats the champion recipe
                 (Dknn@10+recon+Eknn@10) by at least 0.001
  --max          (an eighth pass, fixed before its run, after the seventh's held-out print) the
                 champion's parts combined by their maximum instead of their mean (a union of
                 the three tests, `ensemble.combine: max`): max(Dknn@10,recon,Eknn@10) and
                 max(Dknn@10,Eknn@10), beside the champion recipe; rule: the highest tuned
                 mean, a product change only if it beats the champion recipe by at least 0.001
  --union        (a ninth pass, fixed before its run, after the eighth was made the product) the
                 encoder's first layer, which saw glyphs in the seventh pass (letters 0.937) but
                 missed the tuned suite's distortions, added to the served union of tests, where
                 the other parts can still flag what it misses: max(Dknn@10,Eknn@10,E1knn@10)
                 and the same with the first layer 2 x 2 average-pooled (E1pknn@10, a quarter
                 of the bank); rule: the highest tuned mean, a product change only if it beats
                 max(Dknn@10,Eknn@10) by at least 0.001 and fits the serving limits
  --patch        (a tenth pass, fixed before its run, after the ninth) local tests, for the
                 stroke and edge detail a whole-image neighbour pools away: padimE1, padimE2,
                 padimD2 (PaDiM, Defard et al. 2020: a Gaussian per position of the encoder's
                 first and second layers and of the discriminator's second, ridge 0.01, the
                 largest Mahalanobis distance over positions) and patchE1 (PatchCore, Roth et
                 al. 2022, without its coreset: the encoder's first layer, 3 x 3-averaged, the
                 largest distance over positions to the nearest of 50,000 seeded random
                 training patches), each alone and added to the served union; rule: the highest
                 tuned mean, a product change only if it beats max(Dknn@10,Eknn@10) by at least
                 0.001 and fits the serving limits
  --format       (an eleventh pass, written after reading how the held-out glyphs are drawn, so
                 its held-out figures are not clean held-out figures) MNIST's own format as a
                 test: format = |longer side of the ink's bounding box - the training digits'
                 median (20 px)| + a tenth of the centre-of-mass offset; format alone and in
                 the served union, chosen by the same rule as the tenth; then a diagnostic
                 table: every candidate on the glyph kinds brought to MNIST's format (crop,
                 longer side scaled to 20 px, centre of mass centred), where only content
                 differs from a digit, with the test digits brought to it as the control

    .venv/bin/python benchmarks/bench_scores.py --models artifacts/models --data-dir data
    .venv/bin/python benchmarks/bench_scores.py --knn --json reports/bench_scores.json
    .venv/bin/python benchmarks/bench_scores.py --family diffusion --graham --threads 2
    .venv/bin/python benchmarks/bench_scores.py --family diffusion --per-level
    .venv/bin/python benchmarks/bench_scores.py --family gan --discriminator --threads 2
    .venv/bin/python benchmarks/bench_scores.py --family gan --missed

Not a test: it reads a finished run's models and data. Prints time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.calibration import Calibration
from models.digit_format import digit_format, format_distance, reference_side, to_mnist_format
from models.imaging import to_signed
from models.io import load_model
from pipelines.data.dataset import SPLITS, load_tensors
from pipelines.evaluation.evaluator import EvalConfig, detection_metrics, scored_normals
from pipelines.evaluation.heldout import REAL_KINDS
from pipelines.settings import load_params, section
from pipelines.training.loop import TrainConfig, train

Score = Callable[[np.ndarray], np.ndarray]
REN_RATES = (0.1, 0.2, 0.3)
GRAHAM_LEVELS = tuple(range(100, 1000, 100))
GRAHAM_SEED = 0


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        parts = [fn(torch.from_numpy(images[i : i + 500])) for i in range(0, len(images), 500)]
    return torch.cat(parts).double().numpy()


def class_gaussians(z: np.ndarray, labels: np.ndarray) -> Score:
    """-log N(z; mu_c, Sigma_c) minimised over classes (constants dropped), as z -> scores."""
    fitted = []
    for c in np.unique(labels):
        zc = z[labels == c]
        cov = np.cov(zc, rowvar=False) + 1e-6 * np.eye(z.shape[1])
        _, logdet = np.linalg.slogdet(cov)
        fitted.append((zc.mean(0), np.linalg.inv(cov), logdet))

    def nll(codes: np.ndarray) -> np.ndarray:
        per_class = [
            0.5 * (np.einsum("nd,de,ne->n", codes - m, p, codes - m) + logdet)
            for m, p, logdet in fitted
        ]
        return np.min(per_class, axis=0)

    return nll


def compressed_length(images: np.ndarray) -> np.ndarray:
    """zlib (level 9) length in bytes of each image as uint8 pixels: Serra et al.'s L(x)."""
    pixels = np.round(images.reshape(len(images), -1) * 255).astype(np.uint8)
    return np.array([len(zlib.compress(row.tobytes(), 9)) for row in pixels], dtype=np.float64)


def mutate(images: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """Ren et al.'s perturbation: each pixel replaced, with probability `rate`, by a uniform
    draw in [0, 1] (one fixed draw per image)."""
    rng = np.random.default_rng(seed)
    replace = rng.random(images.shape) < rate
    return np.where(replace, rng.random(images.shape), images).astype(np.float32)


def background_model(family: str, model: Any, params: dict, splits: dict, rate: float) -> Any:
    """Ren et al.'s background model: the family's config, trained by the product's trainer
    with the family's train settings (steps, batch, seed) on mutated training digits."""
    train_cfg = {**section(params, "train"), **(section(params, family).get("train") or {})}
    cfg = TrainConfig.from_dict(train_cfg | {"progress": False, "num_threads": 0})
    (train_x, train_y), (val_x, val_y) = splits["train"], splits["val"]
    data = [(torch.from_numpy(mutate(x.numpy(), rate, seed)), y)
            for seed, (x, y) in enumerate([(train_x, train_y), (val_x, val_y)])]  # fmt: skip
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as ckpt:
        result = train(family, model.config.to_dict(), cfg, data[0], data[1], Path(ckpt))
    torch.set_num_threads(threads)  # the trainer takes every core; scoring goes back to --threads
    return result.model.eval()


def log_likelihood_loss(model: Any) -> Score:
    """-log p(x) as the family defines it: the autoencoder's Bernoulli decoder (summed binary
    cross-entropy of the reconstruction, nats per image); any other family's anomaly score
    (the VAE's -ELBO)."""
    if not hasattr(model, "reconstruct") or hasattr(model, "elbo"):
        return lambda x: _batched(model.anomaly_score, x)

    def bce(images: torch.Tensor) -> torch.Tensor:
        recon = model.reconstruct(images).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(recon, images, reduction="none")
        return loss.flatten(1).sum(1)

    return lambda x: _batched(bce, x)


def combine(parts: dict[str, Score], val_x: np.ndarray, how: str, cfg: EvalConfig) -> Score:
    """Mean (or max) of each part's atypicality, each calibrated on the validation normals
    alone (two-sided for the reconstruction error, whose low side means too simple)."""
    calibrations = {
        name: Calibration.fit(
            score(val_x), cfg.target_fpr, cfg.anomaly_low_fpr if name == "recon" else 0.0
        )
        for name, score in parts.items()
    }

    def combined(images: np.ndarray) -> np.ndarray:
        stats = [calibrations[n].statistic(parts[n](images)) for n in parts]
        return np.max(stats, axis=0) if how == "max" else np.mean(stats, axis=0)

    return combined


def gaussian_over_scores(parts: dict[str, Score], val_x: np.ndarray) -> Score:
    """The issue's learned combination fitted on validation normals only: a Gaussian over the
    vector of the parts' scores (log of positive ones) of the validation normals; an image's
    score is its squared Mahalanobis distance (no anomaly is seen in the fit)."""

    def vector(images: np.ndarray) -> np.ndarray:
        cols = []
        for score in parts.values():
            s = score(images)
            cols.append(np.log(np.maximum(s, 1e-12)) if (s > 0).all() else s)
        return np.stack(cols, axis=1)

    ref = vector(val_x)
    mean, precision = ref.mean(0), np.linalg.inv(np.cov(ref, rowvar=False))

    def mahalanobis(images: np.ndarray) -> np.ndarray:
        d = vector(images) - mean  # once: the parts may not be cached (recon, latent)
        return np.einsum("nd,de,ne->n", d, precision, d)

    return mahalanobis


def _cached(fn: Score) -> Score:
    """`fn` remembered per image array (each split is scored by several candidates)."""
    cache: dict[int, np.ndarray] = {}

    def cached(x: np.ndarray) -> np.ndarray:
        key = hash(x.tobytes())
        if key not in cache:
            cache[key] = fn(x)
        return cache[key]

    return cached


def level_errors(model: Any, levels: tuple[int, ...], seed: int) -> Score:
    """(N, len(levels)) reconstruction MSEs in [0, 1] pixel units: the diffusion family's
    scoring path (q_sample with a fixed noise image, the configured DDIM steps back, null
    label, fp32) at each level, one noise image per level drawn from `seed`."""
    noise = torch.randn((len(levels), 1, 28, 28), generator=torch.Generator().manual_seed(seed))
    denoise = model._denoiser(None, 0.0, fast=False)  # the path anomaly_score takes

    def errors(images: torch.Tensor) -> torch.Tensor:
        x0 = to_signed(images)
        cols = []
        for level, z in zip(levels, noise, strict=True):
            t = torch.full((x0.shape[0],), level, dtype=torch.long)
            x_t = model.process.q_sample(x0, t, z.expand_as(x0))
            back = model.process.ddim(denoise, x_t, level, model.config.score_steps)
            cols.append(((back - x0) / 2).pow(2).mean(dim=(1, 2, 3)))
        return torch.stack(cols, dim=1)

    return _cached(lambda x: _batched(errors, x))


def graham_candidates(
    model: Any, autoencoder: Any | None, splits: dict, cfg: EvalConfig
) -> dict[str, Score]:
    """Graham et al. 2023 from the diffusion model (module doc), fitted on validation normals."""
    val_x = splits["val"][0].numpy()
    errors = level_errors(model, GRAHAM_LEVELS, GRAHAM_SEED)
    ref = errors(val_x)
    mean, std = ref.mean(0), ref.std(0)
    graham: Score = lambda x: ((errors(x) - mean) / std).mean(1)  # noqa: E731
    levels = {f"t{t}": lambda x, j=j: errors(x)[:, j] for j, t in enumerate(GRAHAM_LEVELS)}
    out: dict[str, Score] = {
        "diffusion": _cached(lambda x: _batched(model.anomaly_score, x)),
        "graham": graham,
        "gauss(levels)": gaussian_over_scores(levels, val_x),  # over the log-MSEs
    }
    if autoencoder is not None:
        ae = _cached(lambda x: _batched(autoencoder.anomaly_score, x))
        out["ae"] = ae
        out["ae+graham"] = combine({"recon": ae, "graham": graham}, val_x, "mean", cfg)
    return out


def per_level(model: Any, splits: dict, cfg: EvalConfig) -> None:
    """Print each Graham level's raw MSE as a one-sided score: AUROC of each glyph kind
    against the first 1,000 test digits (the --per-level diagnostic, module doc)."""
    from sklearn.metrics import roc_auc_score

    from pipelines.evaluation.heldout import GLYPH_KINDS, build_heldout_benchmark

    normals = splits["test"][0][:1000].numpy()
    kinds = tuple(GLYPH_KINDS)
    images, of = build_heldout_benchmark(normals, n_per_kind=100, seed=cfg.heldout_seed,
                                         kinds=kinds)  # fmt: skip
    errors = level_errors(model, GRAHAM_LEVELS, GRAHAM_SEED)
    normal_err, glyph_err = errors(normals), errors(images)
    print("| level t | " + " | ".join(map(str, GRAHAM_LEVELS)) + " |\n|" + "---|" * 10)
    for kind in kinds:
        y = np.r_[np.zeros(len(normals)), np.ones(int((of == kind).sum()))]
        aurocs = [roc_auc_score(y, np.r_[normal_err[:, j], glyph_err[of == kind, j]])
                  for j in range(len(GRAHAM_LEVELS))]  # fmt: skip
        print(f"| {kind} | " + " | ".join(f"{a:.3f}" for a in aurocs) + " |")


CONDITIONAL_LEVELS = (300, 500, 700)


def conditional_errors(model: Any, levels: tuple[int, ...], seed: int) -> Score:
    """(N, len(levels), 11) one-shot reconstruction MSEs: column 0 the null label, columns
    1..10 the digit labels 0..9 (pure conditional prediction, no guidance mix), one fixed noise
    image per level drawn from `seed`, the same noise for every label."""
    noise = torch.randn((len(levels), 1, 28, 28), generator=torch.Generator().manual_seed(seed))

    def errors(images: torch.Tensor) -> torch.Tensor:
        x0 = to_signed(images)
        n = x0.shape[0]
        out = torch.empty((n, len(levels), 11))
        for j, (level, z) in enumerate(zip(levels, noise, strict=True)):
            t = torch.full((n,), level, dtype=torch.long)
            x_t = model.process.q_sample(x0, t, z.expand_as(x0))
            for col in range(11):
                labels = None if col == 0 else torch.full((n,), col - 1, dtype=torch.long)
                denoise = model._denoiser(labels, 1.0 if labels is not None else 0.0, fast=False)
                back = model.process.ddim(denoise, x_t, level, model.config.score_steps)
                out[:, j, col] = ((back - x0) / 2).pow(2).mean(dim=(1, 2, 3))
        return out

    return _cached(lambda x: _batched(errors, x))


def conditional_diagnostic(model: Any, splits: dict, cfg: EvalConfig, n_normals: int) -> None:
    """Class-conditional reconstruction (the --conditional diagnostic, module doc): one-sided
    AUROC of each tuned-suite kind and each glyph kind against the first `n_normals` test
    digits, for the null-label error, the smallest error over the ten digit labels, and the
    gap between the two, at each level and averaged over the levels."""
    from sklearn.metrics import roc_auc_score

    from pipelines.evaluation.anomalies import build_anomaly_suite
    from pipelines.evaluation.heldout import GLYPH_KINDS, build_heldout_benchmark

    test_x = splits["test"][0].numpy()
    normals = test_x[:n_normals]
    suite, suite_of = build_anomaly_suite(test_x, n_per_kind=cfg.anomaly_per_kind,
                                          seed=cfg.anomaly_seed)  # fmt: skip
    glyph_kinds = tuple(GLYPH_KINDS)
    glyphs, glyph_of = build_heldout_benchmark(
        test_x, n_per_kind=cfg.anomaly_per_kind, seed=cfg.heldout_seed, kinds=glyph_kinds
    )
    errors = conditional_errors(model, CONDITIONAL_LEVELS, GRAHAM_SEED)
    t0 = time.perf_counter()
    e_norm, e_suite, e_glyph = errors(normals), errors(suite), errors(glyphs)
    print(f"scored {len(normals) + len(suite) + len(glyphs)} images in "
          f"{time.perf_counter() - t0:.0f} s")  # fmt: skip

    def variants(e: np.ndarray) -> dict[str, np.ndarray]:
        null, best = e[:, :, 0], e[:, :, 1:].min(axis=2)
        out = {}
        for j, level in enumerate(CONDITIONAL_LEVELS):
            out[f"null@{level}"] = null[:, j]
            out[f"min_c@{level}"] = best[:, j]
            out[f"min_c-null@{level}"] = best[:, j] - null[:, j]
            out[f"log(min_c/null)@{level}"] = np.log(best[:, j] / null[:, j])
        out["null(mean)"], out["min_c(mean)"] = null.mean(1), best.mean(1)
        out["log(min_c/null)(mean)"] = np.log(best / null).mean(1)
        return out

    vn, vs, vg = variants(e_norm), variants(e_suite), variants(e_glyph)
    suite_kinds = list(dict.fromkeys(suite_of))
    head = ["score", "tuned mean", *suite_kinds, *glyph_kinds]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))

    def auc(normal: np.ndarray, outliers: np.ndarray) -> float:
        y = np.r_[np.zeros(len(normal)), np.ones(len(outliers))]
        return float(roc_auc_score(y, np.r_[normal, outliers]))

    for name in vn:
        tuned = [auc(vn[name], vs[name][suite_of == k]) for k in suite_kinds]
        held = [auc(vn[name], vg[name][glyph_of == k]) for k in glyph_kinds]
        cells = [f"{np.mean(tuned):.4f}", *(f"{a:.3f}" for a in tuned + held)]
        print(f"| {name} | " + " | ".join(cells) + " |")


MEMORY_KS = (1, 3, 10)


def memory_errors(model: Any, train_x: np.ndarray, ks: tuple[int, ...]) -> Score:
    """(N, len(ks)) memory reconstruction errors: an image's code is matched to its k nearest
    training codes (Euclidean, in the autoencoder's latent space) and the image is compared
    with those codes' decodings, mean pixel MSE averaged over the k. The decoder may only
    draw a digit it was trained on, so an image whose code lies away from every training code
    is rebuilt as its nearest digit (a memory-bank reconstruction in the spirit of MemAE,
    Gong et al. 2019, without retraining)."""
    bank = torch.from_numpy(_batched(model.encode, train_x)).float()
    decoded = torch.from_numpy(_batched(lambda z: model.decode(z).flatten(1), bank.numpy()))
    decoded = decoded.float()
    top = max(ks)

    def errors(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), 500):
            x = torch.from_numpy(images[i : i + 500]).flatten(1)
            codes = torch.from_numpy(_batched(model.encode, images[i : i + 500])).float()
            idx = torch.cdist(codes, bank).topk(top, largest=False).indices  # nearest first
            mse = (decoded[idx] - x[:, None, :]).pow(2).mean(2)  # (n, top)
            out.append(torch.stack([mse[:, :k].mean(1) for k in ks], dim=1))
        return torch.cat(out).double().numpy()

    return _cached(errors)


def memory_candidates(model: Any, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """The memory-reconstruction round (--memory, module doc), fitted on the training split
    (the bank) and validation normals (the combinations' calibrations) only."""
    val_x = splits["val"][0].numpy()
    recon = _cached(lambda x: _batched(model.anomaly_score, x))
    errors = memory_errors(model, splits["train"][0].numpy(), MEMORY_KS)
    out: dict[str, Score] = {"recon": recon}
    for j, k in enumerate(MEMORY_KS):
        out[f"mem@{k}"] = lambda x, j=j: errors(x)[:, j]
    for k in MEMORY_KS:
        parts = {"recon": recon, f"mem@{k}": out[f"mem@{k}"]}
        out[f"recon+mem@{k}"] = combine(parts, val_x, "mean", cfg)
    return out


DKNN_KS = (1, 10)


def mean_cosine_distance(features: torch.Tensor, bank: torch.Tensor, k: int = 10) -> np.ndarray:
    """Mean 1 - cos of unit-length `features` to their k nearest rows of a unit-length `bank`
    (queries in chunks of 500)."""
    sims = torch.cat([features[i : i + 500] @ bank.T for i in range(0, len(features), 500)])
    return (1.0 - sims.topk(k, dim=1).values).mean(1).double().numpy()


def discriminator_candidates(
    model: Any,
    splits: dict,
    cfg: EvalConfig,
    bank_sizes: tuple[int, ...] = (),
    pca_dims: tuple[int, ...] = (),
) -> dict[str, Score]:
    """The discriminator round (--discriminator, --family gan; module doc): the GAN's own
    critic as a score and as a feature space. Fitted on the training split (the bank) and
    validation normals (the combinations' calibrations) only."""
    from models.gan.model import frozen

    def logit(images: torch.Tensor) -> torch.Tensor:
        with frozen(model.d):
            return model.d(model._to_net(images)).logits.float()

    def features(images: np.ndarray) -> torch.Tensor:  # the served score's own features
        return torch.from_numpy(_batched(model._features, images)).float()

    val_x = splits["val"][0].numpy()
    bank = features(splits["train"][0].numpy())
    top = max(DKNN_KS)

    def knn(images: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(images), 500):
            f = features(images[i : i + 500])
            dist = 1.0 - (f @ bank.T).topk(top, dim=1).values  # cosine distance, nearest first
            out.append(torch.stack([dist[:, :k].mean(1) for k in DKNN_KS], dim=1))
        return torch.cat(out).double().numpy()

    knn_cached = _cached(knn)
    gan = _cached(lambda x: _batched(model.anomaly_score, x))
    if bank_sizes:  # the cost variants (a second pass): fp16 banks, seeded random subsets
        out: dict[str, Score] = {"Dknn@10": lambda x: knn_cached(x)[:, 1]}
        full = bank.half()
        for size in bank_sizes:
            rows = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[:size]
            small = full[rows] if size < len(full) else full  # kept in fp16, computed in fp32
            out[f"Dknn@10 fp16 bank {min(size, len(full))}"] = lambda x, small=small: (
                mean_cosine_distance(features(x), small.float())
            )
        return out
    if pca_dims:  # the dimension variants (a third pass): PCA of the bank, full bank
        out = {"Dknn@10": lambda x: knn_cached(x)[:, 1]}
        mean = bank.mean(0)
        _, _, v = torch.linalg.svd(bank[::4] - mean, full_matrices=False)  # 13.5k rows suffice
        for dims in pca_dims:
            proj = v[:dims].T.contiguous()
            small = torch.nn.functional.normalize((bank - mean) @ proj, dim=1)

            def knn_pca(images: np.ndarray, small: torch.Tensor = small,
                        proj: torch.Tensor = proj) -> np.ndarray:  # fmt: skip
                f = torch.nn.functional.normalize((features(images) - mean) @ proj, dim=1)
                return mean_cosine_distance(f, small)

            out[f"Dknn@10 pca {dims}"] = knn_pca
        return out
    out: dict[str, Score] = {
        "gan": gan,
        "-D(x)": _cached(lambda x: -_batched(logit, x)),
    }
    for j, k in enumerate(DKNN_KS):
        out[f"Dknn@{k}"] = lambda x, j=j: knn_cached(x)[:, j]
    for k in DKNN_KS:
        parts = {"recon": gan, f"Dknn@{k}": out[f"Dknn@{k}"]}  # "recon": two-sided, as served
        out[f"gan+Dknn@{k}"] = combine(parts, val_x, "mean", cfg)
    return out


def encoder_candidates(model: Any, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """--encoder-knn (a fifth pass, fixed before its run): the GAN's winning recipe in the
    autoencoder's own features, the encoder's convolutional trunk (64 x 7 x 7, before the
    bottleneck), unit length, every training digit in the bank; Eknn@10 the mean cosine
    distance to the 10 nearest, recon+Eknn@10 the mean of the two atypicalities."""

    def trunk(images: torch.Tensor) -> torch.Tensor:
        features = model.encoder.features(model._prepare(images)).flatten(1).float()
        return torch.nn.functional.normalize(features, dim=1)

    bank = torch.from_numpy(_batched(trunk, splits["train"][0].numpy())).float()

    recon = _cached(lambda x: _batched(model.anomaly_score, x))
    eknn = _cached(
        lambda x: mean_cosine_distance(torch.from_numpy(_batched(trunk, x)).float(), bank)
    )
    val_x = splits["val"][0].numpy()
    return {
        "recon": recon,
        "Eknn@10": eknn,
        "recon+Eknn@10": combine({"recon": recon, "Eknn@10": eknn}, val_x, "mean", cfg),
    }


def champion_parts(models: Path, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """The GAN's served Dknn@10 and the autoencoder's recon, Eknn@10 and recon+Eknn@10."""
    gan = load_model(models / "gan").eval()
    ae = encoder_candidates(load_model(models / "autoencoder").eval(), splits, cfg)
    return {"Dknn@10": _cached(lambda x: _batched(gan.anomaly_score, x)), **ae}


def cross_candidates(models: Path, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """--cross (a sixth pass, module doc): the GAN's served Dknn@10 with the autoencoder's
    recon and Eknn@10, every combination fitted on validation normals only."""
    ae = champion_parts(models, splits, cfg)
    dknn, recon, eknn = ae["Dknn@10"], ae["recon"], ae["Eknn@10"]
    val_x = splits["val"][0].numpy()
    d_e = {"Dknn@10": dknn, "Eknn@10": eknn}
    d_r_e = {"Dknn@10": dknn, "recon": recon, "Eknn@10": eknn}
    return {
        "Dknn@10": dknn,
        "recon+Eknn@10": ae["recon+Eknn@10"],
        "Dknn@10+Eknn@10": combine(d_e, val_x, "mean", cfg),
        "Dknn@10+recon+Eknn@10": combine(d_r_e, val_x, "mean", cfg),
        "gauss(Dknn@10,recon,Eknn@10)": gaussian_over_scores(d_r_e, val_x),
    }


def max_candidates(models: Path, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """--max (an eighth pass, module doc): the champion's parts by their maximum."""
    parts = champion_parts(models, splits, cfg)
    three = {k: parts[k] for k in ("Dknn@10", "recon", "Eknn@10")}
    two = {k: parts[k] for k in ("Dknn@10", "Eknn@10")}
    val_x = splits["val"][0].numpy()
    return {
        "champion (Dknn@10+recon+Eknn@10)": combine(three, val_x, "mean", cfg),
        "max(Dknn@10,recon,Eknn@10)": combine(three, val_x, "max", cfg),
        "max(Dknn@10,Eknn@10)": combine(two, val_x, "max", cfg),
    }


def layer_maps(
    gan: Any, trunk: torch.nn.Module, n_modules: int, prepare: Callable
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Images -> the fp32 feature maps after the first `n_modules` modules of `trunk` (the
    autoencoder's encoder or the GAN's discriminator; `prepare` is that network's own input
    step), with the discriminator frozen as its own scoring freezes it."""
    from models.gan.model import frozen

    def features(images: torch.Tensor) -> torch.Tensor:
        with frozen(gan.d):
            x = prepare(images)
            for module in list(trunk)[:n_modules]:
                x = module(x)
        return x.float()

    return features


def layer_candidates(models: Path, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """--layers (a seventh pass, module doc): kNN in the first layers of the autoencoder's
    encoder and of the GAN's discriminator, alone and with the champion recipe's three parts."""

    gan = load_model(models / "gan").eval()
    ae_model = load_model(models / "autoencoder").eval()
    trunk_ae, trunk_d = ae_model.encoder.features, gan.d.trunk

    def after(trunk: torch.nn.Module, n_modules: int, prepare: Callable) -> Callable:
        maps = layer_maps(gan, trunk, n_modules, prepare)
        return lambda images: torch.nn.functional.normalize(maps(images).flatten(1), dim=1)

    layers = {  # name -> features: after the first conv's activation, the second's (D: norm too)
        "E1knn@10": after(trunk_ae, 2, ae_model._prepare),
        "D1knn@10": after(trunk_d, 2, gan._to_net),
        "D2knn@10": after(trunk_d, 5, gan._to_net),
    }
    train_x = splits["train"][0].numpy()
    out: dict[str, Score] = {}
    for name, features in layers.items():
        bank = torch.from_numpy(_batched(features, train_x)).float()
        out[name] = _cached(
            lambda x, f=features, b=bank: mean_cosine_distance(
                torch.from_numpy(_batched(f, x)).float(), b
            )
        )
    parts = champion_parts(models, splits, cfg)
    champion = {k: parts[k] for k in ("Dknn@10", "recon", "Eknn@10")}
    val_x = splits["val"][0].numpy()
    result = {"champion (Dknn@10+recon+Eknn@10)": combine(champion, val_x, "mean", cfg)}
    result.update(out)
    for name, score in out.items():
        result[f"champion+{name}"] = combine(champion | {name: score}, val_x, "mean", cfg)
    return result


def union_candidates(models: Path, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """--union (a ninth pass, module doc): the served max(Dknn@10, Eknn@10) with the encoder's
    first layer added to the union, whole (32 x 14 x 14) and 2 x 2 average-pooled (32 x 7 x 7,
    a quarter of the bank), every part calibrated on validation normals only."""
    ae_model = load_model(models / "autoencoder").eval()
    first = list(ae_model.encoder.features)[:2]  # the first convolution and its activation

    def e1(pool: int) -> Callable:
        def features(images: torch.Tensor) -> torch.Tensor:
            x = ae_model._prepare(images)
            for module in first:
                x = module(x)
            if pool > 1:
                x = torch.nn.functional.avg_pool2d(x, pool)
            return torch.nn.functional.normalize(x.flatten(1).float(), dim=1)

        return features

    parts = champion_parts(models, splits, cfg)
    served = {k: parts[k] for k in ("Dknn@10", "Eknn@10")}
    train_x, val_x = splits["train"][0].numpy(), splits["val"][0].numpy()
    result = {"max(Dknn@10,Eknn@10)": combine(served, val_x, "max", cfg)}
    for name, pool in (("E1knn@10", 1), ("E1pknn@10", 2)):
        features = e1(pool)
        bank = torch.from_numpy(_batched(features, train_x)).float()
        score = _cached(
            lambda x, f=features, b=bank: mean_cosine_distance(
                torch.from_numpy(_batched(f, x)).float(), b
            )
        )
        union = served | {name: score}
        result[f"max(Dknn@10,Eknn@10,{name})"] = combine(union, val_x, "max", cfg)
    return result


PATCH_BANK = 50_000  # random training patches in the position-free patch bank (--patch)
PATCH_EPS = 0.01  # PaDiM's ridge on each position's covariance (Defard et al. 2020)


def padim(maps: Callable[[torch.Tensor], torch.Tensor], train_x: np.ndarray) -> Score:
    """PaDiM (Defard et al. 2020): a Gaussian per spatial position of a feature map, fitted on
    the training digits; an image's score is its largest Mahalanobis distance over positions.
    `maps` gives (N, C, H, W)."""
    total = squares = None
    n = 0
    with torch.no_grad():
        for i in range(0, len(train_x), 500):
            f = maps(torch.from_numpy(train_x[i : i + 500])).flatten(2).permute(2, 0, 1).double()
            total = f.sum(1) if total is None else total + f.sum(1)  # (P, C)
            outer = torch.einsum("pnc,pnd->pcd", f, f)
            squares = outer if squares is None else squares + outer
            n += f.shape[1]
    mean = total / n
    cov = squares / n - torch.einsum("pc,pd->pcd", mean, mean)
    cov = cov + PATCH_EPS * torch.eye(cov.shape[-1], dtype=cov.dtype)
    precision = torch.linalg.inv(cov).float()
    mean = mean.float()

    def score(images: torch.Tensor) -> torch.Tensor:
        d = maps(images).flatten(2).permute(0, 2, 1) - mean  # (N, P, C)
        m = torch.einsum("npc,pcd,npd->np", d, precision, d)
        return m.clamp_min(0).sqrt().amax(1)

    return _cached(lambda x: _batched(score, x))


def patch_knn(maps: Callable[[torch.Tensor], torch.Tensor], train_x: np.ndarray) -> Score:
    """PatchCore (Roth et al. 2022) without its coreset: every position's feature averaged over
    its 3 x 3 neighbourhood, a bank of PATCH_BANK seeded random training patches; an image's
    score is the largest distance over its positions to the nearest patch in the bank."""

    def patches(images: torch.Tensor) -> torch.Tensor:  # (N * P, C)
        f = torch.nn.functional.avg_pool2d(maps(images), 3, stride=1, padding=1)
        return f.flatten(2).permute(0, 2, 1).reshape(-1, f.shape[1])

    with torch.no_grad():
        rows = _batched(patches, train_x)  # fp64 of 54k x 196 x 32 is 2.7 GB: pick, then drop
        picked = np.random.default_rng(0).choice(len(rows), PATCH_BANK, replace=False)
        bank = torch.from_numpy(rows[np.sort(picked)]).float()
        del rows
    bank_sq = (bank * bank).sum(1)

    def score(images: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(images), 10):
            q = patches(images[i : i + 10])
            d2 = (q * q).sum(1, keepdim=True) + bank_sq - 2.0 * q @ bank.T
            nearest = d2.amin(1).clamp_min(0).sqrt()
            out.append(nearest.reshape(len(images[i : i + 10]), -1).amax(1))
        return torch.cat(out)

    return _cached(lambda x: _batched(score, x))


def patch_candidates(models: Path, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """--patch (a tenth pass, module doc): local tests, each position of a feature map against
    the training digits' features there (PaDiM) or anywhere (PatchCore), alone and added to
    the served union max(Dknn@10, Eknn@10); every part calibrated on validation normals only."""
    gan = load_model(models / "gan").eval()
    ae_model = load_model(models / "autoencoder").eval()

    def maps(trunk: torch.nn.Module, n_modules: int, prepare: Callable) -> Callable:
        return layer_maps(gan, trunk, n_modules, prepare)

    e1 = maps(ae_model.encoder.features, 2, ae_model._prepare)  # 32 x 14 x 14
    e2 = maps(ae_model.encoder.features, 4, ae_model._prepare)  # 64 x 7 x 7
    d2 = maps(gan.d.trunk, 5, gan._to_net)  # 64 x 7 x 7, after its norm and activation
    train_x, val_x = splits["train"][0].numpy(), splits["val"][0].numpy()
    local = {
        "padimE1": padim(e1, train_x),
        "padimE2": padim(e2, train_x),
        "padimD2": padim(d2, train_x),
        "patchE1": patch_knn(e1, train_x),
    }
    parts = champion_parts(models, splits, cfg)
    served = {k: parts[k] for k in ("Dknn@10", "Eknn@10")}
    result = {"max(Dknn@10,Eknn@10)": combine(served, val_x, "max", cfg)}
    result.update(local)
    for name, score in local.items():
        result[f"max(Dknn@10,Eknn@10,{name})"] = combine(served | {name: score}, val_x, "max", cfg)
    return result


def format_score(train_x: np.ndarray) -> Score:
    """models.digit_format's distance from MNIST's format, with the training digits' median
    longer side (20 px) as the reference: what the ensemble's format view scores."""
    side = reference_side(train_x)
    return lambda images: format_distance(images, side)


def format_candidates(models: Path, splits: dict, cfg: EvalConfig) -> dict[str, Score]:
    """--format (an eleventh pass, module doc): MNIST's format as a test, alone and in the
    served union; every part calibrated on validation normals only."""
    parts = champion_parts(models, splits, cfg)
    served = {k: parts[k] for k in ("Dknn@10", "Eknn@10")}
    train_x, val_x = splits["train"][0].numpy(), splits["val"][0].numpy()
    fmt = format_score(train_x)
    return {
        "max(Dknn@10,Eknn@10)": combine(served, val_x, "max", cfg),
        "format": fmt,
        "max(Dknn@10,Eknn@10,format)": combine(served | {"format": fmt}, val_x, "max", cfg),
    }


def content_diagnostic(scores: dict[str, Score], splits: dict, cfg: EvalConfig) -> None:
    """--format's second table: each candidate on the glyph kinds brought to MNIST's format
    (to_mnist_format: only the content differs from a digit), and on the test digits brought
    to it too (the control: near 0.5 and the target FPR if normalising adds no artefact).
    Calibrated as evaluation calibrates; AUROC against the test normals by the calibrated
    statistic, flagged = the verdict (statistic > 1)."""
    from pipelines.evaluation.heldout import GLYPH_KINDS, build_heldout_benchmark
    from pipelines.evaluation.metrics import auroc

    test_x, val_x = splits["test"][0].numpy(), splits["val"][0].numpy()
    per_kind = cfg.heldout_per_kind or cfg.anomaly_per_kind
    glyphs, kinds = build_heldout_benchmark(
        test_x, n_per_kind=per_kind, seed=cfg.heldout_seed, kinds=tuple(GLYPH_KINDS)
    )
    control = np.random.default_rng(0).choice(len(test_x), 1000, replace=False)
    sets = {f"{k}@mnist": to_mnist_format(glyphs[kinds == k]) for k in GLYPH_KINDS}
    sets["test digits@mnist (control)"] = to_mnist_format(test_x[np.sort(control)])
    longer, _ = digit_format(np.concatenate(list(sets.values())))
    print(f"\nnormalised sets: {np.mean(longer == 20):.1%} of their images have a 20 px box")
    head = ["candidate", *sets]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, score in scores.items():
        val_s = score(val_x)
        calibration = Calibration.fit(
            val_s, cfg.target_fpr, cfg.anomaly_low_fpr, val_x, cfg.anomaly_energy_fpr
        )
        normal = calibration.statistic(score(test_x), test_x)
        cells = []
        for images in sets.values():
            stat = calibration.statistic(score(images), images)
            cells.append(f"{auroc(normal, stat):.3f} ({np.mean(stat > 1):.0%})")
        print(f"| {name} | " + " | ".join(cells) + " |")


# the passes that read both the GAN and the autoencoder from --models: option -> candidates
BOTH_MODEL_PASSES: dict[str, Callable[[Path, dict, EvalConfig], dict[str, Score]]] = {
    "max": max_candidates,
    "format": format_candidates,
    "patch": patch_candidates,
    "union": union_candidates,
    "layers": layer_candidates,
    "cross": cross_candidates,
}


def missed_glyphs(model: Any, splits: dict, cfg: EvalConfig) -> None:
    """Print which glyphs of each glyph kind the family's verdict calls normal (the --missed
    diagnostic): the held-out benchmark built as evaluation builds it, each glyph's character
    and size recorded while it is drawn, the verdict calibrated as evaluation calibrates it."""
    from PIL import ImageDraw

    from pipelines.evaluation.heldout import GLYPH_KINDS, build_heldout_benchmark

    drawn: list[tuple[str, int]] = []
    draw_text = ImageDraw.ImageDraw.text

    def recording(self: Any, xy: Any, text: str, *args: Any, **kwargs: Any) -> None:
        drawn.append((text, int(kwargs["font"].size)))
        draw_text(self, xy, text, *args, **kwargs)

    test_x, val_x = splits["test"][0].numpy(), splits["val"][0].numpy()
    ImageDraw.ImageDraw.text = recording  # type: ignore[method-assign]
    try:
        per_kind = cfg.heldout_per_kind or cfg.anomaly_per_kind
        images, kinds = build_heldout_benchmark(test_x, n_per_kind=per_kind, seed=cfg.heldout_seed)
    finally:
        ImageDraw.ImageDraw.text = draw_text  # type: ignore[method-assign]
    glyph = np.isin(kinds, list(GLYPH_KINDS))
    if int(glyph.sum()) != len(drawn):
        raise RuntimeError(f"{len(drawn)} glyphs recorded for {int(glyph.sum())} glyph images")
    score = lambda x: _batched(model.anomaly_score, x)  # noqa: E731
    calibration = Calibration.fit(score(val_x), cfg.target_fpr, cfg.anomaly_low_fpr, val_x,
                                  cfg.anomaly_energy_fpr)  # fmt: skip
    flagged = calibration.statistic(score(images), images)[glyph] > 1.0
    for kind in GLYPH_KINDS:
        rows = np.flatnonzero(kinds[glyph] == kind)
        missed = sorted(f"{drawn[i][0]}{drawn[i][1]}" for i in rows if not flagged[i])
        print(f"{kind}: {flagged[rows].mean():.0%} flagged; called normal (glyph, px): "
              + " ".join(missed))  # fmt: skip


def candidates(
    model: Any, splits: dict, cfg: EvalConfig, knn: bool, ren: tuple[str, dict] | None = None
) -> tuple[dict[str, Score], dict[str, float]]:
    """The candidate scores (fitted on the training split / validation normals only) and the
    seconds each took to fit."""
    train_x, train_y = (t.numpy() for t in splits["train"])
    val_x = splits["val"][0].numpy()
    recon: Score = lambda x: _batched(model.anomaly_score, x)  # noqa: E731
    t0 = time.perf_counter()
    density = class_gaussians(_batched(model.encode, train_x), train_y)
    latent: Score = lambda x: density(_batched(model.encode, x))  # noqa: E731
    fit = {"latent": time.perf_counter() - t0}

    def complexity(x: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(recon(x), 1e-12)) - np.log(compressed_length(x))

    out: dict[str, Score] = {"recon": recon, "latent": latent, "complexity": complexity}
    out["recon+latent"] = combine({"recon": recon, "latent": latent}, val_x, "mean", cfg)
    out["max(recon,latent)"] = combine({"recon": recon, "latent": latent}, val_x, "max", cfg)
    # added after the first print of the held-out rows (complexity's letters): not clean there
    with_complexity = {"recon": recon, "complexity": complexity}
    out["recon+complexity"] = combine(with_complexity, val_x, "mean", cfg)
    # the learned combination; written after the first print too (same caveat)
    out["gauss(recon,latent,complexity)"] = gaussian_over_scores(
        {"recon": recon, "latent": latent, "complexity": complexity}, val_x
    )
    if ren is not None:
        family, params = ren
        nll = log_likelihood_loss(model)
        for rate in REN_RATES:
            t0 = time.perf_counter()
            background = log_likelihood_loss(background_model(family, model, params, splits, rate))
            fit[f"ren@{rate}"] = time.perf_counter() - t0
            out[f"ren@{rate}"] = lambda x, bg=background: nll(x) - bg(x)
        with_ren = {"recon": recon, "ren": out["ren@0.2"]}
        out["recon+ren@0.2"] = combine(with_ren, val_x, "mean", cfg)
        out["max(recon,ren@0.2)"] = combine(with_ren, val_x, "max", cfg)
    if knn:
        from research.reference_detectors import knn_score

        t0 = time.perf_counter()
        knn_cached = _cached(knn_score(splits["train"][0]))
        fit["knn"] = time.perf_counter() - t0
        out["knn"] = knn_cached
        out["recon+knn"] = combine({"recon": recon, "knn": knn_cached}, val_x, "mean", cfg)
        out["recon+latent+knn"] = combine(
            {"recon": recon, "latent": latent, "knn": knn_cached}, val_x, "mean", cfg
        )
    return out, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("artifacts/models"))
    parser.add_argument("--family", default="autoencoder", help="the family whose model is read")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--knn", action="store_true", help="add the kNN reference and its combos")
    parser.add_argument("--ren", action="store_true", help="add Ren et al.'s likelihood ratios")
    parser.add_argument(
        "--graham", action="store_true",
        help="--family diffusion: Graham et al.'s multi-noise-level candidates instead",
    )  # fmt: skip
    parser.add_argument(
        "--per-level",
        action="store_true",
        help="--family diffusion: print each Graham level's AUROC per glyph kind",
    )
    parser.add_argument(
        "--discriminator",
        action="store_true",
        help="--family gan: the discriminator's candidates instead",
    )
    parser.add_argument(
        "--bank-sizes", action="store_true", help="with --discriminator: its cost variants"
    )
    parser.add_argument(
        "--pca", action="store_true", help="with --discriminator: its dimension variants"
    )
    parser.add_argument(
        "--encoder-knn",
        action="store_true",
        help="--family autoencoder: kNN in the encoder's features instead",
    )
    parser.add_argument(
        "--cross", action="store_true", help="the GAN's and the autoencoder's spaces together"
    )
    parser.add_argument("--max", action="store_true", help="the champion's parts by their maximum")
    parser.add_argument(
        "--union", action="store_true", help="the served union with the encoder's first layer"
    )
    parser.add_argument(
        "--format", action="store_true", help="MNIST's format as a test; glyphs brought to it"
    )
    parser.add_argument(
        "--patch", action="store_true", help="local (per-position) tests added to the union"
    )
    parser.add_argument(
        "--layers", action="store_true", help="kNN in the first layers of both networks"
    )
    parser.add_argument(
        "--missed", action="store_true", help="print the glyphs the family's verdict misses"
    )
    parser.add_argument(
        "--memory", action="store_true", help="memory-reconstruction candidates instead"
    )
    parser.add_argument(
        "--conditional",
        type=int,
        default=0,
        metavar="N",
        help="--family diffusion: class-conditional reconstruction diagnostic, N test digits",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write every metric here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    params = load_params(args.params)
    cfg = EvalConfig.from_dict(section(params, "evaluate"))
    splits = {s: load_tensors(args.data_dir, s) for s in SPLITS}
    reads_both = any(getattr(args, name) for name in BOTH_MODEL_PASSES)  # GAN and AE
    model = None if reads_both else load_model(args.models / args.family).eval()
    if args.per_level:
        if args.family != "diffusion":
            parser.error("--per-level reads a diffusion model: add --family diffusion")
        per_level(model, splits, cfg)
        return
    if args.missed:
        missed_glyphs(model, splits, cfg)
        return
    if args.conditional:
        if args.family != "diffusion":
            parser.error("--conditional reads a diffusion model: add --family diffusion")
        conditional_diagnostic(model, splits, cfg, args.conditional)
        return
    if args.graham:
        if args.family != "diffusion":
            parser.error("--graham reads a diffusion model: add --family diffusion")
        ae_dir = args.models / "autoencoder"
        autoencoder = load_model(ae_dir).eval() if ae_dir.is_dir() else None
        t0 = time.perf_counter()
        scores = graham_candidates(model, autoencoder, splits, cfg)
        fit = {"graham": time.perf_counter() - t0}
    elif args.discriminator:
        if args.family != "gan":
            parser.error("--discriminator reads a GAN: add --family gan")
        t0 = time.perf_counter()
        sizes = (5_000, 10_000, 20_000, 10**9) if args.bank_sizes else ()
        dims = (64, 128, 256, 512) if args.pca else ()
        scores = discriminator_candidates(model, splits, cfg, sizes, dims)
        fit = {"discriminator": time.perf_counter() - t0}
    elif reads_both:  # one pass at a time: the first option given, in this order
        name, build = next((n, f) for n, f in BOTH_MODEL_PASSES.items() if getattr(args, n))
        t0 = time.perf_counter()
        scores = build(args.models, splits, cfg)
        fit = {name: time.perf_counter() - t0}
    elif args.encoder_knn:
        t0 = time.perf_counter()
        scores = encoder_candidates(model, splits, cfg)
        fit = {"encoder": time.perf_counter() - t0}
    elif args.memory:
        t0 = time.perf_counter()
        scores = memory_candidates(model, splits, cfg)
        fit = {"memory": time.perf_counter() - t0}
    else:
        ren = (args.family, params) if args.ren else None
        scores, fit = candidates(model, splits, cfg, args.knn, ren)
    scored = scored_normals(splits, cfg)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, score in scores.items():
            t0 = time.perf_counter()
            metrics, _ = detection_metrics(score, scored, cfg, Path(tmp) / "x")
            results[name] = metrics | {"seconds": time.perf_counter() - t0}
            took = results[name]["seconds"]
            print(f"{name}: tuned {metrics['suite_auroc_mean']:.4f} ({took:.0f} s)")
    chosen = max(results, key=lambda n: results[n]["suite_auroc_mean"])
    kinds = [k for k in REAL_KINDS if f"heldout_auroc/{k}" in results[chosen]]
    head = ["candidate", "tuned mean (chooses)", "val FPR", "test FPR", "gate metric",
            *[f"{k} (flagged)" for k in kinds]]  # fmt: skip
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, m in results.items():
        held = [f"{m[f'heldout_auroc/{k}']:.3f} ({m[f'heldout_tpr/{k}']:.0%})" for k in kinds]
        cells = [f"{m['suite_auroc_mean']:.4f}", f"{m['val_fpr']:.3f}", f"{m['test_fpr']:.3f}",
                 f"{m['anomaly_auroc_mean']:.4f}", *held]  # fmt: skip
        print(f"| {'**' + name + '**' if name == chosen else name} | " + " | ".join(cells) + " |")
    if args.format:
        content_diagnostic(scores, splits, cfg)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    wall = time.perf_counter() - start
    print(f"\nchosen on the tuned suite: {chosen}; fit seconds {fit}; wall {wall:.0f} s, "
          f"peak RSS {rss:.2f} GB")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"chosen": chosen, "fit_seconds": fit,
                                         "wall_s": wall, "peak_rss_gb": rss,
                                         "results": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
