"""`bentoml serve` as a subprocess on loopback: the one launcher of the tests and benchmarks.

    with ServeProcess("dir:models", home) as server:      # waits for /readyz, stops on exit
        server.client.post("/score", json={...})

Each server gets a free port, its own BENTOML_HOME under `home`, a log file (`server.log()`
shows its tail), its own process group (stopping it stops its workers) and, optionally, a set
of CPUs its whole process tree is pinned to. Not used by the service itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 180.0
PORT_RACE = "Address already in use"
MAX_RELAUNCHES = 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """A `bentoml serve` subprocess and an httpx client pointed at it.

    `source`: GENOPS_MODEL_SOURCE (None: inherit none, e.g. a Bento that brings its models).
    `repo`: the checkout whose code is served (cwd and PYTHONPATH), e.g. a baseline's archive.
    `batching`: GENOPS_BATCHING when not None. `cpus`: pin the process tree to these CPUs.
    GENOPS_TORCH_THREADS defaults to 1 (the caller's environment or `extra_env` override it).
    """

    def __init__(
        self,
        source: str | None,
        home: Path,
        extra_env: dict[str, str] | None = None,
        *,
        target: str = "serving.service:GenOps",
        repo: Path = REPO,
        cwd: Path | None = None,
        batching: bool | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self._home = Path(home)
        self._env = {
            **{k: v for k, v in os.environ.items() if k != "GENOPS_MODEL_SOURCE"},
            **({} if source is None else {"GENOPS_MODEL_SOURCE": source}),
            **({} if batching is None else {"GENOPS_BATCHING": "1" if batching else "0"}),
            "BENTOML_HOME": str(self._home / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "True",
            "GENOPS_TORCH_THREADS": os.environ.get("GENOPS_TORCH_THREADS", "1"),
            "PYTHONPATH": str(repo),
            **(extra_env or {}),
        }
        self._command = self.serve_command(target)
        self._cwd = cwd or repo
        self._cpus = cpus
        self.relaunches = 0
        self._launch()

    def serve_command(self, target: str) -> list[str]:
        """The server's command line, less `--host` and `--port` (added per launch)."""
        return [sys.executable, "-m", "bentoml", "serve", target]

    def _launch(self) -> None:
        """Start `bentoml serve` on a fresh free port (its log and client follow the port)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self._home / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cpus = self._cpus
        self.proc = subprocess.Popen(
            [*self._command, "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self._cwd,
            env=self._env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if cpus is None else lambda: os.sched_setaffinity(0, cpus),
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                # bentoml picks its own internal (circus) ports by probing for a free one and
                # binding it later: another process can take it in between. Such a start
                # failure says nothing about our code, so start again on new ports.
                if PORT_RACE in log and self.relaunches < MAX_RELAUNCHES:
                    self.relaunches += 1
                    self.client.close()
                    self._log.close()
                    self._launch()
                    continue
                raise RuntimeError(f"server exited early:\n{log}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def peak_rss_mb(self) -> tuple[float, float]:
        """(largest single process, whole tree) peak resident set size, MiB (Linux VmHWM):
        what the server ever held, the model load's transient included."""
        return self._rss_mb("VmHWM")

    def rss_mb(self) -> tuple[float, float]:
        """(largest single process, whole tree) resident set size now, MiB (Linux VmRSS):
        what a running server holds."""
        return self._rss_mb("VmRSS")

    def _rss_mb(self, field: str) -> tuple[float, float]:
        import psutil

        sizes = []
        root = psutil.Process(self.proc.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
                kb = next(
                    int(line.split()[1]) for line in status.splitlines() if line.startswith(field)
                )
            except (OSError, StopIteration):
                kb = proc.memory_info().rss // 1024
            sizes.append(kb / 1024)
        return max(sizes), sum(sizes)

    def __enter__(self) -> ServeProcess:
        """Ready to serve (stopped again if it never gets ready)."""
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
