"""The retry policy both flows share: retry a task only when its failure is transient.

What counts as transient is decided by exception type (pipelines.errors.exit_code_of), never
by a message or a command's output.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import is_transient


def retry_transient(task_, task_run, state) -> bool:
    """Prefect retry condition: retry a failed task run only on a transient error."""
    try:
        state.result()
    except BaseException as exc:
        return is_transient(exc)
    return False


TRANSIENT: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": 5,
    "retry_condition_fn": retry_transient,
}
"""Task options for work that touches a lock, a database, a remote or the network."""
