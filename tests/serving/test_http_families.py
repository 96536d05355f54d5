"""Every family over real HTTP: one `bentoml serve` over tiny bundles of all four families.

test_http.py covers the API in depth with autoencoders; this file checks that each family's
declared capabilities reach the service: `/generate` takes `label` exactly where the family is
conditional and `steps` exactly where it declares sampling steps, `/reconstruct` takes
`denoise_strength` exactly where it declares denoising, and `/score` serves the scores the
bundle computes in process.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.base import GenerativeModel
from tests.models.contract import FAMILIES, make_scoring
from tests.serving.conftest import CALIB, Server, digits_as_lists, write_role

HELD_OUT = slice(4500, 4508)  # digits never used for calibration


@pytest.fixture(scope="module")
def family_models(real_digits) -> dict[str, GenerativeModel]:
    """Tiny untrained models: the HTTP contract does not need good digits."""
    return {family: make_scoring(family, real_digits[0][:300]) for family in FAMILIES}


@pytest.fixture(scope="module")
def family_server(tmp_path_factory, family_models, real_digits):
    """One server for all families: families/<family>/ plus the two required champion roles."""
    root = tmp_path_factory.mktemp("family-bundles")
    calib = real_digits[0][CALIB][:64]
    for family, model in family_models.items():
        write_role(root, f"families/{family}", model, calib, f"genops-{family}", "1", [])
    champions = {"generation": "diffusion", "anomaly": "autoencoder"}
    for task, family in champions.items():
        write_role(root, task, family_models[family], calib, f"genops-{task}", "1", [task])
    with Server(f"dir:{root}", tmp_path_factory.mktemp("family-server")) as srv:
        yield srv


def test_metadata_shows_each_family_and_its_capabilities(family_server, family_models):
    models = family_server.client.get("/metadata").json()["models"]
    for family, model in family_models.items():
        served = models[f"families/{family}"]
        caps = model.capabilities
        assert served["family"] == family
        assert served["capabilities"] == dataclasses.asdict(caps)
        assert served["conditional"] == caps.conditional
        assert served["supports_steps"] == caps.sampling_steps
        assert served["has_reconstruction"] == caps.reconstruction


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_every_declared_option(family_server, family_models, family):
    model = family_models[family]
    caps = model.capabilities
    payload = {"n": 3, "seed": 5, "format": "array", "model": family}
    label = 4 if caps.conditional else None
    steps = 2 if caps.sampling_steps else None
    payload |= {k: v for k, v in {"label": label, "steps": steps}.items() if v is not None}
    response = family_server.client.post("/generate", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["family"] == family
    assert (body["label"], body["steps"]) == (label, steps)
    served = np.asarray(body["array"], dtype=np.float32)
    labels = None if label is None else torch.full((3,), label)
    local = model.sample(3, torch.Generator().manual_seed(5), labels=labels, steps=steps)
    np.testing.assert_allclose(served, local[:, 0].numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_refuses_options_a_family_does_not_declare(family_server, family_models, family):
    caps = family_models[family].capabilities
    refused = []
    if not caps.conditional:
        refused.append({"label": 1})
    if not caps.sampling_steps:
        refused.append({"steps": 3})
    for extra in refused:
        payload = {"n": 2, "seed": 0, "model": family} | extra
        response = family_server.client.post("/generate", json=payload)
        assert response.status_code == 400, (extra, response.text)
        assert next(iter(extra)) in response.text


@pytest.mark.parametrize("family", FAMILIES)
def test_score_serves_the_bundles_scores(family_server, family_models, family, real_digits):
    digits = real_digits[0][HELD_OUT]
    response = family_server.client.post(
        "/score", json={"images": digits_as_lists(digits), "model": family}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["family"] == family
    served = [r["raw_score"] for r in body["results"]]
    with torch.no_grad():
        local = family_models[family].anomaly_score(digits).double().numpy()
    np.testing.assert_allclose(served, local, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_reconstruct_takes_denoise_strength_where_declared(
    family_server, family_models, family, real_digits
):
    model = family_models[family]
    digits = real_digits[0][HELD_OUT][:3]
    payload = {"images": digits_as_lists(digits), "model": family, "denoise_strength": 0.3}
    response = family_server.client.post("/reconstruct", json=payload | {"seed": 7})
    if not model.capabilities.denoising:
        assert response.status_code == 400, response.text
        assert "denoise_strength" in response.text
        return
    assert response.status_code == 200, response.text
    served = np.asarray([r["reconstruction"] for r in response.json()["results"]])
    local = model.denoise(digits, 0.3, torch.Generator().manual_seed(7))
    np.testing.assert_allclose(served, local[:, 0].numpy(), rtol=0, atol=1e-6)
    for strength in (1.01, -0.5):
        refused = family_server.client.post(
            "/reconstruct", json=payload | {"denoise_strength": strength}
        )
        assert refused.status_code == 400 and "denoise_strength" in refused.text, refused.text
