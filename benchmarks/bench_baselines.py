"""Textbook baselines and our families at one CPU budget, over seeds, evaluated as the leaderboard.

Trains each selected row (a baseline of research/baselines.py, or one of our families as
params.yaml configures it) for each seed within the budget, evaluates it with the pipeline's own
evaluation (the judge in artifacts/judge, its cached real reference, params.yaml `evaluate`),
merges the rows into metrics/baselines.json with the data version (data.dvc) and prints mean ±
sample std per row. Not part of `dvc repro`: it trains for minutes.

    # the three baselines, 5 CPU-minutes each, one seed
    .venv/bin/python benchmarks/bench_baselines.py --budget-s 300
    # the MLP VAE baseline against our VAE, 3 seeds, 120 CPU-s each
    .venv/bin/python benchmarks/bench_baselines.py --baselines mlp-vae --families vae \\
        --seeds 0 1 2 --budget-s 120
    # our four families' default configs over 3 seeds, capped at 300 CPU-s each (item 4)
    .venv/bin/python benchmarks/bench_baselines.py --families autoencoder vae gan diffusion \\
        --seeds 0 1 2 --budget-s 300
    # a variant of a family (model keys, or train.<key> for the trainer)
    .venv/bin/python benchmarks/bench_baselines.py --families vae --set latent_dim=16

Budgets are CPU seconds of this process by default (`--budget-kind wall` for wall seconds): a
probe of a few training steps turns the CPU budget into a step count, so a row is reproducible
from its seed; rows whose configured steps exceed the budget are marked "capped". Training uses
one thread by default (`--threads`): with idle OpenMP threads spinning on a busy machine, CPU
time would otherwise count waiting. Report the load average beside the numbers (each row stores
it, before and after training).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from research.baselines import (
    BASELINES,
    DEFAULT_RESULTS,
    DEFAULT_THREADS,
    Budget,
    RowSpec,
    baseline_specs,
    family_spec,
    results_markdown,
    run_row,
    write_results,
)


def _override(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, booleans, lists), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from models.spec import FAMILIES

    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    pick = "no names: all; default: all baselines unless --families"
    parser.add_argument("--baselines", nargs="*", choices=list(BASELINES), help=pick)
    parser.add_argument(
        "--families", nargs="*", choices=list(FAMILIES), help="params.yaml rows; " + pick
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=_override,
        default=[],
        metavar="KEY=VALUE",
        help="override for --families rows: a model key, "
        "or train.<key> for the trainer (repeatable)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="training budget per row and seed in seconds (0: no cap; "
        "baselines need one); default 300",
    )
    parser.add_argument(
        "--budget-kind",
        choices=("cpu", "wall"),
        default="cpu",
        help="CPU seconds of this process (default) or wall seconds",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"torch threads for training (default {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_RESULTS,
        help=f"results file, merged into (default {DEFAULT_RESULTS})",
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--judge-dir", type=Path, default=Path("artifacts/judge"))
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where the temporary checkpoints and evaluation files go",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.baselines == [] or (args.baselines is None and args.families is None):
        args.baselines = list(BASELINES)
    if args.families == []:
        args.families = list(FAMILIES)
    if args.baselines and not args.budget_s:
        parser.error("baselines train until their budget is spent: give --budget-s > 0")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def specs_from_args(args: argparse.Namespace, params: dict[str, Any]) -> list[RowSpec]:
    model = {k: v for k, v in args.overrides if not k.startswith("train.")}
    trainer = {k.removeprefix("train."): v for k, v in args.overrides if k.startswith("train.")}
    specs = baseline_specs(args.baselines or [])
    specs += [family_spec(params, f, model, trainer) for f in args.families or []]
    return specs


def main(argv: list[str] | None = None) -> int:
    from pipelines.data.versioning import data_version
    from pipelines.settings import load_params

    args = parse_args(argv)
    params = load_params(args.params)
    budget = Budget(args.budget_s, args.budget_kind)
    specs = specs_from_args(args, params)
    rows = []
    for spec in specs:
        for seed in args.seeds:
            row = run_row(spec, seed, budget, params, args.data_dir, args.judge_dir,
                          threads=args.threads, work_dir=args.work_dir)  # fmt: skip
            rows.append(row)
            write_results(args.out, [row])  # each finished row is kept, even if a later fails
    payload = write_results(args.out, [])
    names = {r["name"] for r in rows}
    summary = {k: v for k, v in payload["summary"].items() if v["name"] in names}
    print(f"\nresults: {args.out} (data {data_version(data_dir=args.data_dir)}, "
          f"budget {budget.seconds:g} {budget.kind} s per row and seed)\n")  # fmt: skip
    print(results_markdown(summary, data_version(data_dir=args.data_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
