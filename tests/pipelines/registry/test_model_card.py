"""Model cards: rendered from the evaluation folder and the registry tags, logged to the
version's run, tagged on the version, and carried into the served bundle by the registry source."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from models.calibration import Calibration
from models.io import build_model, save_model
from models.registry_copy import meta_from_version
from models.spec import MODEL_CARD_DIR, MODEL_CARD_TAG, REGISTERED_ARTIFACT_PATH, Tag, metric_tag
from pipelines import tracking
from pipelines.registry import client as registry
from pipelines.registry.cards import card_inputs, log_model_cards, render_html, render_markdown
from serving.sources import MlflowSource


def _png(path, value: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30), value, dtype=np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


@pytest.fixture()
def eval_dir(tmp_path):
    """What `genops evaluate` leaves for one family: metrics, calibration, plots, a bundle."""
    out = tmp_path / "eval" / "autoencoder"
    (out / "plots").mkdir(parents=True)
    for i, name in enumerate(("samples.png", "reconstructions.png", "roc.png")):
        _png(out / "plots" / name, 40 * i)
    metrics = {
        "family": "autoencoder",
        "fd_judge": 12.5,
        "fd_judge_real_reference": 4.0,
        "anomaly_auroc_mean": 0.91,
        "anomaly_auroc/blur": 0.8,
        "anomaly_tpr/blur": 0.7,
        "heldout_auroc/letters": 0.93,  # the held-out benchmark's kinds are listed too
        "heldout_tpr/letters": 0.6,
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    Calibration.fit(np.linspace(0.0, 1.0, 200), target_fpr=0.05).save(out)
    bundle = out / "bundle"
    sha = save_model(build_model("autoencoder", {"arch": "mlp", "hidden_dims": [16]}), bundle)
    Calibration.load(out).save(bundle)
    return out, sha


TAGS = {
    Tag.FAMILY: "autoencoder",
    Tag.DATA_VERSION: "md5:abc",
    Tag.GIT_COMMIT: "deadbeef",
    metric_tag("anomaly_auroc_mean"): "0.91",
    "promotion.decision": "promoted",
}


def test_card_shows_plots_metrics_baselines_lineage_and_calibration(eval_dir):
    out, sha = eval_dir
    card = card_inputs("genops-autoencoder", "3", TAGS | {Tag.WEIGHTS_SHA256: sha}, out, "run1")
    markdown = render_markdown(card)
    assert markdown.startswith("# Model card: genops-autoencoder v3 (autoencoder)")
    for text in ("![", "samples.png", "roc.png", "md5:abc", "deadbeef", sha, "promoted"):
        assert text in markdown, text
    assert "| fd_judge | 12.5 | 4 |" in markdown  # the metric next to its real-data baseline
    assert "| tuned: blur | 0.8 | 0.7 |" in markdown
    assert "| held-out: letters | 0.93 | 0.6 |" in markdown
    assert "threshold" in markdown and "validation_normals | 200" in markdown
    assert "| arch | mlp |" in markdown and "| hidden_dims | 16 |" in markdown  # what is served
    page = render_html(card)
    assert page.count("data:image/png;base64,") == 3  # self-contained: plots inlined
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_a_registered_version_gets_its_card_logged_tagged_and_served(
    eval_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("GENOPS_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, sha = eval_dir
    run_id = tracking.log_run(
        "evaluate-autoencoder",
        params={"family": "autoencoder"},
        tags={"stage": "evaluate"},
        artifacts={REGISTERED_ARTIFACT_PATH: out / "bundle"},
    )
    tags = TAGS | {Tag.WEIGHTS_SHA256: sha}
    version = registry.register_version("genops-autoencoder", run_id, "model", tags)
    [path] = log_model_cards([("genops-autoencoder", version, "autoencoder")], tmp_path / "eval")

    from models.spec import mlflow_client

    client = mlflow_client(tracking.tracking_uri())
    mv = client.get_model_version("genops-autoencoder", version)
    assert mv.tags[MODEL_CARD_TAG] == path
    logged = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run_id, path)}
    assert {"card.md", "card.html", "samples.png", "roc.png"} <= logged

    role = "families/autoencoder"
    source = MlflowSource(tracking.tracking_uri(), cache_dir=tmp_path / "cache")
    bundle = source._cached(mv, role, meta_from_version(mv, role))
    card = bundle / MODEL_CARD_DIR
    assert f"genops-autoencoder v{version}" in (card / "card.md").read_text()
    assert (card / "card.html").read_text().count("data:image/png") == 3


def test_an_ensembles_card_lists_its_members_and_view_not_its_calibration_data():
    from pipelines.registry.cards import config_rows

    config = {
        "members": {"autoencoder": {"arch": "conv", "channels": [32, 64]},
                    "gan": {"score": "dknn", "score_k": 10}},
        "calibrations": {"autoencoder": {"val_scores": [0.1] * 30, "threshold": 0.2},
                         "encoder_knn": {"val_scores": [0.3] * 30, "threshold": 0.4}},
        "encoder_knn": 10,
        "floor": 0.5,
        "long": list(range(20)),
    }  # fmt: skip
    rows = dict(map(tuple, config_rows(config)))
    assert rows["members.gan.score"] == "dknn" and rows["members.autoencoder.channels"] == "32, 64"
    assert rows["encoder_knn"] == "10" and rows["long"] == "20 values"
    assert rows["calibrations"] == (
        "autoencoder (30 validation normals), encoder_knn (30 validation normals)"
    )
    assert not any(key.startswith("calibrations.") for key in rows)
