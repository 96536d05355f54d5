"""The GAN's failure modes, reproduced on purpose and caught by its monitors.

    .venv/bin/python benchmarks/bench_gan_failures.py                 # all scenarios
    .venv/bin/python benchmarks/bench_gan_failures.py --only oscillation --steps 400 --threads 1

Each scenario trains the GAN family with a documented config for `--steps` steps on the
current data (data/), records the monitor flags the family logs (`warn_d_collapse`,
`warn_mode_collapse`, `warn_oscillation`: the share of steps flagged in each logging window)
and writes one training-curve figure per scenario (`--plots`, default docs/img/). The table
says, per scenario, which monitor fired first and when; a healthy run should fire none.
Not a test: the bad configs fail by design, and how fast depends on the data and the seed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines.data.dataset import load_tensors  # noqa: E402
from pipelines.training.loop import TrainConfig, train  # noqa: E402

MONITORS = ("warn_d_collapse", "warn_mode_collapse", "warn_oscillation")

# name -> (what goes wrong and why, model config overrides, the monitor that should fire)
SCENARIOS: dict[str, tuple[str, dict, str | None]] = {
    "healthy": ("the default config", {}, None),
    "d_collapse": (
        "D trained 5x per G step with 4x G's width: D separates real from fake outright",
        {"n_critic": 5, "d_width": 64, "g_width": 8, "conditional": False, "ema_decay": 0.0},
        "warn_d_collapse",
    ),
    "mode_collapse": (
        "a 1-d latent and 10x the learning rate without momentum damping: G settles on a few"
        " images",
        {"latent_dim": 1, "lr": 2e-3, "betas": (0.9, 0.999), "conditional": False},
        "warn_mode_collapse",
    ),
    "oscillation": (
        "WGAN-GP with one critic step per G step, a tenth of the usual gradient penalty and"
        " 10x the learning rate with high momentum: the critic gap builds up, crashes below 0"
        " when G catches up, and builds up again",
        {
            "objective": "wgan-gp",
            "n_critic": 1,
            "gp_weight": 1.0,
            "lr": 2e-3,
            "betas": (0.9, 0.99),
            "conditional": False,
            "ema_decay": 0.0,
        },
        "warn_oscillation",
    ),
}
CURVES = ("d_gap", "d_loss", "g_loss", "diversity", "d_gap_swing")


def run(
    name: str, overrides: dict, steps: int, data_dir: Path, threads: int = 0
) -> tuple[list[dict], float]:
    """Train one scenario; its logged history (one row per logging window) and wall seconds."""
    model_cfg = {"encoder_start_step": steps + 1, "monitor_every": 20, **overrides}
    cfg = TrainConfig(steps=steps, batch_size=64, val_every=steps, checkpoint_every=steps,
                      log_every=10, progress=False, num_threads=threads)  # fmt: skip
    train_data, val_data = load_tensors(data_dir, "train"), load_tensors(data_dir, "val")
    history: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train("gan", model_cfg, cfg, train_data, val_data, Path(tmp),
              on_log=lambda step, logs: history.append({"step": step, **logs}))  # fmt: skip
    return history, time.perf_counter() - started


def first_alarm(history: list[dict], key: str) -> int | None:
    """The first logged step whose window had the monitor flag up, or None."""
    return next((int(row["step"]) for row in history if row.get(key, 0.0) > 0), None)


def plot(name: str, history: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    fig, axes = plt.subplots(len(CURVES), 1, figsize=(7, 1.6 * len(CURVES)), sharex=True)
    for ax, key in zip(axes, CURVES, strict=True):
        ax.plot(steps, [row.get(key, float("nan")) for row in history], lw=1)
        ax.set_ylabel(key, fontsize=8)
        for monitor, color in zip(MONITORS, ("red", "purple", "orange"), strict=True):
            for row in history:
                if row.get(monitor, 0.0) > 0:
                    ax.axvspan(row["step"] - 10, row["step"], color=color, alpha=0.15, lw=0)
    axes[0].set_title(f"GAN scenario '{name}' (shaded: red D collapse, purple mode collapse, "
                      "orange oscillation)", fontsize=9)  # fmt: skip
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    path = out / f"gan_failure_{name}.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600, help="training steps per scenario")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="scenarios to run")
    parser.add_argument("--data", type=Path, default=REPO / "data", help="the data folder")
    parser.add_argument("--plots", type=Path, default=REPO / "docs" / "img", help="figure folder")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: all cores; 1: on a busy machine)"
    )
    args = parser.parse_args()
    args.plots.mkdir(parents=True, exist_ok=True)
    print("| scenario | what it does | expected monitor | first alarm (step) per monitor "
          "| caught | wall s |")  # fmt: skip
    print("|---|---|---|---|---|---:|")
    for name in args.only or SCENARIOS:
        why, overrides, expected = SCENARIOS[name]
        history, wall = run(name, overrides, args.steps, args.data, args.threads)
        alarms = {key: first_alarm(history, key) for key in MONITORS}
        fired = ", ".join(f"{k.removeprefix('warn_')}: {v}" for k, v in alarms.items() if v)
        caught = alarms[expected] is not None if expected else not any(alarms.values())
        plot(name, history, args.plots)
        print(f"| {name} | {why} | {expected or 'none'} | {fired or 'none'} | "
              f"{'yes' if caught else 'NO'} | {wall:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
