"""Data-parallel training vs one process: throughput, wall time, val loss and peak RSS per family.

Not a test: numbers depend on the machine and its load (run it with `nice`, report `uptime`).
Each family trains its params.yaml model for the same total steps and global batch, from the
same seed: in one process with all cores, in one process with one thread (the core share of
each data-parallel process), and under torchrun
with N gloo processes (the trainer splits the cores between them); the val loss is the
trainer's validation at the last step.

    .venv/bin/python benchmarks/bench_ddp.py                           # 2 processes, 100 steps
    .venv/bin/python benchmarks/bench_ddp.py --family gan --steps 300 --processes 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("autoencoder", "vae", "gan", "diffusion")


def _worker(args: argparse.Namespace) -> None:
    """One training run (one rank under torchrun); each rank writes its own JSON line."""
    import torch

    from pipelines.data.dataset import load_tensors
    from pipelines.stages.train import family_params
    from pipelines.training.loop import TrainConfig, train

    params = yaml.safe_load(Path(args.params).read_text())
    model_cfg, cfg = family_params(params, args.family)
    if args.family == "gan":  # the f-AnoGAN encoder (what val loss measures) trains last
        model_cfg["encoder_start_step"] = args.steps * 5 // 6
    cfg = TrainConfig.from_dict(
        {**cfg.__dict__, "steps": args.steps, "val_every": args.steps, "val_size": 500,
         "checkpoint_every": args.steps, "progress": False, "num_threads": args.threads,
         **({"batch_size": args.batch_size} if args.batch_size else {})}
    )  # fmt: skip
    data = Path(args.data_dir)
    result = train(
        args.family,
        model_cfg,
        cfg,
        load_tensors(data, "train"),
        load_tensors(data, "val"),
        Path(args.out) / "ckpt",
    )
    rank = int(os.environ.get("RANK", "0"))
    row = {
        "rank": rank,
        "steps": result.steps_done,
        "batch": cfg.batch_size,
        "threads": torch.get_num_threads(),
        "wall_s": result.wall_time_s,
        "images_per_s": result.images_per_s,
        "val_loss": [h["val_loss"] for h in result.history if "val_loss" in h][-1],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(row))


def _run(family: str, processes: int, threads: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as out:
        worker = [str(Path(__file__).resolve()), "--worker", "--family", family,
                  "--steps", str(args.steps), "--threads", str(threads), "--params", args.params,
                  "--data-dir", args.data_dir, "--out", out]  # fmt: skip
        if args.batch_size:
            worker += ["--batch-size", str(args.batch_size)]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        env["PYTHONPATH"] = str(ROOT)
        if processes == 1:  # the plain single-process path: no torchrun, no WORLD_SIZE
            cmd = [sys.executable, *worker]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(processes), *worker]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=not args.verbose)
        launch = time.perf_counter() - started
        rows = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
    main = next(r for r in rows if r["rank"] == 0)
    return {
        "family": family,
        "processes": processes,
        **{k: main[k] for k in ("threads", "steps", "batch", "wall_s", "images_per_s", "val_loss")},
        "launch_s": launch,
        "rss_max_mb": max(r["peak_rss_mb"] for r in rows),
        "rss_sum_mb": sum(r["peak_rss_mb"] for r in rows),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| family | processes x threads | steps x global batch | images/s | train wall s "
        "| launch wall s | val loss | peak RSS per process (MB) | peak RSS, all processes (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['processes']} x {r['threads']} | {r['steps']} x {r['batch']} "
            f"| {r['images_per_s']:.0f} | {r['wall_s']:.1f} | {r['launch_s']:.1f} "
            f"| {r['val_loss']:.4g} | {r['rss_max_mb']:.0f} | {r['rss_sum_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, help="Global batch [default: params.yaml].")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-all-cores-baseline",
        dest="all_cores_baseline",
        action="store_false",
        help="Skip the one-process run with all cores (slow on a loaded machine).",
    )
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--verbose", action="store_true", help="Show the runs' output.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(argparse.Namespace(**{**vars(args), "family": args.family[0]}))
        return
    rows = []
    for family in args.family or FAMILIES:
        runs = [(1, 0)] if args.all_cores_baseline else []  # threads 0: all cores, split
        for processes, threads in [*runs, (1, 1), (args.processes, 0)]:
            rows.append(_run(family, processes, threads, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"load average at the end (1, 5, 15 min): {os.getloadavg()}", file=sys.stderr)
    print(markdown(rows))


if __name__ == "__main__":
    main()
