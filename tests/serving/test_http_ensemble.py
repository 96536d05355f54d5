"""The ensemble as the anomaly champion over real HTTP: one bundle (tiny members inside, one
safetensors + JSON config) served like any family's: `/metadata` lists it, `/score` uses it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.ensemble import Ensemble, fit_ensemble
from models.spec import FAMILIES
from tests.models.contract import make, make_scoring
from tests.serving.conftest import CALIB, Server, digits_as_lists, write_role

HELD_OUT = slice(4500, 4506)


@pytest.fixture(scope="module")
def ensemble(real_digits) -> Ensemble:
    members = {f: make_scoring(f, real_digits[0][:300]) for f in FAMILIES}
    return fit_ensemble(members, real_digits[0][CALIB][:96], 0.05, 0.01, 0.01)


@pytest.fixture(scope="module")
def ensemble_server(tmp_path_factory, ensemble, real_digits):
    root = tmp_path_factory.mktemp("ensemble-bundles")
    calib = real_digits[0][CALIB][96:160]
    write_role(root, "anomaly", ensemble, calib, "genops-anomaly", "4", ["anomaly"])
    generator = make("autoencoder").eval()
    write_role(root, "generation", generator, calib, "genops-generation", "1", ["generation"])
    with Server(f"dir:{root}", tmp_path_factory.mktemp("ensemble-server")) as srv:
        yield srv


def test_metadata_lists_the_ensemble_as_the_anomaly_champion(ensemble_server, ensemble):
    served = ensemble_server.client.get("/metadata").json()["models"]["anomaly"]
    assert served["family"] == "ensemble" and served["version"] == "4"
    assert served["capabilities"] == dataclasses.asdict(ensemble.capabilities)
    assert served["has_reconstruction"] is True and served["supports_steps"] is False


def test_score_uses_the_ensemble(ensemble_server, ensemble, real_digits):
    images = torch.cat([real_digits[0][HELD_OUT], torch.zeros(1, 1, 28, 28)])  # + a blank
    response = ensemble_server.client.post("/score", json={"images": digits_as_lists(images)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["family"] == "ensemble"
    with torch.no_grad():
        local = ensemble.anomaly_score(images).double().numpy()
    np.testing.assert_allclose([r["raw_score"] for r in body["results"]], local, rtol=1e-5)
    assert body["results"][-1]["is_anomaly"] is True  # every member's energy test: too simple
    assert body["results"][-1]["score"] > 1 and body["results"][-1]["percentile"] == 100.0
