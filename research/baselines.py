"""Textbook baselines and multi-seed runs at one CPU budget, measured like the leaderboard.

`BASELINES` re-implements, with our families' code and behind the model contract, the
references a reader compares against: the pytorch/examples MLP VAE, a plain DCGAN and a plain
DDPM sampled with 50 DDIM steps. `run_row` trains one configuration (a baseline or one of our
families' params.yaml configs) for one seed within a budget, evaluates it with the pipeline's
own evaluation (`pipelines.stages.evaluate.measure`: same judge, same real reference, same
sample count and seed) and returns a row; `write_results` stores rows with the data version in
`metrics/baselines.json` (atomic) with mean ± sample std per row name over seeds.

Budgets (`Budget`) are CPU seconds of this process by default: under contention (many
processes on 2 cores) wall seconds say more about the neighbours than the model. The trainer
stops on wall time only, so a CPU budget is turned into a step count by a short probe of
`training_step` (`probe_cpu_per_step`); the row records the CPU time the training really took.
`benchmarks/bench_baselines.py` is the command line.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.base import Batch
from models.diffusion.baselines import DDPM_BASELINE
from models.io import atomic_write_json, build_model
from pipelines.evaluation.leaderboard import summarise_runs
from pipelines.training.loop import TrainConfig, train

RESULTS_FORMAT = 1
DEFAULT_RESULTS = Path("metrics/baselines.json")
MANY_STEPS = 1_000_000  # a baseline trains until its budget is spent
# One training thread by default: CPU time then stays the work done (idle OpenMP threads
# spin under contention and inflate it several-fold on this shared 2-core machine).
DEFAULT_THREADS = 1

# pytorch/examples vae/main.py: 784-400-20 MLP, Bernoulli decoder, Adam 1e-3, batch 128, no
# KL warm-up, N(0, I) sampling. Speed options (bf16 autocast) stay as in our family: the
# comparison is at equal CPU, so the baseline gets the same engineering.
MLP_VAE = {
    "arch": "mlp",
    "hidden_dim": 400,
    "latent_dim": 20,
    "decoder": "bernoulli",
    "lr": 1e-3,
    "kl_warmup_steps": 0,
    "free_bits": 0.0,
    "sampling_prior": "normal",
}
# Radford et al. DCGAN as in pytorch/examples dcgan: unconditional, non-saturating BCE, Adam
# 2e-4 (0.5, 0.999), batch 64, one D step per G step, no EMA of G, no f-AnoGAN encoder phase
# (its anomaly score then uses an untrained encoder: only the generation columns mean much).
DCGAN = {
    "objective": "dcgan",
    "conditional": False,
    "lr": 2e-4,
    "betas": (0.5, 0.999),
    "n_critic": 1,
    "ema_decay": 0.0,
    "encoder_start_step": MANY_STEPS * 10,
}
# Ho et al. DDPM sampled with 50 DDIM steps: the diffusion family's own textbook config
# (models/diffusion/baselines.py says what it keeps and why).
DDPM = dict(DDPM_BASELINE)

# name -> (family, model config, trainer overrides)
BASELINES: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "mlp-vae": ("vae", MLP_VAE, {"batch_size": 128}),
    "dcgan": ("gan", DCGAN, {"batch_size": 64}),
    "ddpm": ("diffusion", DDPM, {"batch_size": 128}),
}
BASELINE_OF = {family: name for name, (family, _, _) in BASELINES.items()}

# the row's headline fields, copied from the evaluation's metrics
HEADLINE = {
    "fd_judge": "fd_judge",
    "precision": "precision",
    "recall": "recall",
    "classes": "classes_covered",
    "elbo": "elbo_nats",
}


@dataclass(frozen=True)
class Budget:
    """How long each row trains: `seconds` of CPU time ("cpu") or of wall time ("wall")."""

    seconds: float
    kind: str = "cpu"

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "wall"):
            raise ValueError(f"budget kind must be 'cpu' or 'wall', got {self.kind!r}")
        if not (self.seconds >= 0 and math.isfinite(self.seconds)):
            raise ValueError(f"budget seconds must be a finite number >= 0, got {self.seconds!r}")


@dataclass(frozen=True)
class RowSpec:
    """One configuration to train and evaluate: a baseline or one of our families."""

    name: str
    family: str
    model: dict[str, Any]
    train: dict[str, Any]
    is_baseline: bool


def baseline_specs(names: Iterable[str] | None = None) -> list[RowSpec]:
    """The baselines named (all by default); ValueError naming the known ones otherwise."""
    names = list(BASELINES) if names is None else list(names)
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; known: {list(BASELINES)}")
    specs = []
    for name in names:
        family, model, overrides = BASELINES[name]
        specs.append(RowSpec(name, family, dict(model), {"steps": MANY_STEPS, **overrides}, True))
    return specs


def family_spec(
    params: Mapping[str, Any],
    family: str,
    model_overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
) -> RowSpec:
    """One of our families as the pipeline trains it (params.yaml), with optional overrides.

    The row is named after the family, plus the overrides in brackets when there are any.
    """
    from pipelines.stages.train import family_params

    model, cfg = family_params(dict(params), family)
    model = {**model, **(model_overrides or {})}
    train_values = {**cfg.to_dict(), **(train_overrides or {})}
    changes = dict(model_overrides or {})
    changes |= {f"train.{k}": v for k, v in (train_overrides or {}).items()}
    label = ",".join(f"{k}={v}" for k, v in changes.items())
    name = f"{family}[{label}]" if changes else family
    return RowSpec(name, family, model, train_values, False)


def _train_config(
    params: Mapping[str, Any], spec: RowSpec, seed: int, threads: int, steps: int | None
) -> TrainConfig:
    values = {**dict(params.get("train") or {}), **spec.train}
    values |= {"seed": seed, "num_threads": threads, "progress": False}
    if spec.is_baseline:  # validation and checkpoints cost CPU: rare for long budgeted runs
        values |= {"val_every": 1000, "checkpoint_every": 1000}
    if steps is not None:
        values["steps"] = steps
    return TrainConfig.from_dict(values)


def probe_cpu_per_step(
    spec: RowSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    threads: int,
    cpu_seconds: float = 2.0,
    max_steps: int = 200,
) -> float:
    """CPU seconds of one training step of `spec` at `threads` threads (after 3 warm-up steps).

    A throw-away model takes steps on the first batches until `cpu_seconds` of CPU are spent.
    """
    torch.set_num_threads(threads)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(spec.family, spec.model)
    model.train()
    optimizers = model.configure_optimizers()
    generator = torch.Generator().manual_seed(0)
    x, y = images[:batch_size], labels[:batch_size]
    step, measured, start = 0, 0, 0.0
    while True:
        if step == 3:
            start = time.process_time()
        model.training_step(Batch(x, y, step, generator), optimizers)
        model.on_train_step_end(step)
        step += 1
        if step > 3:
            measured += 1
            spent = time.process_time() - start
            if spent >= cpu_seconds or measured >= max_steps:
                return spent / measured


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - no load average on this platform
        return None


def run_row(
    spec: RowSpec,
    seed: int,
    budget: Budget,
    params: Mapping[str, Any],
    data_dir: Path,
    judge_dir: Path,
    threads: int = DEFAULT_THREADS,
    work_dir: Path | None = None,
    log: Callable[[str], None] = print,
    probe_cpu_s: float = 2.0,
) -> dict[str, Any]:
    """Train `spec` with `seed` within `budget`, evaluate it as the pipeline does; one row."""
    from pipelines.data.dataset import load_tensors
    from pipelines.data.versioning import data_version
    from pipelines.evaluation.evaluator import numeric_metrics
    from pipelines.stages.evaluate import judge_version, measure

    version = data_version(data_dir=Path(data_dir))
    train_data, val_data = load_tensors(data_dir, "train"), load_tensors(data_dir, "val")
    planned = _train_config(params, spec, seed, threads, None)
    steps, per_step = planned.steps, None
    if budget.seconds and budget.kind == "cpu":
        per_step = probe_cpu_per_step(
            spec, *train_data, planned.batch_size, threads, cpu_seconds=probe_cpu_s
        )
        steps = max(1, min(planned.steps, int(budget.seconds / per_step)))
    cfg = _train_config(params, spec, seed, threads, steps)
    if budget.seconds and budget.kind == "wall":
        cfg = TrainConfig.from_dict({**cfg.to_dict(), "time_budget_s": budget.seconds})
    log(f"{spec.name} seed {seed}: training up to {cfg.steps} steps "
        f"(budget {budget.seconds:g} {budget.kind} s, {threads} thread(s))")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="genops-bench-", dir=work_dir) as tmp:
        load_before = _load_average()
        cpu0 = time.process_time()
        result = train(
            spec.family, spec.model, cfg, train_data, val_data, Path(tmp) / "ckpt", version
        )
        train_cpu = time.process_time() - cpu0
        load_after = _load_average()
        metrics = measure(dict(params), result.model, data_dir, judge_dir, Path(tmp) / "eval")
    numeric = numeric_metrics(metrics)
    capped = result.out_of_time or (steps < planned.steps)
    row: dict[str, Any] = {
        "name": spec.name,
        "family": spec.family,
        "is_baseline": spec.is_baseline,
        "seed": seed,
        **{key: numeric.get(source) for key, source in HEADLINE.items()},
        "train_seconds": round(result.wall_time_s, 2),
        "train_cpu_seconds": round(train_cpu, 2),
        "steps": result.steps_done,
        "capped": bool(capped),
        "budget_s": budget.seconds,
        "budget_kind": budget.kind,
        "cpu_per_step_probe": None if per_step is None else round(per_step, 5),
        "threads": threads,
        "load_average": [load_before, load_after],
        "samples_per_s": round(1000.0 / numeric["sample_ms_per_image"], 1)
        if numeric.get("sample_ms_per_image")
        else None,
        "data_version": version,
        "judge_version": judge_version(judge_dir),
        "model_config": result.model.config.to_dict(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": numeric,
    }
    log(f"{spec.name} seed {seed}: FD-judge {row['fd_judge']:.4g}, precision "
        f"{row['precision']:.3f}, recall {row['recall']:.3f}, {row['steps']} steps, "
        f"{row['train_cpu_seconds']:.0f} CPU s{' (capped)' if capped else ''}")  # fmt: skip
    return row


# ---- results file ----------------------------------------------------------------------------
def row_key(row: Mapping[str, Any]) -> tuple[str, int, str]:
    return (str(row["name"]), int(row["seed"]), str(row["data_version"]))


def summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per row name (and data version): mean ± sample std over seeds of every numeric field.

    Keyed "<name>@<data_version>"; each entry has name, family, is_baseline, data_version,
    seeds, capped (any seed capped) and, per numeric field, {"mean", "spread", "n"} under
    "stats" (the evaluation's full metrics included, as the leaderboard reads them).
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["name"], row["data_version"]), []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for (name, version), group in sorted(groups.items()):
        flat = [{**r.get("metrics", {}), **{k: v for k, v in r.items() if k != "metrics"}}
                for r in group]  # fmt: skip
        out[f"{name}@{version}"] = {
            "name": name,
            "family": group[0]["family"],
            "is_baseline": bool(group[0]["is_baseline"]),
            "data_version": version,
            "seeds": sorted(int(r["seed"]) for r in group),
            "capped": any(bool(r.get("capped")) for r in group),
            "stats": summarise_runs([{k: v for k, v in r.items() if k != "seed"} for r in flat]),
        }
    return out


def read_results(path: Path) -> dict[str, Any]:
    """The stored results ({"format", "rows", "summary"}); an empty set when absent."""
    import json

    path = Path(path)
    if not path.is_file():
        return {"format": RESULTS_FORMAT, "rows": [], "summary": {}}
    payload = json.loads(path.read_text())
    if payload.get("format") != RESULTS_FORMAT or not isinstance(payload.get("rows"), list):
        raise ValueError(f"{path}: not a baselines results file (format {RESULTS_FORMAT})")
    return payload


def write_results(path: Path, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge `rows` into the results at `path` (same name, seed and data version: replaced),
    recompute the summary and write atomically; returns what was written."""
    merged = {row_key(r): dict(r) for r in read_results(path)["rows"]}
    merged |= {row_key(r): dict(r) for r in rows}
    ordered = [merged[k] for k in sorted(merged)]
    payload = {"format": RESULTS_FORMAT, "rows": ordered, "summary": summarise(ordered)}
    atomic_write_json(Path(path), payload)
    return payload


def _fmt(stats: Mapping[str, Any], key: str, fmt: str) -> str:
    stat = stats.get(key)
    if stat is None:
        return "—"
    text = format(stat["mean"], fmt)
    return f"{text} ± {format(stat['spread'], '.2g')}" if stat["n"] > 1 else text


def results_markdown(summary: Mapping[str, Mapping[str, Any]], data_version: str | None) -> str:
    """A table of the summary (rows of `data_version` only, when given)."""
    lines = [
        "| Row | Family | Baseline | Seeds | FD-judge ↓ | Precision | Recall | Classes "
        "| ELBO (nats) | Train CPU s | Steps | Samples/s |",
        "|" + "---|" * 12,
    ]
    capped = []
    for entry in summary.values():
        if data_version is not None and entry["data_version"] != data_version:
            continue
        s = entry["stats"]
        if entry["capped"]:
            capped.append(entry["name"])
        lines.append(
            f"| {entry['name']}{' (capped)' if entry['capped'] else ''} | {entry['family']} | "
            f"{'yes' if entry['is_baseline'] else 'no'} | {len(entry['seeds'])} | "
            f"{_fmt(s, 'fd_judge', '.3g')} | {_fmt(s, 'precision', '.3f')} | "
            f"{_fmt(s, 'recall', '.3f')} | {_fmt(s, 'classes', '.3g')} | "
            f"{_fmt(s, 'elbo', '.4g')} | {_fmt(s, 'train_cpu_seconds', '.3g')} | "
            f"{_fmt(s, 'steps', '.3g')} | {_fmt(s, 'samples_per_s', '.3g')} |"
        )
    if capped:
        lines += ["", f"Capped by the budget (trained fewer steps than configured): "
                      f"{', '.join(capped)}."]  # fmt: skip
    return "\n".join(lines) + "\n"
