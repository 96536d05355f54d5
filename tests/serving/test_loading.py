"""Bundles, sources, catalogs, batching and pixel handling, in process (no server)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from serving import imaging
from serving.batching import ScoreBatcher
from serving.bundle import BundleMeta, load_bundle, model_executor
from serving.catalog import load_catalog
from serving.sources import BentoSource, DirSource, MlflowSource, source_from_env
from tests.serving.conftest import REPO


def _break_sha(bundle_dir) -> None:
    meta_path = bundle_dir / "meta.json"
    meta_path.write_text(
        json.dumps(json.loads(meta_path.read_text()) | {"weights_sha256": "a" * 64})
    )


@pytest.fixture()
def source_copy(tmp_path, source_dir):
    dst = tmp_path / "models"
    shutil.copytree(source_dir, dst)
    return dst


def test_bundle_round_trip_and_shared_networks(source_dir):
    catalog = load_catalog(DirSource(source_dir))
    assert catalog.ready and not catalog.errors
    assert catalog.roles["generation"].model is catalog.roles["anomaly"].model  # same weights
    assert catalog.roles["families/autoencoder"].model is not catalog.roles["anomaly"].model
    assert catalog.resolve("anomaly", "autoencoder").meta.name == "genops-autoencoder"
    with pytest.raises(LookupError, match=r"known: \['champion', 'autoencoder'\]"):
        catalog.resolve("anomaly", "vae")


def test_checksum_mismatch_refuses_that_model(source_copy, caplog):
    _break_sha(source_copy / "anomaly")
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_bundle(source_copy / "anomaly")
    with caplog.at_level(logging.ERROR, logger="genops.serving"):
        catalog = load_catalog(DirSource(source_copy))
    assert not catalog.ready and "anomaly" not in catalog.roles and "generation" in catalog.roles
    assert "checksum mismatch" in catalog.errors["anomaly"]
    assert "REFUSING to serve anomaly" in caplog.text


def test_a_broken_family_is_skipped_but_the_service_stays_ready(source_copy):
    _break_sha(source_copy / "families" / "autoencoder")
    catalog = load_catalog(DirSource(source_copy))
    assert catalog.ready and catalog.families == {}
    assert "checksum mismatch" in catalog.errors["families/autoencoder"]


def test_tampered_weights_are_caught_too(source_copy):
    weights = source_copy / "generation" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    catalog = load_catalog(DirSource(source_copy))
    assert "generation" not in catalog.roles and not catalog.ready


def test_meta_validation():
    good = {"name": "m", "version": "1", "family": "vae", "weights_sha256": "b" * 64}
    assert BundleMeta.from_dict(good).tasks == ()
    for bad in (
        {"weights_sha256": "xyz"},
        {"tasks": ["painting"]},
        {"name": ""},
        {"metrics": {"a": "high"}},
        {"colour": "red"},
    ):
        with pytest.raises(ValueError):
            BundleMeta.from_dict(good | bad)


def test_source_spec_parsing(tmp_path):
    assert isinstance(source_from_env("dir:" + str(tmp_path)), DirSource)
    assert source_from_env("bento").tag == "genops-models:latest"
    assert source_from_env("bento:genops-models:v1").tag == "genops-models:v1"
    assert isinstance(source_from_env("mlflow"), MlflowSource)
    assert isinstance(source_from_env(""), BentoSource)
    with pytest.raises(ValueError, match="GENOPS_MODEL_SOURCE"):
        source_from_env("s3://bucket")


def test_dir_fingerprint_follows_the_files(source_copy):
    source = DirSource(source_copy)
    first = source.fingerprint()
    assert source.fingerprint() == first
    meta = source_copy / "anomaly" / "meta.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"version": "99"}) + " ")
    assert source.fingerprint() != first
    assert DirSource(source_copy / "nowhere").fingerprint() == "missing"


def test_batcher_merges_concurrent_requests_without_changing_scores(source_dir, real_digits):
    served = load_bundle(source_dir / "anomaly")
    images = real_digits[0][:24].numpy()
    expected = served.score(images)

    async def run(batcher: ScoreBatcher) -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.score(served, images[i : i + 1]) for i in range(24)))

    executor = model_executor(1, workers=2)
    batched = ScoreBatcher(executor, max_images=8)
    merged = np.concatenate(asyncio.run(run(batched)))
    np.testing.assert_allclose(merged, expected, rtol=0, atol=1e-6)
    assert batched.images == 24 and 3 <= batched.batches < 24  # batches of <= 8 images
    unbatched = ScoreBatcher(executor, enabled=False)
    np.testing.assert_allclose(np.concatenate(asyncio.run(run(unbatched))), expected, atol=1e-6)
    assert unbatched.batches == 0
    executor.shutdown()


def test_generation_is_deterministic_and_independent_of_global_rng(source_dir):
    served = load_bundle(source_dir / "generation")
    torch.manual_seed(1)
    first = served.sample(4, seed=5, label=2)
    torch.manual_seed(2)
    np.testing.assert_array_equal(first, served.sample(4, seed=5, label=2))
    assert not np.array_equal(first, served.sample(4, seed=6, label=2))


def test_parse_arrays_scales_and_rejects():
    unit = np.linspace(0, 1, 784).tolist()
    np.testing.assert_allclose(imaging.parse_arrays([unit]).reshape(-1), unit, atol=1e-7)
    as_uint8 = imaging.parse_arrays([[v * 255 for v in unit]])
    np.testing.assert_allclose(as_uint8.reshape(-1), unit, atol=1e-6)
    rows = imaging.parse_arrays([np.reshape(unit, (28, 28)).tolist()], scale="unit")
    assert rows.shape == (1, 28, 28)
    for bad, scale in (
        ([[0.5] * 783], "auto"),
        ([[float("nan")] * 784], "auto"),
        ([[2.0] * 784], "unit"),
        ([[256.0] * 784], "auto"),
        ([], "auto"),
        ([[-1.0] * 784], "uint8"),
    ):
        with pytest.raises(imaging.BadImage):
            imaging.parse_arrays(bad, scale)


def test_decode_upload_and_grid():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (84, 56), (255, 255, 255)).save(buffer, format="JPEG")
    decoded = imaging.decode_upload(buffer.getvalue())
    assert decoded.shape == (28, 28) and decoded.min() > 0.95
    with pytest.raises(imaging.BadImage, match="not a readable"):
        imaging.decode_upload(b"\x89PNG but not really")
    assert imaging.grid(np.zeros((10, 28, 28))).shape == (3 * 30 + 2, 4 * 30 + 2)


def test_polling_reload_picks_up_a_new_version(source_copy, monkeypatch):
    from serving.service import GenOps

    monkeypatch.setenv("GENOPS_MODEL_SOURCE", f"dir:{source_copy}")
    monkeypatch.setenv("GENOPS_RELOAD_INTERVAL_S", "0.1")
    service = GenOps()
    try:
        assert (
            service.__is_ready__() and service.catalog.families["autoencoder"].meta.version == "7"
        )
        meta = source_copy / "families" / "autoencoder" / "meta.json"
        meta.write_text(json.dumps(json.loads(meta.read_text()) | {"version": "9"}))
        deadline = time.monotonic() + 20
        while service.catalog.families["autoencoder"].meta.version != "9":
            assert time.monotonic() < deadline, "the poller never reloaded"
            time.sleep(0.05)
        assert service.last_reload.swapped and service.__is_ready__()
    finally:
        service._shutdown()


def test_serving_imports_neither_pipelines_nor_mlflow():
    code = (
        "import sys, serving.service, serving.build; "
        "bad = [m for m in ('pipelines', 'mlflow', 'prefect', 'dvc', 'great_expectations') "
        "if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_family_and_the_ensemble_that_carries_it_share_one_network(tmp_path, real_digits):
    """The anomaly champion's ensemble carries the GAN (and its feature bank); families/gan
    serves the same network: loaded once, called under one lock, scoring as if loaded alone.
    A network that only looks alike (another seed) is not shared."""
    from models.ensemble import fit_ensemble
    from serving.bundle import network_digests
    from tests.models.contract import make, make_scoring
    from tests.serving.conftest import CALIB, write_role

    images = real_digits[0]
    members = {f: make_scoring(f, images[:300]) for f in ("autoencoder", "gan")}
    ensemble = fit_ensemble(members, images[CALIB][:96], 0.05, 0.01, 0.01)
    calib = images[CALIB][96:160]
    write_role(tmp_path, "anomaly", ensemble, calib, "genops-anomaly", "4", ["anomaly"])
    write_role(tmp_path, "families/gan", members["gan"], calib, "genops-gan", "2", [])
    other = make("autoencoder", seed=1).eval()  # same family and config, other weights
    write_role(tmp_path, "families/autoencoder", other, calib, "genops-autoencoder", "3", [])
    write_role(tmp_path, "generation", other, calib, "genops-generation", "1", ["generation"])

    catalog = load_catalog(DirSource(tmp_path))
    assert catalog.ready and not catalog.errors
    anomaly, gan = catalog.roles["anomaly"], catalog.roles["families/gan"]
    assert gan.model is anomaly.model.members["gan"] and gan.lock is anomaly.lock
    digests = network_digests(tmp_path / "anomaly")
    assert set(digests) == {"autoencoder", "gan"}
    assert network_digests(tmp_path / "families/gan") == {None: digests["gan"]}
    assert network_digests(tmp_path / "families/autoencoder")[None] != digests["autoencoder"]
    auto = catalog.roles["families/autoencoder"]
    assert auto.model is not anomaly.model.members["autoencoder"] and auto.lock is not anomaly.lock
    assert auto.model is catalog.roles["generation"].model  # the same bundle, as before

    # scores are what each bundle gives when loaded on its own
    probe = torch.cat([images[4500:4506], torch.rand(2, 1, 28, 28)])
    for role in ("anomaly", "families/gan"):
        alone = load_bundle(tmp_path / role)
        with torch.no_grad():
            want = alone.model.anomaly_score(probe).double().numpy()
            got = catalog.roles[role].model.anomaly_score(probe).double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)

    # a GAN bundle written before the coarse index was saved with the weights is the same
    # network as the ensemble's member written after: still shared
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "families/gan" / "model.safetensors"
    state = {k: v for k, v in load_file(weights).items() if k not in ("score_proj", "score_coarse")}
    save_file(state, weights, metadata={"family": "gan"})
    assert network_digests(tmp_path / "families/gan") == {None: digests["gan"]}
