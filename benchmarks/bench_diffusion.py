"""Diffusion sampler sweep: FD-judge / precision / recall / classes and time per 1,000 samples.

Samples a trained diffusion model (read-only) with each sampler x spacing x guidance x steps,
exactly as the evaluation does (`draw_samples`: same seed, labels cycling 0..9, batches of
250), and scores them with the project's judge features and metric functions against the
cached test reference, so the numbers read like the leaderboard's. Not a test: times depend on
the machine and its load (the load average is printed beside each time). Results accumulate in
a JSON file (one entry per setting, re-measured settings replace old ones), from which the
markdown tables and the FD-vs-guidance / FD-vs-steps plots are made.

    nice -n 10 .venv/bin/python benchmarks/bench_diffusion.py \\
        --samplers ddim,dpmpp2m --guidance 0,1,1.5,2,3 --steps 8      # a guidance sweep
    nice -n 10 .venv/bin/python benchmarks/bench_diffusion.py --report-only  # tables + plots
    nice -n 10 .venv/bin/python benchmarks/bench_diffusion.py --timing-only  # speed only

`--timing-only` times the configured default sampler, its speed variants and DDIM-15 at
guidance 2 (the old default) back to back, interleaved, in one process: the ratio to DDIM-15
carries over to a quiet machine even when the absolute seconds do not.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.diffusion import Diffusion, DiffusionConfig
from models.diffusion import model as diffusion_module
from models.io import atomic_write_bytes, atomic_write_json, load_model
from pipelines.evaluation import metrics as M
from pipelines.evaluation.evaluator import EvalConfig, draw_samples, load_reference
from pipelines.evaluation.judge import judge_outputs, load_judge

ROOT = Path(__file__).resolve().parents[1]
OLD_DEFAULT = {"sampler": "ddim", "spacing": "trailing", "steps": 15, "guidance": 2.0}


@dataclasses.dataclass(frozen=True)
class Setting:
    sampler: str
    spacing: str
    steps: int
    guidance: float

    @property
    def key(self) -> str:
        return f"{self.sampler}/{self.spacing}/{self.steps}/{self.guidance:g}"

    def evaluations(self, conditional: bool) -> int:
        """Network evaluations per image: steps, doubled when the guided pair runs."""
        guided = conditional and self.guidance not in (0.0, 1.0)
        return self.steps * (2 if guided else 1)


def variant(base: Diffusion, s: Setting, **speed: Any) -> Diffusion:
    """`base`'s weights under another sampler setting (and speed options), in eval mode."""
    cfg = dataclasses.replace(base.config, sampler=s.sampler, timestep_spacing=s.spacing,
                              sample_steps=s.steps, guidance_scale=s.guidance, **speed)  # fmt: skip
    model = Diffusion(cfg)
    model.load_state_dict(base.state_dict())
    return model.eval()


@contextlib.contextmanager
def chunk_size(n: int | None) -> Iterator[None]:
    """Temporarily change the images per network call (models.diffusion.model.MAX_CHUNK)."""
    old = diffusion_module.MAX_CHUNK
    diffusion_module.MAX_CHUNK = n or old
    try:
        yield
    finally:
        diffusion_module.MAX_CHUNK = old


def timed_samples(model: Diffusion, cfg: EvalConfig, inference: bool = False):
    """(images, labels, seconds per 1,000 images, load average before/after)."""
    load0 = os.getloadavg()[0]
    mode = torch.inference_mode() if inference else contextlib.nullcontext()
    with mode:
        images, labels, ms = draw_samples(model, cfg)
    return images.clone(), labels, ms, (load0, os.getloadavg()[0])


def quality(judge, reference: dict, images: torch.Tensor, k: int) -> dict[str, float]:
    """The evaluation's sample-quality numbers (pipelines.evaluation.metrics), judge features."""
    feats, probs = judge_outputs(judge, images)
    precision, recall = M.precision_recall(reference["test_features"], feats, k)
    fd = M.frechet_distance_from_stats(
        *M.feature_stats(feats), reference["test_mu"], reference["test_sigma"]
    )
    coverage = M.mode_coverage(probs)
    return {"fd_judge": fd, "precision": precision, "recall": recall,
            "classes_covered": coverage["classes_covered"]}  # fmt: skip


# ---- results file ------------------------------------------------------------------------
def load_results(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def save_png(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def gan_reference() -> dict[str, float] | None:
    path = ROOT / "metrics" / "gan.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return {k: m[k] for k in ("fd_judge", "precision", "recall", "classes_covered") if k in m}


# ---- sweep ----------------------------------------------------------------------------------
def sweep(args, base: Diffusion, judge, reference: dict, results_path: Path) -> None:
    cfg = EvalConfig(n_samples=args.n_samples, sample_seed=args.seed,
                     sample_batch_size=args.batch_size)  # fmt: skip
    results = load_results(results_path)
    settings = [Setting(sm, sp, st, g) for sm in args.samplers for sp in args.spacings
                for st in args.steps for g in args.guidance]  # fmt: skip
    for i, s in enumerate(settings, 1):
        model = variant(base, s)
        images, _, ms, load = timed_samples(model, cfg)
        row = {**dataclasses.asdict(s), "nfe": s.evaluations(base.conditional),
               **quality(judge, reference, images, cfg.pr_k),
               "s_per_1000": ms, "load": list(load), "n_samples": cfg.n_samples,
               "threads": torch.get_num_threads()}  # fmt: skip
        results[s.key] = row
        atomic_write_json(results_path, results)  # after every setting: a kill loses one
        print(f"[{i}/{len(settings)}] {s.key}: FD {row['fd_judge']:.2f} P {row['precision']:.3f} "
              f"R {row['recall']:.3f} classes {row['classes_covered']} "
              f"{ms:.1f} s/1000 (load {load[0]:.1f}->{load[1]:.1f})", flush=True)  # fmt: skip


def table(rows: list[dict], gan: dict | None) -> str:
    lines = [
        "| sampler | spacing | steps | guidance | NFE/img | FD-judge | precision | recall "
        "| classes | s / 1,000 | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if gan:
        lines.append(f"| *GAN (leaderboard)* | | | | 1 | {gan['fd_judge']:.2f} | "
                     f"{gan['precision']:.3f} | {gan['recall']:.3f} | "
                     f"{int(gan['classes_covered'])} | | |")  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {r['spacing']} | {r['steps']} | {r['guidance']:g} | {r['nfe']} | "
            f"{r['fd_judge']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['classes_covered']} | {r['s_per_1000']:.1f} | {r['load'][0]:.1f} |"
        )
    return "\n".join(lines)


def report(results: dict[str, dict], img_dir: Path, fixed_steps: int, fixed_guidance: float):
    """Markdown tables and the two plots from the accumulated results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(results.values(), key=lambda r: (r["sampler"], r["spacing"], r["steps"],
                                                   r["guidance"]))  # fmt: skip
    gan = gan_reference()
    print("\n### All settings\n")
    print(table(rows, gan))
    curves = sorted({(r["sampler"], r["spacing"]) for r in rows})
    for axis, fixed_name, fixed, name in (
        ("guidance", "steps", fixed_steps, "diffusion_fd_vs_guidance.png"),
        ("steps", "guidance", fixed_guidance, "diffusion_fd_vs_steps.png"),
    ):
        fig, (ax_fd, ax_rec) = plt.subplots(1, 2, figsize=(10, 3.8))
        for sampler, spacing in curves:
            pts = sorted((r[axis], r["fd_judge"], r["recall"]) for r in rows
                         if (r["sampler"], r["spacing"]) == (sampler, spacing)
                         and r[fixed_name] == fixed)  # fmt: skip
            if len(pts) < 2:
                continue
            xs, fds, recs = zip(*pts, strict=True)
            ax_fd.plot(xs, fds, marker="o", label=f"{sampler} ({spacing})")
            ax_rec.plot(xs, recs, marker="o", label=f"{sampler} ({spacing})")
        if gan:
            ax_fd.axhline(gan["fd_judge"], color="k", ls="--", lw=1, label="GAN")
            ax_rec.axhline(gan["recall"], color="k", ls="--", lw=1, label="GAN")
        ax_fd.set(xlabel=axis, ylabel="FD-judge (lower is better)",
                  title=f"FD-judge vs {axis} ({fixed_name} = {fixed:g})")  # fmt: skip
        ax_rec.set(xlabel=axis, ylabel="recall (higher is better)",
                   title=f"recall vs {axis} ({fixed_name} = {fixed:g})")  # fmt: skip
        ax_fd.legend(fontsize=8)
        fig.tight_layout()
        save_png(fig, img_dir / name)
        plt.close(fig)
        print(f"\nwrote {img_dir / name}")


def grids(base: Diffusion, img_dir: Path, seed: int) -> None:
    """Sample grids (4 per digit, same seed) of the old default and today's default."""
    from pipelines.evaluation import plots

    c = DiffusionConfig()
    for name, s in (
        ("old", Setting(**OLD_DEFAULT)),
        ("default", Setting(c.sampler, c.timestep_spacing, c.sample_steps, c.guidance_scale)),
    ):
        images = variant(base, s).sample(40, torch.Generator().manual_seed(seed),
                                         labels=torch.arange(40) % 10)  # fmt: skip
        path = img_dir / f"diffusion_samples_{name}.png"
        plots.sample_grid(images, path, nrow=10, title=f"{s.key} ({name})")
        print(f"wrote {path}")


# ---- timing ---------------------------------------------------------------------------------
def timing(args, base: Diffusion, judge, reference: dict) -> None:
    """Interleaved timing of the default sampler, its speed variants and DDIM-15 (guidance 2)."""
    cfg = EvalConfig(n_samples=args.timing_n, sample_seed=args.seed,
                     sample_batch_size=args.batch_size)  # fmt: skip
    c = DiffusionConfig()  # today's defaults (models/diffusion/config.py)
    default = Setting(c.sampler, c.timestep_spacing, c.sample_steps, c.guidance_scale)
    old = Setting(**OLD_DEFAULT)
    # name -> (setting, speed options, chunk, inference_mode)
    variants: dict[str, tuple] = {"DDIM-15 g2 (old default)": (old, {}, None, False),
                                  f"default {default.key}": (default, {}, None, False)}  # fmt: skip
    if args.speed_variants:
        variants |= {
            "default, fp32 (bf16 off)": (default, {"bf16_autocast": False}, None, False),
            "default, channels_last": (default, {"channels_last": True}, None, False),
            "default, inference_mode": (default, {}, None, True),
            "default, chunk 64": (default, {}, 64, False),
            "default, chunk 256": (default, {}, 256, False),
            "default, chunk 512": (default, {}, 512, False),
        }
    times: dict[str, list[float]] = {k: [] for k in variants}
    loads: list[float] = []
    fds: dict[str, float] = {}
    for rep in range(args.repeats):
        for name, (s, speed, chunk, inference) in variants.items():
            model = variant(base, s, **speed)
            with chunk_size(chunk):
                images, _, ms, load = timed_samples(model, cfg, inference)
            times[name].append(ms)  # ms per image = s per 1,000 images
            loads += list(load)
            if rep == 0 and args.timing_fd and cfg.n_samples >= 100:
                fds[name] = quality(judge, reference, images, cfg.pr_k)["fd_judge"]
            print(f"rep {rep} {name}: {times[name][-1]:.2f} s/1000 (load {load[0]:.2f})",
                  flush=True)  # fmt: skip
    ref = statistics.median(times["DDIM-15 g2 (old default)"])
    print(
        f"\n### Timing ({args.repeats} interleaved repeats, {cfg.n_samples} images each, "
        f"{torch.get_num_threads()} threads, load average {min(loads):.2f}-{max(loads):.2f})\n"
    )
    print("| variant | s / 1,000 images (median) | min | relative to DDIM-15 g2 |"
          + (" FD-judge |" if fds else ""))  # fmt: skip
    print("|---|---:|---:|---:|" + ("---:|" if fds else ""))
    for name, ts in times.items():
        med = statistics.median(ts)
        fd = f" {fds[name]:.2f} |" if name in fds else (" |" if fds else "")
        print(f"| {name} | {med:.2f} | {min(ts):.2f} | {med / ref:.2f} |{fd}")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[1:]))  # fmt: skip
    parser.add_argument("--model-dir", type=Path, default=ROOT / "artifacts/models/diffusion")
    parser.add_argument("--judge-dir", type=Path, default=ROOT / "artifacts/judge")
    parser.add_argument("--results", type=Path, default=ROOT / "docs/img/diffusion_sweep.json",
                        help="accumulated sweep results (JSON)")  # fmt: skip
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs/img")
    parser.add_argument("--samplers", type=_names, default=["ddim", "dpmpp2m"])
    parser.add_argument("--spacings", type=_names, default=["trailing"])
    parser.add_argument("--guidance", type=_floats, default=[0, 0.5, 1, 1.5, 2, 3])
    parser.add_argument("--steps", type=_ints, default=[6, 8, 10, 15, 20])
    parser.add_argument("--n-samples", type=int, default=1000, help="as evaluate.n_samples")
    parser.add_argument("--seed", type=int, default=0, help="as evaluate.sample_seed")
    parser.add_argument("--batch-size", type=int, default=250, help="images per sample() call")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    parser.add_argument("--plot-steps", type=int, default=8, help="steps of the guidance plot")
    parser.add_argument("--plot-guidance", type=float, default=1.0,
                        help="guidance of the steps plot")  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="tables + plots, no sampling")
    parser.add_argument("--timing-only", action="store_true",
                        help="only time the default vs DDIM-15 (no sweep, no plots)")  # fmt: skip
    parser.add_argument("--timing", action="store_true", help="also time after the sweep")
    parser.add_argument("--grids", action="store_true", help="old vs new default sample grids")
    parser.add_argument("--timing-n", type=int, default=1000, help="images per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing repeats")
    parser.add_argument(
        "--speed-variants",
        action="store_true",
        help="also bf16 off, channels_last, inference_mode, chunk sizes",
    )
    parser.add_argument("--timing-fd", action="store_true",
                        help="FD-judge of each timed variant (first repeat)")  # fmt: skip
    args = parser.parse_args()

    from pipelines.training.resources import available_cores

    torch.set_num_threads(args.threads or available_cores())
    base = load_model(args.model_dir)
    if not isinstance(base, Diffusion):
        raise SystemExit(f"{args.model_dir} holds a {base.family} model, not diffusion")
    judge = load_judge(args.judge_dir)
    reference = {k: np.asarray(v) for k, v in
                 load_reference(args.judge_dir / "reference.npz").items()}  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()}", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    if args.timing_only:
        timing(args, base, judge, reference)
        return
    if not args.report_only:
        sweep(args, base, judge, reference, args.results)
    report(load_results(args.results), args.img_dir, args.plot_steps, args.plot_guidance)
    if args.grids:
        grids(base, args.img_dir, args.seed)
    if args.timing:
        timing(args, base, judge, reference)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
