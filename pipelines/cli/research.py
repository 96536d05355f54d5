"""`genops one-class`: the one-class MNIST protocol (research/one_class.py; docs/one_class.md)."""

from __future__ import annotations

from pathlib import Path

import click

from models.spec import FAMILIES
from pipelines.cli.common import DATA_DIR, REPORTS, fail, params


@click.command("one-class")
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(FAMILIES),
    help="A registered family to train per digit (repeatable; default: none).",
)
@click.option(
    "--knn/--no-knn",
    default=True,
    show_default=True,
    help="The nearest-neighbour scorer (no training; the best scorer here).",
)
@click.option("--knn-k", type=int, default=3, show_default=True, help="kNN: neighbours averaged.")
@click.option(
    "--knn-blur", type=float, default=1.0, show_default=True, help="kNN: Gaussian blur sigma (px)."
)
@click.option(
    "--knn-shift",
    type=int,
    default=1,
    show_default=True,
    help="kNN: query translations up to this many pixels (distance = min over them).",
)
@click.option(
    "--knn-metric",
    type=click.Choice(["cosine", "euclidean"]),
    default="cosine",
    show_default=True,
    help="kNN: distance between blurred images.",
)
@click.option(
    "--ensemble/--no-ensemble",
    default=False,
    show_default=True,
    help="Also report the mean of all scorers' scores, each standardised on the digit's "
    "validation normals.",
)
@click.option(
    "--combine",
    type=click.Choice(["mean", "max"]),
    default="mean",
    show_default=True,
    help="With --ensemble: mean of standardised scores, or max of calibrated atypicalities "
    "(the served anomaly champion's rule).",
)
@click.option(
    "--ensemble-of",
    "ensemble_of",
    multiple=True,
    help="With --ensemble: a scorer it combines (repeatable, e.g. gan, autoencoder-eknn; "
    "default: every scorer).",
)
@click.option(
    "--encoder-knn",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="With --family autoencoder: also the anomaly champion's encoder-kNN view (mean cosine "
    "distance to this many nearest normals in the autoencoder's encoder; 0 = off).",
)
@click.option(
    "--encoder-knn-shift",
    type=click.IntRange(0, 4),
    default=0,
    show_default=True,
    help="With --encoder-knn: the minimum over query translations of up to this many pixels "
    "(like the pixel kNN's --knn-shift; (2s+1)^2 encoder passes per image).",
)
@click.option("--steps", type=int, default=600, show_default=True, help="Training steps per digit.")
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Torch threads for scoring and training (0 = all available cores; 1 is faster on a "
    "busy machine).",
)
@click.option(
    "--digit",
    "digits",
    multiple=True,
    type=click.IntRange(0, 9),
    help="Normal digit(s) to run (repeatable; default: all ten).",
)
@click.option(
    "--seeds",
    default="",
    help="Comma-separated training seeds, e.g. 0,1,2 (default: the params file's train seed). "
    "kNN is deterministic and runs once.",
)
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--out", default=REPORTS / "one_class", show_default=True, type=click.Path(path_type=Path)
)
@click.pass_context
def one_class_cmd(
    ctx,
    families,
    knn,
    knn_k,
    knn_blur,
    knn_shift,
    knn_metric,
    ensemble,
    combine,
    ensemble_of,
    encoder_knn,
    encoder_knn_shift,
    steps,
    threads,
    digits,
    seeds,
    data_dir,
    out,
) -> None:
    """Benchmark: the one-class MNIST protocol (fit on one digit, AUROC vs the rest).

    Writes one_class.json (every run) and one_class.md (per-digit table, mean ± std over
    seeds) under --out. Full MNIST: see docs/one_class.md.
    """
    from models.io import atomic_write_json
    from pipelines.stages.train import family_params
    from research.one_class import markdown, run_protocol, summarise
    from research.one_class_knn import KnnConfig

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        knn_cfg = KnnConfig(knn_k, knn_blur, knn_shift, knn_metric == "cosine")
    except ValueError as exc:
        fail(f"invalid option: {exc}", 2)
    if not families and not knn:
        fail("nothing to run: give --family and/or --knn", 2)
    scorers = {*families, *(["knn"] if knn else []), *(["autoencoder-eknn"] if encoder_knn else [])}
    if ensemble_of and not ensemble:
        fail("--ensemble-of picks the ensemble's scorers: add --ensemble", 2)
    if sorted(set(ensemble_of) - scorers):
        unknown = ", ".join(sorted(set(ensemble_of) - scorers))
        fail(f"--ensemble-of {unknown}: not a scorer of this run ({', '.join(sorted(scorers))})", 2)
    if encoder_knn_shift and not encoder_knn:
        fail("--encoder-knn-shift shifts the encoder-kNN's queries: add --encoder-knn K", 2)
    if encoder_knn and "autoencoder" not in families:
        fail("--encoder-knn reads the autoencoder's encoder: add --family autoencoder", 2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    base = {family: family_params(params(ctx), family) for family in families}
    results = run_protocol(
        base,
        knn_cfg if knn else None,
        ensemble,
        steps,
        threads,
        seed_list,
        digits,
        data_dir,
        encoder_knn=encoder_knn,
        encoder_knn_shift=encoder_knn_shift,
        combine=combine,
        ensemble_of=ensemble_of,
    )
    summary = summarise(results)
    atomic_write_json(out / "one_class.json", {"runs": results, "summary": summary})
    (out / "one_class.md").write_text(markdown(summary))
    click.echo(markdown(summary))


@click.command("reference-detectors")
@click.option(
    "--detector",
    "detectors",
    multiple=True,
    type=click.Choice(["knn", "mahalanobis"]),
    help="Which to run (repeatable; default: both).",
)
@click.option(
    "--knn-bank",
    type=click.IntRange(10),
    default=None,
    help="Cap the kNN bank to a stratified, seeded slice of this many training digits "
    "(default: the whole training split).",
)
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Torch threads (0 = all available cores).",
)
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--judge-dir",
    default=Path("artifacts/judge"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="The trained judge (dvc repro's judge stage): Mahalanobis works in its features.",
)
@click.option(
    "--results",
    default=Path("metrics/reference_detectors.json"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Results file the leaderboard reads; rows of the same detector and data version are "
    "replaced, others kept.",
)
@click.option(
    "--out",
    default=REPORTS / "reference_detectors",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Each detector's calibration.json and test scores.",
)
@click.pass_context
def reference_cmd(ctx, detectors, knn_bank, threads, data_dir, judge_dir, results, out) -> None:
    """Benchmark: the non-generative reference detectors (kNN; Mahalanobis in the judge's
    features), measured by the families' own evaluation on the current data.

    Their rows appear in the leaderboard's anomaly tables, never ranked and never promoted
    (research/reference_detectors.py; docs/anomaly.md). Run after `dvc repro` (it needs the
    judge); `genops register` (or the next repro) puts them in the leaderboard.
    """
    import json

    from models.io import atomic_write_json
    from research.reference_detectors import DETECTORS, RESULTS_FORMAT, run_reference_detectors

    if threads:
        import torch

        torch.set_num_threads(threads)
    from pipelines.evaluation.judge import JUDGE_WEIGHTS

    if "mahalanobis" in (detectors or DETECTORS) and not (judge_dir / JUDGE_WEIGHTS).is_file():
        fail(f"no trained judge in {judge_dir}: run `dvc repro judge` first", 2)
    measured = run_reference_detectors(
        params(ctx), data_dir, judge_dir, out, tuple(detectors) or DETECTORS, knn_bank, click.echo
    )
    kept = []
    if Path(results).is_file():
        kept = json.loads(Path(results).read_text()).get("rows", [])
    new = {(r["name"], r["data_version"]) for r in measured["rows"]}
    rows = [r for r in kept if (r.get("name"), r.get("data_version")) not in new]
    atomic_write_json(
        results,
        {"format": RESULTS_FORMAT, "rows": rows + measured["rows"]}
        | {"peak_rss_gb": measured["peak_rss_gb"]},
    )
    click.echo(f"wrote {results} (peak RSS {measured['peak_rss_gb']:.2f} GB)")
