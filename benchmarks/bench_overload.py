"""Overload, isolation and recovery of the served API (issue 13's scenarios).

    .venv/bin/python benchmarks/bench_overload.py                 # builds its own bundles
    .venv/bin/python benchmarks/bench_overload.py --source dir:PATH --heavy-n 64 --heavy-steps 64

Bundles (unless --source): generation champion and families/diffusion = the diffusion family's
default network (824k parameters, untrained: sampling costs the same trained or not),
anomaly champion and families/autoencoder = the tests' tiny trained MLP autoencoder.

1. isolation: one-image `/score` (JSON array) p50/p99 alone, then while `--heavy-clients`
   clients keep heavy diffusion `/generate` requests (n x steps at the cost budget) in flight,
   each retrying after the `Retry-After` of a 503; then the time the generation lane needs to
   drain once those clients hang up (their abandoned work is cancelled).
2. overload: `/score` capacity (closed loop, as many connections as the scoring lane
   admits), then an open loop at
   `--overload` x that rate for `--seconds`: admitted p50/p99, counts per status, 5xx other
   than 503, peak RSS of the server's process tree, and the recovery time (from the last
   request sent until a fresh `/score` answers in under 50 ms again).
3. shadow overhead (`--shadow-share S`, instead of 1 and 2): the anomaly champion's one-image
   `/score` at `--shadow-load` x its capacity (open loop) with shadowing off and at share S
   (a challenger beside it: a copy of the champion as v2, so shadow work costs what champion
   work costs), `--repeats` pairs of fresh servers, off/on and on/off in turn; the champion's
   p50/p99 for each, the ratio of the medians of the p99s and of the pooled p99s (issue 22: at
   most 1.1). `--aa`: both sides without shadowing, the same way (the noise floor).
`--baseline PATH` runs everything twice, first serving the checkout at PATH (e.g.
`git archive <commit> serving models | tar -x -C PATH`), then this one, back to back with the
same bundles and settings: on a shared machine only such pairs compare. `--pin 0:1` pins the
load generator to CPU 0 and the server (all its processes and threads) to CPU 1, so the two do
not take each other's core; without it both float over all CPUs. The load average is printed
before and after each server's run.
Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_serving import Server, digits, tiny_bundle  # noqa: E402
from benchmarks.loadgen import Connection, Run, closed_loop, open_loop, run_client  # noqa: E402
from models.calibration import Calibration  # noqa: E402
from models.io import build_model  # noqa: E402
from serving.bundle import write_bundle  # noqa: E402


def bundles(root: Path) -> Path:
    """Tiny trained AE for anomaly, the default diffusion network for generation."""
    tiny_bundle(root, "mlp")
    torch.manual_seed(0)
    diffusion = build_model("diffusion", {}).eval()
    with torch.no_grad():
        scores = diffusion.anomaly_score(torch.from_numpy(digits(32))).numpy()
    calibration = Calibration.fit(scores, target_fpr=0.05)
    for role, name in (
        ("generation", "genops-generation"),
        ("families/diffusion", "genops-diffusion"),
    ):
        write_bundle(root / role, diffusion, calibration, {"name": name, "version": "1"})
    return root


def score_body(images: np.ndarray) -> bytes:
    uint8 = np.round(images[0, 0] * 255).astype(int).reshape(-1)
    return json.dumps({"images": [uint8.tolist()]}).encode()


async def sequential(port: int, path: str, body: bytes, seconds: float) -> Run:
    """One connection, one request after another (a latency probe)."""
    run, conn = Run(), Connection("127.0.0.1", port)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        reply = await conn.request("POST", path, body)
        run.add(reply.status, time.perf_counter() - t0, reply)
    run.elapsed = time.perf_counter() - start
    conn.close()
    return run


async def lane_idle(url: str, lane: str, timeout: float = 120.0) -> float:
    """perf_counter() when the lane has no request in flight and no queued work."""
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.perf_counter() - start < timeout:
            state = (await client.get("/metadata")).json()["lanes"][lane]
            if state["in_flight"] == 0 and state["running"] == 0:
                return time.perf_counter()
            await asyncio.sleep(0.02)
    return float("nan")


async def isolation(server: Server, args, images: np.ndarray) -> dict:
    body = score_body(images)
    alone = await sequential(server.port, "/score", body, args.seconds)
    heavy = json.dumps(
        {"n": args.heavy_n, "steps": args.heavy_steps, "model": "diffusion", "seed": 1}
    ).encode()
    outcome: dict[int, int] = {}
    stop = asyncio.Event()

    async def generator_client(i: int) -> None:
        conn = Connection("127.0.0.1", server.port)
        try:
            while not stop.is_set():
                request = asyncio.ensure_future(conn.request("POST", "/generate", heavy))
                stopper = asyncio.ensure_future(stop.wait())
                done, _ = await asyncio.wait({request, stopper}, return_when="FIRST_COMPLETED")
                if request not in done:  # the client gives up and hangs up
                    request.cancel()
                    break
                stopper.cancel()
                reply = request.result()
                outcome[reply.status] = outcome.get(reply.status, 0) + 1
                if reply.status == 503:
                    wait = min(float(reply.headers.get("retry-after", "1")), args.max_backoff)
                    await asyncio.sleep(wait)
        finally:
            conn.close()

    clients = [asyncio.ensure_future(generator_client(i)) for i in range(args.heavy_clients)]
    await asyncio.sleep(1.0)  # let the heavy work start
    loaded = await sequential(server.port, "/score", body, args.seconds)
    stop.set()
    hang_up = time.perf_counter()
    await asyncio.gather(*clients, return_exceptions=True)
    drain = await lane_idle(server.url, "generation") - hang_up
    return {"alone": alone, "loaded": loaded, "generate": outcome, "drain_s": drain}


async def overload(server: Server, args, images: np.ndarray) -> dict:
    body = score_body(images)
    # as many connections as the scoring lane admits: the most it serves without refusing
    lanes = httpx.get(f"{server.url}/metadata").json()["lanes"]
    connections = lanes["scoring"]["capacity"]
    capacity = await closed_loop(
        "127.0.0.1", server.port, "/score", body, connections, args.seconds
    )
    rate = args.overload * capacity.rate(200)
    stop_time: dict[str, float] = {}

    async def probe_recovery() -> float:
        while "t" not in stop_time:
            await asyncio.sleep(0.01)
        conn = Connection("127.0.0.1", server.port)
        try:
            while True:
                t0 = time.perf_counter()
                reply = await conn.request("POST", "/score", body)
                if reply.status == 200 and time.perf_counter() - t0 < 0.05:
                    return time.perf_counter() - stop_time["t"]
                await asyncio.sleep(0.005)
        finally:
            conn.close()

    probe = asyncio.ensure_future(probe_recovery())
    run = await open_loop(
        "127.0.0.1", server.port, "/score", body, rate, args.seconds, sent=stop_time
    )
    recovery = await probe
    return {
        "capacity": capacity,
        "connections": connections,
        "rate": rate,
        "run": run,
        "recovery_s": recovery,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default=None, help="dir:<path> of bundles")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--heavy-clients", type=int, default=8)
    parser.add_argument("--heavy-n", type=int, default=64)
    parser.add_argument("--heavy-steps", type=int, default=64)
    parser.add_argument("--max-backoff", type=float, default=2.0, help="cap on Retry-After")
    parser.add_argument("--overload", type=float, default=2.0, help="x the measured capacity")
    parser.add_argument("--env", nargs="*", default=[], help="server settings, e.g. KEY=VALUE")
    parser.add_argument("--skip-isolation", action="store_true")
    parser.add_argument("--shadow-share", type=float, default=None, help="run scenario 3")
    parser.add_argument("--shadow-load", type=float, default=0.5, help="x capacity (scenario 3)")
    parser.add_argument("--repeats", type=int, default=3, help="off/on pairs (scenario 3)")
    parser.add_argument("--aa", action="store_true", help="scenario 3 as A/A: both sides share 0")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="first serve the checkout at this path"
    )
    parser.add_argument(
        "--pin", default=None, metavar="CLIENT:SERVER", help="CPU lists, e.g. 0:1 or 0:1,2,3"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    client_cpus = server_cpus = None
    if args.pin:
        client_part, _, server_part = args.pin.partition(":")
        client_cpus = {int(c) for c in client_part.split(",")}
        server_cpus = {int(c) for c in server_part.split(",")}
        os.sched_setaffinity(0, client_cpus)
    checkouts = [("this checkout", REPO)]
    if args.baseline is not None:
        checkouts.insert(0, ("baseline " + str(args.baseline), args.baseline.resolve()))
    with tempfile.TemporaryDirectory(prefix="genops-overload-") as tmp:
        root = Path(args.source.removeprefix("dir:")) if args.source else bundles(Path(tmp) / "m")
        images = digits(1)
        env = dict(item.split("=", 1) for item in args.env)
        if args.shadow_share is not None:
            shadow_overhead(root, Path(tmp), args, images, env, server_cpus)
            return
        for label, repo in checkouts:
            before = os.getloadavg()[0]
            server = Server(
                f"dir:{root}", True, Path(tmp), repo=repo, extra_env=env, cpus=server_cpus
            )
            try:
                iso = None if args.skip_isolation else run_client(isolation(server, args, images))
                over = run_client(overload(server, args, images))
                worker, tree = server.peak_rss_mb()
                lanes = httpx.get(f"{server.url}/metadata").json()["lanes"]
            finally:
                server.stop()
            print(f"\n### {label}\n")
            print(f"- server settings: {env or 'defaults'}; pinned (client:server): {args.pin}")
            print(f"- load average before: {before:.1f}")
            if iso is not None:
                print_isolation(iso, args)
            print_overload(over, args, worker, tree, lanes)
            sys.stdout.flush()


def shadow_overhead(
    root: Path, tmp: Path, args, images: np.ndarray, env: dict, cpus: set[int] | None
) -> None:
    """Scenario 3 (module doc): the champion's latency with shadowing off and on."""
    import shutil

    challenger = root / "challengers" / "anomaly"
    if not challenger.exists():
        shutil.copytree(root / "anomaly", challenger)
        meta = json.loads((challenger / "meta.json").read_text())
        (challenger / "meta.json").write_text(json.dumps(meta | {"version": "2"}))
    body, rate, rows = score_body(images), None, []
    sides = (0.0, args.shadow_share)
    for repeat in range(args.repeats):
        # counterbalanced: the second server of a pair ran slower in an A/A run (ratio 1.2),
        # so every other pair starts with shadowing on
        for share in sides if repeat % 2 == 0 else sides[::-1]:
            settings = env | {"GENOPS_SHADOW_SHARE": str(0.0 if args.aa else share)}
            server = Server(f"dir:{root}", True, tmp, extra_env=settings, cpus=cpus)
            try:
                if rate is None:  # fixed once, from the first server without shadowing
                    connections = httpx.get(f"{server.url}/metadata").json()["lanes"]["scoring"][
                        "capacity"
                    ]
                    capacity = run_client(closed_loop(
                        "127.0.0.1", server.port, "/score", body, connections, args.seconds
                    ))  # fmt: skip
                    rate = args.shadow_load * capacity.rate(200)
                    print(f"- capacity {capacity.rate(200):.0f} req/s; load {rate:.0f} req/s")
                run = run_client(open_loop("127.0.0.1", server.port, "/score", body, rate,
                                           args.seconds))  # fmt: skip
                shadow = httpx.get(f"{server.url}/metadata").json()["shadow"]
            finally:
                server.stop()
            evidence = (shadow["challengers"] or [{}])[0]
            rows.append((repeat, share, run, evidence.get("requests", 0),
                         evidence.get("dropped", 0), evidence.get("errors", 0)))  # fmt: skip
    print("\n| pair | shadow share | requests | p50 ms | p99 ms | non-200 | shadowed | dropped "
          "| shadow errors |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for repeat, share, run, shadowed, dropped, errors in rows:
        print(f"| {repeat + 1} | {share:g} | {run.count()} | {run.percentile_ms(50):.2f} | "
              f"{run.percentile_ms(99):.2f} | {run.count() - run.count(200)} | {shadowed} | "
              f"{dropped} | {errors} |")  # fmt: skip
    runs = {s: [r for _, sh, r, *_ in rows if sh == s] for s in sides}
    p99 = {s: float(np.median([r.percentile_ms(99) for r in runs[s]])) for s in sides}
    answered = {s: np.concatenate([r.latencies.get(200, []) for r in runs[s]]) for s in sides}
    pooled = {s: 1e3 * float(np.percentile(answered[s], 99)) for s in sides}
    on, off = runs[args.shadow_share], runs[0.0]
    pairs = [b.percentile_ms(99) / a.percentile_ms(99) for a, b in zip(off, on, strict=True)]
    label = "A/A (both sides share 0)" if args.aa else f"share {args.shadow_share:g}"
    print(
        f"\n- {label}: champion p99, median of {args.repeats} runs: off {p99[0.0]:.2f} ms, "
        f"on {p99[args.shadow_share]:.2f} ms, ratio {p99[args.shadow_share] / p99[0.0]:.2f}; "
        f"pooled over the runs: off {pooled[0.0]:.2f} ms, on {pooled[args.shadow_share]:.2f} "
        f"ms, ratio {pooled[args.shadow_share] / pooled[0.0]:.2f} (budget 1.1); per-pair "
        f"ratios {[round(x, 2) for x in pairs]}"
    )
    print(f"- CPUs: {os.cpu_count()}, load average at end: {os.getloadavg()[0]:.1f}")


def print_isolation(iso: dict, args) -> None:
    cost = args.heavy_n * args.heavy_steps
    print("| scenario | /score p50 ms | /score p99 ms | /score 200 | other |")
    print("|---|---:|---:|---:|---|")
    for name, run in (
        ("one-image /score alone", iso["alone"]),
        (
            f"... with {args.heavy_clients} clients of diffusion /generate n={args.heavy_n} "
            f"steps={args.heavy_steps} (cost {cost})",
            iso["loaded"],
        ),
    ):
        other = {k: v for k, v in run.statuses().items() if k != 200}
        print(
            f"| {name} | {run.percentile_ms(50):.1f} | {run.percentile_ms(99):.1f} | "
            f"{run.count(200)} | {other or '-'} |"
        )
    print(f"\n- heavy /generate answers by status: {dict(sorted(iso['generate'].items()))}")
    print(f"- generation lane idle {iso['drain_s']:.2f} s after the heavy clients hung up")


def print_overload(over: dict, args, worker: float, tree: float, lanes: dict) -> None:
    run, cap = over["run"], over["capacity"]
    statuses = run.statuses()
    server_errors = {k: v for k, v in statuses.items() if k >= 500 and k != 503}
    print(
        f"\n| /score load | offered req/s | admitted (200) req/s | p50 ms | p99 ms | 503 | "
        f"other 5xx | failed |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| capacity (closed loop, {over['connections']} connections) | - | {cap.rate(200):.0f} | "
        f"{cap.percentile_ms(50):.1f} | {cap.percentile_ms(99):.1f} | {cap.count(503)} | "
        f"{sum(v for k, v in cap.statuses().items() if k >= 500 and k != 503)} | "
        f"{sum(cap.failures.values())} |\n"
        f"| {args.overload:g}x capacity (open loop, {args.seconds:g} s) | {over['rate']:.0f} | "
        f"{run.rate(200):.0f} | {run.percentile_ms(50):.1f} | {run.percentile_ms(99):.1f} | "
        f"{statuses.get(503, 0)} | {sum(server_errors.values())} | "
        f"{sum(run.failures.values())} |"
    )
    retry = sorted(set(run.retry_after))
    print(f"\n- Retry-After values on 503: {retry[:5]}; statuses: {statuses}")
    print(f"- transport failures (status 0) by kind: {dict(run.failures) or 'none'}")
    print(
        f"- 503 answered in p50 {run.percentile_ms(50, 503):.1f} ms, "
        f"p99 {run.percentile_ms(99, 503):.1f} ms"
    )
    if run.start_lag:  # latency counts from the schedule: how much of it is the client's own
        lag = 1e3 * np.percentile(run.start_lag, [50, 99])
        print(f"- load generator started requests late by p50 {lag[0]:.1f} ms, p99 {lag[1]:.1f} ms")
    print(f"- recovery: /score under 50 ms again {over['recovery_s']:.3f} s after the load stopped")
    print(f"- peak RSS: largest process {worker:.0f} MiB, server process tree {tree:.0f} MiB")
    print(f"- lanes at the end: {json.dumps(lanes)}")
    print(f"- CPUs: {os.cpu_count()}, load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
