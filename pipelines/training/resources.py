"""Machine resources, a leaf module: a stage that only asks how many cores it may use does not
depend on the training loop (dvc.yaml deps follow imports)."""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
