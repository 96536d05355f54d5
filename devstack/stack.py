"""A team's engines on loopback: PostgreSQL, S3 (moto), an MLflow server, Prefect server + workers.

`genops stack up` starts them with all state under one folder (default `.genops/stack/`), waits
until each answers, and writes `stack.json` (URLs, ports, pids) and `stack.env` (the settings a
client needs: `set -a; . .genops/stack/stack.env; set +a`). `genops stack down` stops them all
(`pg_ctl stop`, then each process group) and removes the state. Nothing here is needed by the
embedded default; a team points the same settings at its own servers (docs/scale-out.md).

    PostgreSQL   Debian's server binaries (initdb, pg_ctl); databases `mlflow` and `prefect`
    S3           moto in server mode, bucket `genops` (objects in its memory: `down` drops them)
    MLflow       `mlflow server` on PostgreSQL, proxied artifacts in s3://genops/mlflow-artifacts
    Prefect      `prefect server start` on PostgreSQL; a process work pool with N workers

PostgreSQL refuses to run as root. As root, its commands run inside a user namespace that maps
root to an unprivileged id (`unshare --user --map-user`): the server is not root, yet the files it
writes stay root's, so the data folder may live anywhere root can write (a pytest tmp_path too).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.orchestration.deployments import FAMILY_QUEUE  # names only, no Prefect import

DEFAULT_DIR = Path(".genops/stack")
STATE_FILE, ENV_FILE = "stack.json", "stack.env"
BUCKET = "genops"
POOL = "genops-pool"
HEARTBEAT_S = 30  # Prefect's minimum flow heartbeat period
DB_USER = "genops"
# moto accepts any credentials; these are placeholders, not secrets.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "genops",
    "AWS_SECRET_ACCESS_KEY": "genops-local",
    "AWS_DEFAULT_REGION": "us-east-1",
}
INSTALL_HINT = "install PostgreSQL's server: `make stack-deps` (apt-get install -y postgresql)"


class StackError(RuntimeError):
    """A part of the stack did not start or stop; the message says which and why."""


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path = DEFAULT_DIR
    prefect: bool = True  # Prefect server + work pool + workers
    workers: int = 2  # family workers (the pool's `families` queue), one flow run at a time each
    orchestrator: bool = True  # one more worker on the default queue, for the nightly parent run
    pool: str = POOL
    mlflow_workers: int = 2
    prefect_ui: bool = False
    startup_timeout_s: float = 120.0
    # family workers on one machine split its cores (worker i: cores[i::workers]), so two
    # trainings side by side do not each start a thread per core: on 2 cores, two 2-thread
    # trainings ran many times slower than two 1-thread ones (OpenMP threads waiting on a
    # descheduled peer). Off where each worker has a machine of its own.
    share_cores: bool = True

    def __post_init__(self) -> None:
        if self.workers < 0 or self.mlflow_workers < 1:
            raise ValueError("workers must be >= 0 and mlflow_workers >= 1")
        if self.startup_timeout_s <= 0:
            raise ValueError("startup_timeout_s must be positive")


# ---- helpers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin_dir() -> Path | None:
    """The folder of PostgreSQL's `initdb`/`pg_ctl`/`postgres` (newest Debian major first)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    if which := shutil.which("initdb"):
        candidates.append(Path(which).resolve().parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _unprivileged_prefix() -> list[str]:
    """How to run PostgreSQL's commands: as is, or as root in a user namespace mapped to a
    non-root id (the `postgres` account where Debian made one, else `nobody`)."""
    if os.geteuid() != 0:
        return []
    try:
        uid = pwd.getpwnam("postgres").pw_uid
    except KeyError:
        uid = pwd.getpwnam("nobody").pw_uid
    prefix = ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise StackError(
            "running as root and `unshare --user` is not permitted here "
            f"({probe.stderr.strip()}); start the stack as a non-root user"
        )
    return prefix


def _wait_http(url: str, proc: subprocess.Popen | None, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{url}: process exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise StackError(f"{url} did not answer within {timeout_s:.0f} s:\n{_tail(log)}")


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _spawn(
    cmd: list[str], log: Path, env: dict[str, str], cwd: Path, cores: set[int] | None = None
) -> subprocess.Popen:
    """Start `cmd` in its own process group (so `down` stops it and its children), on `cores`
    when given (inherited by its children: a worker's flow runs train on its share)."""
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None  # in the child, pre-exec
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=pin,
        )


def core_shares(workers: int) -> list[set[int] | None]:
    """Worker i's share of this process's cores, cores[i::workers]; None (all) where the
    cores are fewer than the workers or there is one worker."""
    cores = sorted(os.sched_getaffinity(0))
    if workers < 2 or len(cores) < workers:
        return [None] * workers
    return [set(cores[i::workers]) for i in range(workers)]


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    return env


# ---- the parts --------------------------------------------------------------------------------
def start_postgres(folder: Path, timeout_s: float) -> dict[str, Any]:
    """initdb (first time) and start a server on 127.0.0.1; create the `mlflow` and `prefect`
    databases. Trust auth on loopback only: a local demo, not a shared server."""
    bin_dir = pg_bin_dir()
    if bin_dir is None:
        raise StackError(f"PostgreSQL server binaries not found; {INSTALL_HINT}")
    prefix, data, log = _unprivileged_prefix(), folder / "data", folder / "postgres.log"
    folder.mkdir(parents=True, exist_ok=True)
    if not (data / "PG_VERSION").is_file():
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER, "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k '' -c max_connections=200 -c fsync=off"
    proc = subprocess.run(
        [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
         "-w", "-t", str(int(timeout_s)), "start"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise StackError(f"PostgreSQL did not start: {proc.stdout}{proc.stderr}\n{_tail(log)}")
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("mlflow", "prefect"):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{db}"')
    conn.close()
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return {"port": port, "data_dir": str(data), "bin_dir": str(bin_dir), "pid": pid,
            "uri": f"postgresql://{DB_USER}@127.0.0.1:{port}"}  # fmt: skip


def stop_postgres(info: dict[str, Any]) -> None:
    pg_ctl = Path(info["bin_dir"]) / "pg_ctl"
    if Path(info["data_dir"], "postmaster.pid").is_file():
        subprocess.run(
            [*_unprivileged_prefix(), str(pg_ctl), "-D", info["data_dir"], "-m", "fast", "-w",
             "stop"],
            capture_output=True, text=True,
        )  # fmt: skip


def start_s3(folder: Path, env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    port, log = free_port(), folder / "s3.log"
    proc = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                  log, env, folder)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    _wait_http(f"{endpoint}/moto-api/", proc, log, timeout_s)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket=BUCKET)
    return {"pid": proc.pid, "endpoint": endpoint, "bucket": BUCKET}


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def start_mlflow(
    folder: Path, pg_uri: str, s3: dict[str, Any], env: dict[str, str], cfg: StackConfig
) -> subprocess.Popen:
    port, log = free_port(), folder / "mlflow.log"
    env = env | S3_CREDENTIALS | {"MLFLOW_S3_ENDPOINT_URL": s3["endpoint"]}
    store = pg_uri.replace("postgresql://", "postgresql+psycopg2://") + "/mlflow"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
           "--artifacts-destination", f"s3://{s3['bucket']}/mlflow-artifacts",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(cfg.mlflow_workers),
           # a loaded machine imports MLflow slowly: uvicorn's 5 s worker health check kills
           "--uvicorn-opts", "--timeout-worker-healthcheck 120"]  # fmt: skip
    proc = _spawn(cmd, log, env, folder)
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    return proc


def start_prefect_server(
    folder: Path, pg_uri: str, env: dict[str, str], cfg: StackConfig
) -> subprocess.Popen:
    port, log = free_port(), folder / "prefect-server.log"
    env = env | _prefect_env(folder) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": pg_uri.replace(
            "postgresql://", "postgresql+asyncpg://") + "/prefect",
        "PREFECT_UI_ENABLED": str(cfg.prefect_ui).lower(),
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    proc = _spawn(cmd, log, env, folder)
    proc.url = f"http://127.0.0.1:{port}/api"  # type: ignore[attr-defined]
    return proc


def _prefect_env(folder: Path) -> dict[str, str]:
    home = folder / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    return {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def start_workers(
    folder: Path, api_url: str, client_env: dict[str, str], cfg: StackConfig, cwd: Path
) -> list[dict[str, Any]]:
    """`prefect worker start --type process`: N family workers on the `families` queue, one flow
    run at a time each (`--limit 1`), so the per-family runs spread over them; plus one
    orchestrator on the `default` queue for the nightly parent run. The first creates the pool."""
    env = _base_env() | _prefect_env(folder) | client_env | {
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),  # for the zombie automation
    }  # fmt: skip
    specs = [(f"worker-{i + 1}", FAMILY_QUEUE) for i in range(cfg.workers)]
    if cfg.orchestrator:
        specs.append(("orchestrator", "default"))
    shares = core_shares(cfg.workers) if cfg.share_cores else [None] * cfg.workers
    workers = []
    for i, (name, queue) in enumerate(specs):
        log = folder / f"{name}.log"
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", cfg.pool,
               "--type", "process", "--name", name, "-q", queue, "--limit", "1"]  # fmt: skip
        cores = shares[i] if i < len(shares) else None  # the orchestrator keeps every core
        proc = _spawn(cmd, log, env, cwd, cores)
        workers.append({"name": name, "pid": proc.pid, "queue": queue, "log": str(log),
                        "cores": sorted(cores) if cores else "all"})  # fmt: skip
        if i == 0:  # let the first create the pool before the others race to
            _wait_http(f"{api_url}/work_pools/{cfg.pool}", proc, log, cfg.startup_timeout_s)
    _wait_workers_online(api_url, cfg.pool, [w["name"] for w in workers], cfg.startup_timeout_s)
    return workers


def create_zombie_automation(api_url: str) -> None:
    """Prefect's documented recipe: a flow run that stops sending heartbeats while running (its
    worker or machine died) is marked Crashed after 3 missed beats, so a parent can resubmit it."""
    body = {
        "name": "genops: crash zombie flow runs",
        "trigger": {
            "type": "event", "posture": "Proactive",
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                       "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                       "prefect.flow-run.Crashed"],
            "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "for_each": ["prefect.resource.id"], "threshold": 1, "within": 3 * HEARTBEAT_S,
        },
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": "no heartbeat: the worker running it is gone"}],
    }  # fmt: skip
    request = urllib.request.Request(
        f"{api_url}/automations/", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as resp:
        if resp.status not in (200, 201):
            raise StackError(f"could not create the zombie automation: HTTP {resp.status}")


def _wait_workers_online(api_url: str, pool: str, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"{api_url}/work_pools/{pool}/workers/filter", data=b"{}", method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as resp:
            seen = {w["name"] for w in json.load(resp) if w.get("status") == "ONLINE"}
        if set(names) <= seen:
            return
        time.sleep(0.5)
    raise StackError(f"workers {sorted(set(names) - seen)} did not come online in pool {pool}")


# ---- up / down / status -------------------------------------------------------------------------
def client_env(state: dict[str, Any]) -> dict[str, str]:
    """What a client of the stack sets: the MLflow server, S3 for DVC, the Prefect API."""
    env = {
        "MLFLOW_TRACKING_URI": state["mlflow"]["url"],
        "MLFLOW_S3_ENDPOINT_URL": state["s3"]["endpoint"],  # only for direct S3 use (DVC)
        **S3_CREDENTIALS,
    }
    if state.get("prefect"):
        env["PREFECT_API_URL"] = state["prefect"]["api_url"]
    return env


def up(cfg: StackConfig = StackConfig(), project_root: Path | None = None) -> dict[str, Any]:
    """Start the stack (stopping whatever is left of an earlier one in the same folder)."""
    folder = Path(cfg.state_dir).resolve()
    if (folder / STATE_FILE).is_file():
        down(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cwd = Path(project_root or os.getcwd()).resolve()
    started = time.perf_counter()
    state: dict[str, Any] = {"state_dir": str(folder), "started_at": time.time(), "pids": []}
    try:
        state["postgres"] = start_postgres(folder / "postgres", cfg.startup_timeout_s)
        _save(folder, state)
        env = _base_env()
        state["s3"] = start_s3(folder, env, cfg.startup_timeout_s)
        state["pids"].append(state["s3"]["pid"])
        _save(folder, state)
        pg = state["postgres"]["uri"]
        mlflow_proc = start_mlflow(folder, pg, state["s3"], env, cfg)
        state["pids"].append(mlflow_proc.pid)
        prefect_proc = start_prefect_server(folder, pg, env, cfg) if cfg.prefect else None
        if prefect_proc is not None:
            state["pids"].append(prefect_proc.pid)
        _save(folder, state)  # both servers start (and migrate their schemas) in parallel
        _wait_http(f"{mlflow_proc.url}/health", mlflow_proc, folder / "mlflow.log",
                   cfg.startup_timeout_s)  # fmt: skip
        state["mlflow"] = {"pid": mlflow_proc.pid, "url": mlflow_proc.url}
        if prefect_proc is not None:
            _wait_http(f"{prefect_proc.url}/health", prefect_proc, folder / "prefect-server.log",
                       cfg.startup_timeout_s)  # fmt: skip
            state["prefect"] = {"pid": prefect_proc.pid, "api_url": prefect_proc.url,
                                "pool": cfg.pool}  # fmt: skip
            create_zombie_automation(prefect_proc.url)
            workers = start_workers(folder, prefect_proc.url, client_env(state), cfg, cwd)
            state["workers"] = workers
            state["pids"] += [w["pid"] for w in workers]
        state["env"] = client_env(state)
        state["startup_s"] = round(time.perf_counter() - started, 1)
        _save(folder, state)
    except BaseException:
        down(folder, keep_data=True)
        raise
    return state


def _save(folder: Path, state: dict[str, Any]) -> None:
    _write_atomic(folder / STATE_FILE, json.dumps(state, indent=2))
    if "env" in state:
        lines = [f"{k}={v}" for k, v in sorted(state["env"].items())]
        _write_atomic(folder / ENV_FILE, "\n".join(lines) + "\n")


def load_state(state_dir: Path = DEFAULT_DIR) -> dict[str, Any] | None:
    path = Path(state_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split(") ")[-1].startswith("Z"))


def stop_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by `pid` (started with a new session), SIGKILL if it stays."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        if not _alive(pid):
            return


def down(state_dir: Path = DEFAULT_DIR, keep_data: bool = False) -> bool:
    """Stop every process of the stack in `state_dir`; remove its state unless `keep_data`.
    Returns False when no stack state was found."""
    folder = Path(state_dir).resolve()
    state = load_state(folder)
    if state is None:
        return False
    for pid in reversed(state.get("pids", [])):  # workers, Prefect, MLflow, then S3
        stop_group(pid)
    if "postgres" in state:
        stop_postgres(state["postgres"])
    (folder / STATE_FILE).unlink(missing_ok=True)
    (folder / ENV_FILE).unlink(missing_ok=True)
    if not keep_data:  # S3 objects lived in moto's memory: keeping the databases alone would
        shutil.rmtree(folder / "postgres", ignore_errors=True)  # leave runs without artifacts
        shutil.rmtree(folder / "prefect-home", ignore_errors=True)
    return True


def status(state_dir: Path = DEFAULT_DIR) -> dict[str, Any]:
    """Each part of the stack and whether it answers now."""
    state = load_state(state_dir)
    if state is None:
        return {"running": False}

    def answers(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return resp.status == 200
        except OSError:
            return False

    parts = {"postgres": _alive(state["postgres"]["pid"]),
             "s3": answers(f"{state['s3']['endpoint']}/moto-api/"),
             "mlflow": answers(f"{state['mlflow']['url']}/health")}  # fmt: skip
    if state.get("prefect"):
        parts["prefect"] = answers(f"{state['prefect']['api_url']}/health")
        parts |= {w["name"]: _alive(w["pid"]) for w in state.get("workers", [])}
    return {"running": all(parts.values()), "parts": parts, "env": state.get("env", {})}


@contextlib.contextmanager
def running(cfg: StackConfig, project_root: Path | None = None) -> Iterator[dict[str, Any]]:
    """The stack for the length of a `with` block (tests, benchmarks)."""
    state = up(cfg, project_root)
    try:
        yield state
    finally:
        down(cfg.state_dir)
