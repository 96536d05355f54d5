"""Numbers that are not noise: every family's headline metrics over training seeds (mean ± std).

    .venv/bin/python benchmarks/bench_seeds.py                     # seeds 0 1 2, all families
    .venv/bin/python benchmarks/bench_seeds.py --family gan --seeds 0 1 2 3 4

Each (family, seed) is trained with the project's default config from params.yaml, only
`train.seed` changed (weights init, batch order, noise), on the pipeline's current data split
(`data/`), and evaluated by the pipeline's own evaluation job against the pipeline's judge
(`artifacts/judge`) with the same fixed sample budget and sample seed: only the training seed
moves. Seed 0 *is* the pipeline's own run: its trained model in `artifacts/models/<family>` is
re-evaluated, not retrained (run it after `dvc repro`, with `dvc status` clean).

Results go to `--out` (default `metrics/seeds.json`, one entry per family and seed, written
after each so an interrupted run resumes where it stopped; models and checkpoints under
`--work`). Printed: a Markdown table (mean ± std per metric) and the promotion margins the
seed spread suggests (`docs/seeds.md` explains the rule: a task's margin is one standard
deviation of its metric over seeds of the current champion's family, so a candidate must beat
the champion by more than retraining the champion with another seed moves it).

Not in `dvc repro` (about 11 CPU-minutes per extra seed on 2 cores). Reports peak RSS.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.io import atomic_write_json  # noqa: E402
from models.spec import FAMILIES, TASKS  # noqa: E402
from pipelines.settings import load_params  # noqa: E402

HEADLINE = (
    "fd_judge",
    "precision",
    "recall",
    "classes_covered",
    "anomaly_auroc_mean",
    "suite_auroc_mean",
    "heldout_auroc_mean",
    "elbo_nats",
    "test_fpr",
    "train_wall_time_s",
    "sample_ms_per_image",
    "train_warning_windows",
)


def run_one(
    params: dict[str, Any],
    family: str,
    seed: int,
    data: Path,
    judge: Path,
    work: Path,
    threads: int = 0,
) -> dict[str, Any]:
    """Train (seed > 0) or take the pipeline's model (seed 0), then evaluate; headline metrics."""
    from pipelines.stages.evaluate import evaluate_family
    from pipelines.stages.train import train_family

    root = work / family / f"seed{seed}"
    model_dir = REPO / "artifacts" / "models" / family if seed == 0 else root / "model"
    if seed != 0:
        train_family(
            params,
            family,
            data,
            model_dir,
            root / "checkpoints",
            overrides={"seed": seed, **({"num_threads": threads} if threads else {})},
            log_mlflow=False,
        )
    elif not (model_dir / "config.json").is_file():
        raise SystemExit(f"{model_dir}: no trained model; run `dvc repro` (seed 0 is its run)")
    metrics = evaluate_family(
        params,
        family,
        data,
        model_dir,
        judge,
        root / "eval",
        root / "metrics.json",
        log_mlflow=False,
    )
    return _numbers(metrics)


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def leaderboard_markdown(results: dict[str, dict[str, dict[str, float]]], data: Path) -> str:
    """The pipeline's own leaderboard (tables, per-kind, the measured comparison table), fed
    every seed's metrics: cells read mean ± std, beside the textbook baselines' and the reference
    detectors' rows."""
    from pipelines.data.versioning import data_version
    from pipelines.evaluation.leaderboard import build_leaderboard, load_baselines, render_markdown

    runs = {family: list(by_seed.values()) for family, by_seed in results.items()}
    version = data_version(data_dir=data)
    baselines = load_baselines(REPO / "metrics" / "baselines.json", version)
    baselines |= load_baselines(REPO / "metrics" / "reference_detectors.json", version)
    return render_markdown(build_leaderboard(runs, baselines))


def summarize(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Per family and metric: mean, sample std (n - 1), min, max, n."""
    out: dict[str, dict[str, Any]] = {}
    for family, by_seed in results.items():
        keys = sorted({k for m in by_seed.values() for k in m})
        out[family] = {}
        for key in keys:
            values = [m[key] for m in by_seed.values() if key in m and math.isfinite(m[key])]
            if not values:
                continue
            mean = sum(values) / len(values)
            std = (
                math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                if len(values) > 1
                else float("nan")
            )
            out[family][key] = {
                "mean": mean,
                "std": std,
                "min": min(values),
                "max": max(values),
                "n": len(values),
            }
    return out


def suggested_margins(summary: dict[str, dict[str, Any]], champions: dict[str, str]) -> dict:
    """One std over seeds of each task's metric, for the family holding the task's champion."""
    out = {}
    for task, spec in TASKS.items():
        family = champions.get(task)
        stats = summary.get(family or "", {}).get(spec.metric)
        if stats and stats["n"] > 1:
            out[task] = {"family": family, "metric": spec.metric, "std": stats["std"]}
    return out


def markdown(summary: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    cols = [k for k in HEADLINE if any(k in s for s in summary.values())]
    lines = [
        f"| family | {' | '.join(cols)} |",
        "|---|" + "---|" * len(cols),
    ]
    for family, stats in summary.items():
        cells = []
        for key in cols:
            s = stats.get(key)
            if s is None:
                cells.append("—")
            elif s["n"] > 1:
                cells.append(f"{s['mean']:.4g} ± {s['std']:.2g}")
            else:
                cells.append(f"{s['mean']:.4g}")
        lines.append(f"| {family} | {' | '.join(cells)} |")
    lines.append(f"\nseeds: {seeds}; mean ± sample std (n − 1).")
    return "\n".join(lines)


BEGIN, END = "<!-- bench_seeds:begin -->", "<!-- bench_seeds:end -->"


def write_between_markers(path: Path, text: str) -> None:
    """Replace what lies between the markers in `path` (the whole file when it has none)."""
    body = f"{BEGIN}\n{text.replace('# Leaderboard', '## Leaderboard over seeds', 1)}{END}\n"
    old = path.read_text() if path.is_file() else ""
    if BEGIN in old and END in old:
        body = old[: old.index(BEGIN)] + body + old[old.index(END) + len(END) + 1 :]
    path.write_text(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", action="append", choices=FAMILIES, help="default: all")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--data", type=Path, default=REPO / "data")
    parser.add_argument("--judge", type=Path, default=REPO / "artifacts" / "judge")
    parser.add_argument("--work", type=Path, default=Path("/tmp/genops-seeds"))
    parser.add_argument("--out", type=Path, default=REPO / "metrics" / "seeds.json")
    parser.add_argument(
        "--champion",
        action="append",
        default=[],
        metavar="TASK=FAMILY",
        help="the family holding a task's champion (default generation=gan anomaly=autoencoder)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=REPO / "docs" / "seeds.md",
        help="where the multi-seed leaderboard goes (between the markers of an existing file)",
    )
    parser.add_argument("--fresh", action="store_true", help="forget results already in --out")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per training (train.num_threads; 0 = the params' value). On a busy "
        "host 1 avoids OpenMP threads waiting on each other. GAN and diffusion runs then differ "
        "from 2-thread ones about as much as another seed (docs/seeds.md)",
    )
    args = parser.parse_args(argv)
    families = args.family or list(FAMILIES)
    champions = {"generation": "gan", "anomaly": "autoencoder"}
    champions |= dict(item.split("=", 1) for item in args.champion)

    params = load_params(args.params)
    stored = {} if args.fresh or not args.out.is_file() else json.loads(args.out.read_text())
    results: dict[str, dict[str, dict[str, float]]] = stored.get("results", {})
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    started = time.perf_counter()
    for family in families:
        for seed in args.seeds:
            if str(seed) in results.get(family, {}):
                print(f"{family} seed {seed}: done before, kept", flush=True)
                continue
            t0 = time.perf_counter()
            metrics = run_one(params, family, seed, args.data, args.judge, args.work, args.threads)
            metrics["bench_seconds"] = time.perf_counter() - t0
            results.setdefault(family, {})[str(seed)] = metrics
            atomic_write_json(args.out, {"seeds": args.seeds, "results": results})
            print(
                f"{family} seed {seed}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in HEADLINE[:5])
                + f" ({metrics['bench_seconds']:.0f} s)",
                flush=True,
            )
    for family in families:  # runs stored by an older version of this script: full metrics
        for seed, metrics in results[family].items():
            full = args.work / family / f"seed{seed}" / "metrics.json"
            if full.is_file():
                metrics |= {k: v for k, v in _numbers(json.loads(full.read_text())).items()
                            if k not in metrics}  # fmt: skip
    wanted = {f: {s: m for s, m in results[f].items() if int(s) in args.seeds} for f in families}
    summary = summarize(wanted)
    margins = suggested_margins(summary, champions)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atomic_write_json(
        args.out,
        {"seeds": args.seeds, "results": results, "summary": summary, "suggested_margins": margins},
    )
    print(markdown(summary, args.seeds))
    write_between_markers(args.markdown, leaderboard_markdown(wanted, args.data))
    print("\nsuggested registry.margin (one std over seeds of the champion family's metric):")
    for task, m in margins.items():
        print(f"  {task}: {m['std']:.4g}  ({m['family']} {m['metric']})")
    print(f"\nwall {time.perf_counter() - started:.0f} s, peak RSS {peak_mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
