"""Process-level setup of the service: settings from the environment, metrics, logging."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from models.spec import ANOMALY_COUNTER, SCORE_HISTOGRAM

log = logging.getLogger("genops.serving")


@dataclass(frozen=True)
class Settings:
    """Runtime knobs, read from the environment once per service instance."""

    reload_interval_s: float = 0.0  # GENOPS_RELOAD_INTERVAL_S; 0 = no polling
    batching: bool = True  # GENOPS_BATCHING=0 turns adaptive batching off
    max_body_bytes: int = 16 << 20  # GENOPS_MAX_BODY_BYTES
    admin_token: str = ""  # GENOPS_ADMIN_TOKEN; /admin/reload refuses (403) until it is set
    torch_threads: int = 0  # GENOPS_TORCH_THREADS; 0 = torch's default
    max_generate_cost: int = 4096  # GENOPS_MAX_GENERATE_COST: n x sampling steps per request
    generate_queue: int = 8  # GENOPS_GENERATE_QUEUE: /generate requests in flight, at most
    score_queue: int = 16  # GENOPS_SCORE_QUEUE: /score + /reconstruct requests in flight
    generate_max_queue_s: float = 20.0  # GENOPS_GENERATE_MAX_QUEUE_S: queued work, seconds
    score_max_queue_s: float = 2.0  # GENOPS_SCORE_MAX_QUEUE_S: queued work, seconds
    generate_nice: int = 10  # GENOPS_GENERATE_NICE: CPU niceness of the generation threads
    gc_freeze: bool = True  # GENOPS_GC_FREEZE=0: keep the loaded heap in the collector's scans
    shadow_share: float = 0.0  # GENOPS_SHADOW_SHARE: share of champion /score traffic shadowed
    shadow_capacity: int = 2  # GENOPS_SHADOW_CAPACITY: shadow requests in flight, at most
    shadow_max_busy: float = 0.02  # GENOPS_SHADOW_MAX_BUSY: share of time shadow work may take

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            reload_interval_s=float(env.get("GENOPS_RELOAD_INTERVAL_S", "0") or 0),
            batching=env.get("GENOPS_BATCHING", "1").strip().lower() not in ("0", "false", "no"),
            max_body_bytes=int(env.get("GENOPS_MAX_BODY_BYTES", str(16 << 20))),
            admin_token=env.get("GENOPS_ADMIN_TOKEN", ""),
            torch_threads=int(env.get("GENOPS_TORCH_THREADS", "0") or 0),
            max_generate_cost=_positive(env, "GENOPS_MAX_GENERATE_COST", 4096),
            generate_queue=_positive(env, "GENOPS_GENERATE_QUEUE", 8),
            score_queue=_positive(env, "GENOPS_SCORE_QUEUE", 16),
            generate_max_queue_s=float(env.get("GENOPS_GENERATE_MAX_QUEUE_S", "20") or 20),
            score_max_queue_s=float(env.get("GENOPS_SCORE_MAX_QUEUE_S", "2") or 2),
            generate_nice=int(env.get("GENOPS_GENERATE_NICE", "10") or 0),
            gc_freeze=_flag(env, "GENOPS_GC_FREEZE", True),
            shadow_share=float(env.get("GENOPS_SHADOW_SHARE", "0") or 0),
            shadow_capacity=_positive(env, "GENOPS_SHADOW_CAPACITY", 2),
            shadow_max_busy=float(env.get("GENOPS_SHADOW_MAX_BUSY", "0.02") or 0.02),
        )


def worker_count() -> int:
    """GENOPS_WORKERS: serving worker processes (default 1), for `@bentoml.service(workers=)`.

    Read when the service module is imported, i.e. by `bentoml serve` and every worker it
    starts, so the variable must be set for the serving process (also inside a container).
    """
    return _positive(os.environ, "GENOPS_WORKERS", 1)


def worker_info() -> dict[str, Any]:
    """Which worker process answers: pid, BentoML's worker index (1-based) and the count."""
    try:
        from bentoml._internal.context import server_context

        index = server_context.worker_index
    except Exception:  # outside `bentoml serve` (tests, to_asgi)
        index = None
    return {"pid": os.getpid(), "index": index, "workers": worker_count()}


def _flag(env: Any, name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    return default if not value else value not in ("0", "false", "no", "off")


def freeze_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach (gc.freeze).

    A loaded service holds about a million long-lived objects (torch, BentoML, pydantic and
    the models); every full (generation 2) collection walked all of them, holding the GIL
    for 0.1-0.6 s on this 2-core VM under load, several times a minute under load: that pause
    was the p99 of `/score`. Called once the models are loaded (and after each swap), it
    leaves the collector only the objects created since; the frozen ones are never freed
    (a replaced catalog's tensors are freed by reference counting, not by the collector).
    """
    import gc

    gc.collect()
    gc.freeze()


def _positive(env: Any, name: str, default: int) -> int:
    value = int(env.get(name, str(default)) or default)
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@cache
def score_metrics() -> tuple[Any, Any]:
    """Prometheus metrics, created lazily: BentoML sets the multiprocess dir before __init__."""
    import prometheus_client as prom

    buckets = tuple(round(10.0**e, 6) for e in np.arange(-4.0, 2.01, 0.25))
    histogram = prom.Histogram(
        SCORE_HISTOGRAM,
        "Raw anomaly statistics (raw_score) served by /score: the drift watch reads them",
        ["family", "version"],
        buckets=buckets,
    )
    anomalies = prom.Counter(
        ANOMALY_COUNTER, "Images /score flagged as anomalous", ["family", "version"]
    )
    return histogram, anomalies


@cache
def shed_counter() -> Any:
    """Requests refused with 503 by admission control, per lane (they skip the access log)."""
    import prometheus_client as prom

    return prom.Counter(
        "genops_shed_requests", "Requests refused with 503 because a lane was full", ["lane"]
    )


class _ClientErrorFilter(logging.Filter):
    """Log a request rejected with a 4xx as one WARNING line instead of a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        status = getattr(getattr(exc, "error_code", None), "value", 0)
        if type(exc).__name__ == "ValidationError" or 400 <= status < 500:
            record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}".splitlines()[0]
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging() -> None:
    """Show our INFO lines through BentoML's handlers; keep 4xx out of the error log."""
    ours = logging.getLogger("genops")
    ours.disabled = log.disabled = False
    if ours.level == logging.NOTSET:
        ours.setLevel(logging.INFO)
    http_log = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, _ClientErrorFilter) for f in http_log.filters):
        http_log.addFilter(_ClientErrorFilter())
