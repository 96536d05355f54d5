"""One image per /score request: the served API side by side with the raw forward pass.

    .venv/bin/python benchmarks/bench_one_image.py                          # tiny MLP autoencoder
    .venv/bin/python benchmarks/bench_one_image.py --baseline /path/to/old/checkout
    .venv/bin/python benchmarks/bench_one_image.py --source dir:PATH --concurrency 1 32

Runs, in one process and one sitting: the raw in-process forward pass of one image (and of a
batch of 32, what perfect batching could reach), then a real `bentoml serve` of this checkout
driven with every one-image input format, and with `--baseline <checkout>` the same server
code of another checkout (e.g. `git worktree add /tmp/base <commit>`) with the JSON array
input it understands. Each scenario runs `--duration` seconds per concurrency with the
keep-alive client in benchmarks/loadgen.py and prints a Markdown table.
Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_serving import Server, bench_parser, digits, source_or_tiny  # noqa: E402
from benchmarks.loadgen import closed_loop, markdown_table, run_client  # noqa: E402
from serving.bundle import load_bundle  # noqa: E402


def payloads(image: np.ndarray) -> dict[str, tuple[str, bytes, str]]:
    """One digit (28, 28) float in [0, 1] in every input format: name -> (path, body, type)."""
    uint8 = np.round(image * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(uint8).save(buffer, format="PNG")
    png = buffer.getvalue()
    boundary = "genopsbench"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return {
        "JSON array (784 uint8 numbers)": (
            "/score",
            json.dumps({"images": [uint8.reshape(-1).tolist()]}).encode(),
            "application/json",
        ),
        "JSON `pixels` (base64 of 784 bytes)": (
            "/score",
            json.dumps({"pixels": base64.b64encode(uint8.tobytes()).decode()}).encode(),
            "application/json",
        ),
        "multipart PNG upload": ("/score", multipart, f"multipart/form-data; boundary={boundary}"),
        "raw 784 bytes, /score/image": (
            "/score/image",
            uint8.tobytes(),
            "application/octet-stream",
        ),
        "raw PNG, /score/image": ("/score/image", png, "image/png"),
    }


def raw_rows(bundle: Path, images: np.ndarray, seconds: float) -> list[dict]:
    served = load_bundle(bundle / "anomaly")
    rows = []
    for name, batch in (("raw forward pass, 1 image", 1), ("raw forward pass, batch of 32", 32)):
        x = images[:batch]
        served.score(x)
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t0 = time.perf_counter()
            served.score(x)
            times.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        rows.append(
            {
                "server": "in-process",
                "input": name,
                "concurrency": 1,
                "p50": 1e3 * np.percentile(times, 50),
                "p99": 1e3 * np.percentile(times, 99),
                "images_s": batch * len(times) / total,
                "errors": 0,
            }
        )
    return rows


def drive(server: Server, label: str, formats: dict, args) -> list[dict]:
    rows = []
    for name, (path, body, ctype) in formats.items():
        for concurrency in args.concurrency:
            run = run_client(
                closed_loop("127.0.0.1", server.port, path, body, concurrency, args.duration, ctype)
            )
            ok = run.count(200)
            rows.append(
                {
                    "server": label,
                    "input": name,
                    "concurrency": concurrency,
                    "p50": run.percentile_ms(50),
                    "p99": run.percentile_ms(99),
                    "images_s": run.rate(200),
                    "errors": run.count() - ok + sum(run.failures.values()),
                }
            )
            print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    header = "server | input | concurrency:r | p50 ms:r | p99 ms:r | images/s:r | errors:r"
    return markdown_table(header, [
        [r["server"], r["input"], r["concurrency"], f"{r['p50']:.2f}", f"{r['p99']:.2f}",
         f"{r['images_s']:.0f}", r["errors"]] for r in rows
    ])  # fmt: skip


def main() -> None:
    parser = bench_parser(__doc__, 5.0, [32])
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to compare")
    parser.add_argument("--formats", nargs="*", default=None, help="subset of input formats")
    parser.add_argument(
        "--score-queue",
        type=int,
        default=64,
        help="GENOPS_SCORE_QUEUE of this checkout's server: above the concurrency, so the "
        "benchmark measures throughput rather than admission control",
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternate baseline/this N times")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("GENOPS_TORCH_THREADS", "1")))
    with tempfile.TemporaryDirectory(prefix="genops-bench-") as tmp:
        tmp_path = Path(tmp)
        bundle = source_or_tiny(args, tmp_path)
        images = digits(64)
        rows = raw_rows(bundle, images, args.duration)
        formats = payloads(images[0, 0])
        if args.formats:
            formats = {k: v for k, v in formats.items() if any(f in k for f in args.formats)}
        env = {"GENOPS_SCORE_QUEUE": str(args.score_queue)}
        for _ in range(args.rounds):
            if args.baseline is not None:
                server = Server(f"dir:{bundle}", True, tmp_path, repo=args.baseline.resolve())
                try:
                    json_only = {k: v for k, v in formats.items() if k.startswith("JSON array")}
                    rows += drive(server, "baseline", json_only, args)
                finally:
                    server.stop()
            server = Server(f"dir:{bundle}", True, tmp_path, extra_env=env)
            try:
                rows += drive(server, "this checkout", formats, args)
            finally:
                server.stop()
    print(markdown(rows))
    print(
        f"\n- torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, "
        f"load average at end: {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
