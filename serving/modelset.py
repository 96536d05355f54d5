"""The served model set: read the source, load a catalog beside the serving one, swap, poll.

`ModelSet` owns the catalog a worker serves and every way it changes: the load at start, a
reload asked for by `/admin/reload` (passed on to the other workers, serving.reload_notice), and
the poller (GENOPS_RELOAD_INTERVAL_S). A catalog
that is not ready never replaces one that is; a request takes the catalog once (`resolve`),
so it finishes on the models it started with. Each worker process has its own ModelSet.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from models.spec import redact_text
from serving.bundle import ServedModel
from serving.catalog import Catalog, Route, empty_catalog, load_catalog
from serving.reload_notice import ReloadNotice, notice_path
from serving.schemas import ReloadResponse
from serving.sources import ModelSource, source_from_env

log = logging.getLogger("genops.serving")
# A catalog with load errors (e.g. a failed download) is retried this often even when the
# source is unchanged, so a transient failure does not leave a model out until the next change.
ERROR_RETRY_S = 30.0


class ModelSet:
    """The catalog one worker serves, and its reloads (admin, poll) from the model source.

    `on_swap` runs after every swap (the service freezes the new heap for the collector).
    """

    def __init__(
        self,
        reload_interval_s: float,
        on_swap: Callable[[], None] | None = None,
        workers: int = 1,
    ):
        self.reload_interval_s = reload_interval_s
        self.on_swap = on_swap
        # with several workers, an admin reload on one is passed on to the others
        self.notice = (
            ReloadNotice(notice_path(), lambda force: self.reload(force, "notice"))
            if workers > 1
            else None
        )
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self.source: ModelSource | None = None
        self.catalog: Catalog = empty_catalog("none", "not loaded yet")
        self.last_reload: ReloadResponse | None = None  # the last attempt, whatever its outcome
        self.last_reload_info: dict[str, Any] | None = None  # the same, with when and how long
        self.last_swap: dict[str, Any] | None = None  # the last time the served set changed
        self._refused: dict[str, float] = {}  # fingerprint of a refused model set -> when

    def start(self) -> None:
        """Load from GENOPS_MODEL_SOURCE (blocking), then start the poller if one is set."""
        try:
            self.source = source_from_env()
        except ValueError as exc:
            log.error("%s", exc)
            self.catalog = empty_catalog("invalid", str(exc))
        else:
            self.reload(force=True, trigger="startup")
        if self.reload_interval_s > 0 and self.source is not None:
            threading.Thread(target=self._poll, name="genops-reload", daemon=True).start()
        if self.notice is not None:
            self.notice.watch()

    def stop(self) -> None:
        self._stop.set()
        if self.notice is not None:
            self.notice.stop()

    @property
    def ready(self) -> bool:
        return self.catalog.ready

    def reload(self, force: bool = False, trigger: str = "admin") -> ReloadResponse:
        """Re-read the source; build a new catalog, then swap the reference (atomically).

        A catalog that is not ready never replaces one that is: the old models keep serving.
        An admin reload is passed on to the other workers, which reload the same way.
        """
        try:
            return self._reload_locked(force, trigger)
        finally:
            if trigger == "admin" and self.notice is not None:
                self.notice.announce(force)

    def _reload_locked(self, force: bool, trigger: str) -> ReloadResponse:
        with self._reload_lock:
            before, started = self.catalog, time.time()
            result = self._reload(force)
            took = round(time.time() - started, 3)
            info = {"trigger": trigger, "at": started, "duration_s": took}
            self.last_reload, self.last_reload_info = result, result.model_dump() | info
            if result.swapped and self.on_swap is not None and trigger != "startup":
                self.on_swap()
            if result.swapped:
                self.last_swap = {
                    "at": self.catalog.loaded_at,
                    "trigger": trigger,
                    "load_s": took,
                    "from": before.versions(),
                    "to": self.catalog.versions(),
                }
            return result

    def _reload(self, force: bool) -> ReloadResponse:
        current = self.catalog

        def kept(reason: str, refused: bool = True, quiet: bool = False) -> ReloadResponse:
            if refused and not quiet:
                log.error("reload refused: %s", reason)
            return ReloadResponse(
                swapped=False,
                refused=refused,
                ready=current.ready,
                fingerprint=current.fingerprint,
                reason=reason,
            )

        if self.source is None:
            return kept("no valid model source (see GENOPS_MODEL_SOURCE)")
        try:
            fingerprint = self.source.fingerprint()
        except Exception as exc:
            return kept(redact_text(f"cannot read model source {self.source.spec}: {exc}"))
        now = time.time()
        if not force:
            retry = bool(current.errors) and now - current.loaded_at >= ERROR_RETRY_S
            if fingerprint == current.fingerprint and not retry:
                return kept("model source unchanged", refused=False)
            if now - self._refused.get(fingerprint, -ERROR_RETRY_S) < ERROR_RETRY_S:
                reason = f"{fingerprint} was refused less than {ERROR_RETRY_S:.0f} s ago"
                return kept(reason, quiet=True)
        new = load_catalog(self.source)  # beside the serving one, which keeps answering
        if current.ready and not new.ready:
            self._refused = {new.fingerprint: new.loaded_at}
            reason = f"new models not servable, kept the current ones: {dict(new.errors)}"
            return kept(redact_text(reason))
        self._refused = {}
        unchanged = new.fingerprint == current.fingerprint and new.versions() == current.versions()
        if not force and unchanged and set(new.errors) == set(current.errors):
            # a retry that failed the same way again: keep the models, restart the retry clock
            self.catalog = dataclasses.replace(current, loaded_at=new.loaded_at)
            return kept("model source unchanged; load errors persist", refused=False)
        self.catalog = new  # one reference swap; in-flight requests keep the old catalog
        log.info(
            "serving model set %s from %s (ready=%s): %s",
            new.fingerprint,
            new.source,
            new.ready,
            new.versions(),
        )
        return ReloadResponse(
            swapped=True,
            refused=False,
            ready=new.ready,
            fingerprint=new.fingerprint,
            reason="loaded",
        )

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            try:
                self.reload(trigger="poll")
            except Exception:
                log.exception("periodic reload failed; still serving the current models")

    def resolve(self, task: str, name: str | None) -> ServedModel:
        """The model answering `task` (`name`: champion or a family), from one read of the
        catalog, so the whole request uses one model set (NotReady, ModelNotFound otherwise)."""
        return self.catalog.resolve(task, name)

    def route(self, task: str, name: str | None, client: str) -> Route:
        """`resolve`, with the task's canary applied for this client (Catalog.route)."""
        return self.catalog.route(task, name, client)

    def describe(self) -> dict[str, Any]:
        return {
            **self.catalog.describe(),
            "reload_interval_s": self.reload_interval_s,
            "last_reload": self.last_reload_info,
            "last_swap": self.last_swap,
        }
