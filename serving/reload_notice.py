"""`/admin/reload` reaches every worker: the worker that answers it tells the others.

BentoML hands each request to one worker process, and each worker has its own model set. The
worker that ran an admin reload writes a notice (a fresh token and the `force` flag) to a file
the workers of one server share; every other worker checks the file a few times a second and
reloads when the token is new. The file lives in the temporary directory, named after the
parent process all workers of one `bentoml serve` share (GENOPS_RELOAD_NOTICE overrides it).
A notice left by an earlier server is read at start and ignored: only a new one counts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("genops.serving")
CHECK_EVERY_S = 0.25


def notice_path() -> Path:
    """GENOPS_RELOAD_NOTICE, else `<tmp>/genops-reload-<pid of the workers' parent>.json`."""
    explicit = os.environ.get("GENOPS_RELOAD_NOTICE")
    if explicit:
        return Path(explicit)
    return Path(tempfile.gettempdir()) / f"genops-reload-{os.getppid()}.json"


class ReloadNotice:
    """One worker's side of the notice file: `announce` after an admin reload, `watch` for the
    others' (calling `on_notice(force)` in a daemon thread)."""

    def __init__(self, path: Path, on_notice: Callable[[bool], object]) -> None:
        self.path = path
        self.on_notice = on_notice
        self._stop = threading.Event()
        notice = self._read()
        self._seen = notice.get("token") if notice else None  # old news at start

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def announce(self, force: bool) -> None:
        """Tell the other workers to reload (atomically: they never read half a notice)."""
        token = f"{os.getpid()}-{time.time_ns()}"
        self._seen = token
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump({"token": token, "force": bool(force), "pid": os.getpid()}, fh)
            os.replace(tmp, self.path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            log.exception("could not tell the other workers to reload (%s)", self.path)

    def watch(self) -> None:
        threading.Thread(target=self._watch, name="genops-reload-notice", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(CHECK_EVERY_S):
            notice = self._read()
            if not notice or notice.get("token") == self._seen:
                continue
            self._seen = notice.get("token")
            log.info("reload asked for by worker %s", notice.get("pid"))
            try:
                self.on_notice(bool(notice.get("force")))
            except Exception:
                log.exception("reload on another worker's notice failed; serving on")
