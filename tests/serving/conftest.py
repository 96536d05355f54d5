"""Serving fixtures: a tiny trained autoencoder bundle and a real `bentoml serve` subprocess
(serving.devserver.ServeProcess, re-exported here as `Server`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import Batch
from models.calibration import Calibration
from models.io import build_model
from serving.bundle import write_bundle
from serving.devserver import ServeProcess as Server

REPO = Path(__file__).resolve().parents[2]
AE_CONFIG = {"arch": "mlp", "hidden_dims": [64], "latent_dim": 8}
TRAIN, CALIB = slice(0, 2000), slice(4000, 4500)
ADMIN_TOKEN = "test-admin-token-0123456789"  # the session server's GENOPS_ADMIN_TOKEN
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}


def train_tiny_autoencoder(
    images: torch.Tensor, labels: torch.Tensor, conditional: bool = True, steps: int = 40
):
    """A few dozen optimisation steps of a 784-64-8 MLP autoencoder on real digits."""
    torch.manual_seed(0)
    model = build_model("autoencoder", {**AE_CONFIG, "conditional": conditional})
    optimizers = model.configure_optimizers()
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (128,), generator=generator)
        model.training_step(Batch(images[idx], labels[idx], step, generator), optimizers)
    return model.eval()


def write_role(
    root: Path,
    role: str,
    model,
    calib_images: torch.Tensor,
    name: str,
    version: str,
    tasks: list[str],
) -> None:
    """One bundle: weights + calibration fitted on held-out digits the product's way (two-sided
    with the input-energy test, params.yaml's budgets) + meta.json."""
    with torch.no_grad():
        val_scores = model.anomaly_score(calib_images).numpy()
    write_bundle(
        root / role,
        model,
        Calibration.fit(
            val_scores, 0.05, low_fpr=0.01, val_images=calib_images.numpy(), energy_fpr=0.01
        ),
        {
            "name": name,
            "version": version,
            "tasks": tasks,
            "data_version": "md5:test",
            "metrics": {"anomaly_auroc_mean": 0.9, "fd_judge": 12.5},
        },
    )


def write_card(bundle: Path, model) -> None:
    """A model card in the bundle, as the registry source materializes it (card/)."""
    from models.spec import MODEL_CARD_DIR
    from pipelines.registry.cards import card_inputs
    from pipelines.registry.cards import write_card as write
    from serving import imaging

    evaluation = bundle.parent / f".eval-{bundle.name}"
    (evaluation / "plots").mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        samples = model.sample(16, generator=torch.Generator().manual_seed(0))[:, 0].numpy()
    (evaluation / "plots" / "samples.png").write_bytes(imaging.png_bytes(imaging.grid(samples)))
    shutil.copy(bundle / "calibration.json", evaluation / "calibration.json")
    meta = json.loads((bundle / "meta.json").read_text())
    tags = {"family": meta["family"], "data_version": meta["data_version"]}
    inputs = card_inputs(meta["name"], meta["version"], tags, evaluation, run_id="test-run")
    write(bundle / MODEL_CARD_DIR, inputs)
    shutil.rmtree(evaluation)


def make_source_dir(root: Path, conditional, unconditional, calib: torch.Tensor) -> Path:
    """generation/ + anomaly/ (a conditional AE) and families/autoencoder/ (an unconditional one).

    The autoencoder stands in for every family here: the other families are trained elsewhere.
    The two champions carry a model card (card/), as the registry source would copy it.
    """
    write_role(root, "generation", conditional, calib, "genops-generation", "3", ["generation"])
    write_role(root, "anomaly", conditional, calib, "genops-anomaly", "2", ["anomaly"])
    write_role(root, "families/autoencoder", unconditional, calib, "genops-autoencoder", "7", [])
    write_card(root / "generation", conditional)
    write_card(root / "anomaly", conditional)
    return root


@pytest.fixture(scope="session")
def tiny_models(real_digits):
    """(conditional, unconditional) tiny autoencoders."""
    images, labels = real_digits
    return (
        train_tiny_autoencoder(images[TRAIN], labels[TRAIN], True),
        train_tiny_autoencoder(images[TRAIN], labels[TRAIN], False),
    )


@pytest.fixture(scope="session")
def source_dir(tmp_path_factory, tiny_models, real_digits) -> Path:
    images, _ = real_digits
    return make_source_dir(tmp_path_factory.mktemp("models"), *tiny_models, images[CALIB])


def private_copy(tmp_path_factory, source_dir: Path, name: str) -> Path:
    """A copy of the bundles that one server owns (its tests may rewrite it to test reload)."""
    dst = tmp_path_factory.mktemp(name) / "models"
    shutil.copytree(source_dir, dst)
    return dst


@pytest.fixture(scope="session")
def served_dir(tmp_path_factory, source_dir) -> Path:
    return private_copy(tmp_path_factory, source_dir, "served")


@pytest.fixture(scope="session")
def server(tmp_path_factory, served_dir):
    env = {"GENOPS_ADMIN_TOKEN": ADMIN_TOKEN}
    with Server(f"dir:{served_dir}", tmp_path_factory.mktemp("server"), env) as srv:
        yield srv


def digits_as_lists(images: torch.Tensor) -> list[list[float]]:
    """(N, 1, 28, 28) -> JSON-ready lists of 784 floats (exactly representable in float32)."""
    return [row.tolist() for row in images.reshape(len(images), -1).numpy().astype(np.float64)]


def register_bundle(client, experiment: str, name: str, bundle: Path) -> str:
    """Register a bundle folder with the tags pipelines/registry writes (a test data version
    and an anomaly metric)."""
    from models.registry_copy import register_folder
    from models.spec import ANOMALY, TASKS, Tag, metric_tag

    tags = {Tag.DATA_VERSION: "md5:test", metric_tag(TASKS[ANOMALY].metric): "0.9"}
    return register_folder(client, experiment, name, bundle, tags)
