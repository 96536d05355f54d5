"""The denoising demonstration on the trained models, for docs/denoising.md.

For each family trained in artifacts/models/<family>: the evaluate stage's denoising run
(pipelines.evaluation.denoising) on the test split, its MSEs and wall time, and the figure as
docs/img/denoising_<family>.png. `--strengths` sweeps the diffusion denoising strength;
`--dae-steps N` trains the params.yaml autoencoder for N steps plain and as a denoising
autoencoder (`denoise_std`) and compares their denoising MSEs. Not a test: times depend on load.

    .venv/bin/python benchmarks/bench_denoising.py
    .venv/bin/python benchmarks/bench_denoising.py --family diffusion --strengths 0.2 0.3 0.4 0.5
    .venv/bin/python benchmarks/bench_denoising.py --family autoencoder --dae-steps 600
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from models.io import load_model
from models.spec import FAMILIES
from pipelines.data.dataset import load_tensors
from pipelines.evaluation.denoising import CORRUPTIONS, Denoised, run_denoising, write_figure
from pipelines.training.loop import TrainConfig, train
from pipelines.training.resources import available_cores

REPO = Path(__file__).resolve().parents[1]


def _row(name: str, result: Denoised, seconds: float | None = None) -> str:
    cells = [f"{result.input_mse[k].mean():.4f} → {result.output_mse[k].mean():.4f}"
             for k in CORRUPTIONS]  # fmt: skip
    timing = "" if seconds is None else f" {seconds:.2f} |"
    return f"| {name} | " + " | ".join(cells) + f" |{timing}"


def _strength_sweep(model, test: tuple, strengths: list[float]) -> None:
    print("| diffusion strength | " + " | ".join(CORRUPTIONS) + " | seconds |")
    for strength in strengths:
        start = time.perf_counter()
        result = run_denoising(model, *test, strength=strength)
        print(_row(f"{strength:g}", result, time.perf_counter() - start), flush=True)


def _dae_comparison(test: tuple, steps: int, sigmas: list[float]) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    base = dict(params["autoencoder"].get("model") or {})
    short = {"steps": steps, "progress": False, "checkpoint_every": steps, "val_every": steps}
    train_cfg = TrainConfig.from_dict(
        {**params.get("train", {}), **params["autoencoder"]["train"], **short}
    )
    data = load_tensors(REPO / "data", "train"), load_tensors(REPO / "data", "val")
    print(f"| autoencoder, {steps} steps | " + " | ".join(CORRUPTIONS) + " | recon_mse (clean) |")
    for sigma in sigmas:
        config = {**base, "denoise_std": sigma}
        with tempfile.TemporaryDirectory() as ckpt:
            model = train("autoencoder", config, train_cfg, *data, Path(ckpt)).model.eval()
        with torch.no_grad():
            x = test[0][:2000]
            recon = float((model.reconstruct(x) - x).square().mean())
        print(_row(f"denoise_std={sigma:g}", run_denoising(model, *test)) + f" {recon:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=FAMILIES, action="append")
    parser.add_argument("--strengths", type=float, nargs="*", default=[])
    parser.add_argument("--dae-steps", type=int, default=0)
    parser.add_argument("--dae-sigmas", type=float, nargs="*", default=[0.0, 0.5])
    parser.add_argument("--figures", default=str(REPO / "docs" / "img"), help="'' = none")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    test = load_tensors(REPO / "data", "test")
    families = args.family or [f for f in FAMILIES if (REPO / "artifacts/models" / f).is_dir()]
    print("| family | " + " | ".join(CORRUPTIONS) + " | seconds (run + figure) |")
    for family in families:
        model = load_model(REPO / "artifacts" / "models" / family).eval()
        run_denoising(model, *test)  # warm-up: first calls allocate
        start = time.perf_counter()  # what the evaluate stage adds: the run and the figure
        result = run_denoising(model, *test)
        figure = Path(args.figures or tempfile.gettempdir()) / f"denoising_{family}.png"
        write_figure(model, result, figure)
        print(_row(family, result, time.perf_counter() - start), flush=True)
        if family == "diffusion" and args.strengths:
            _strength_sweep(model, test, args.strengths)
    if args.dae_steps:
        _dae_comparison(test, args.dae_steps, args.dae_sigmas)


if __name__ == "__main__":
    main()
