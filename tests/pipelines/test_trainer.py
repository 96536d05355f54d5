"""The generic trainer: determinism, checkpoints, early stopping, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.data import build_default
from pipelines.train import CHECKPOINT_FILE, TrainConfig, train

TINY_AE = {"arch": "mlp", "hidden_dims": [64], "latent_dim": 8}


def _tiny_data(real_digits, n=256):
    images, labels = real_digits
    idx = torch.arange(0, 5000, 5000 // n)[:n]
    return (images[idx], labels[idx]), (images[idx[:64]], labels[idx[:64]])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_identical_weights(real_digits, tmp_path):
    tr, va = _tiny_data(real_digits)
    cfg = TrainConfig(
        steps=12, batch_size=32, val_every=6, checkpoint_every=6, num_threads=1, progress=False
    )
    a = train("autoencoder", TINY_AE, cfg, tr, va, tmp_path / "a")
    b = train("autoencoder", TINY_AE, cfg, tr, va, tmp_path / "b")
    for (k, va_), vb in zip(_state(a.model).items(), _state(b.model).values(), strict=True):
        assert torch.equal(va_, vb), k
    assert (tmp_path / "a" / CHECKPOINT_FILE).is_file()
    losses = [row["loss"] for row in a.history if "loss" in row]
    assert losses, "history records training losses"


def test_checkpoint_resume_matches_uninterrupted(real_digits, tmp_path):
    tr, va = _tiny_data(real_digits)
    full = TrainConfig(
        steps=16, batch_size=32, val_every=4, checkpoint_every=4, num_threads=1, progress=False
    )
    whole = train("autoencoder", TINY_AE, full, tr, va, tmp_path / "whole")
    # "interrupt" with a time budget of zero-ish: stop after the first checkpointed step
    part = TrainConfig(**{**full.__dict__, "time_budget_s": 1e-9})
    first = train("autoencoder", TINY_AE, part, tr, va, tmp_path / "resume")
    assert first.out_of_time and first.steps_done < 16
    rest = train("autoencoder", TINY_AE, full, tr, va, tmp_path / "resume")
    assert rest.resumed_from == first.steps_done and rest.steps_done == 16
    for key, value in _state(whole.model).items():
        assert torch.equal(value, rest.model.state_dict()[key]), key


def test_checkpoint_of_another_job_is_ignored(real_digits, tmp_path):
    tr, va = _tiny_data(real_digits)
    cfg = TrainConfig(
        steps=4, batch_size=32, val_every=2, checkpoint_every=2, num_threads=1, progress=False
    )
    train("autoencoder", TINY_AE, cfg, tr, va, tmp_path)
    other = train("autoencoder", {**TINY_AE, "latent_dim": 4}, cfg, tr, va, tmp_path)
    assert other.resumed_from is None


def test_early_stopping_stops_and_keeps_best(real_digits, tmp_path):
    tr, va = _tiny_data(real_digits)
    # a huge learning rate makes validation loss stop improving quickly
    cfg = TrainConfig(
        steps=200,
        batch_size=32,
        val_every=2,
        checkpoint_every=50,
        patience=2,
        min_delta=10.0,
        num_threads=1,
        progress=False,
    )
    result = train("autoencoder", TINY_AE, cfg, tr, va, tmp_path)
    assert result.stopped_early and result.steps_done < 200


def test_invalid_train_config():
    with pytest.raises(ValueError, match=r"train\.steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown train key"):
        TrainConfig.from_dict({"stepz": 3})


def _project(tmp_path: Path, data: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["train"] = {
        **params.get("train", {}),
        "num_threads": 1,
        "seed": 3,
        "checkpoint_every": 5,
        "val_every": 10,
        "log_every": 5,
    }
    params["autoencoder"] = {"model": TINY_AE, "train": {"steps": 60, "batch_size": 64}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _train_cmd(root: Path, data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.cli",
        "--params",
        str(root / "params.yaml"),
        "train",
        "--family",
        "autoencoder",
        "--data-dir",
        str(data),
        "--out",
        str(root / "model"),
        "--no-mlflow",
    ]


def _ckpt_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except Exception:
        return -1


def test_sigkill_midway_then_resume_gives_same_weights(tmp_path):
    data = tmp_path / "data"
    build_default(data)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ref = _project(tmp_path, data, "ref")
    subprocess.run(_train_cmd(ref, data), cwd=ref, env=env, check=True, capture_output=True)

    run = _project(tmp_path, data, "killed")
    ckpt = run / ".genops" / "checkpoints" / "autoencoder" / CHECKPOINT_FILE
    proc = subprocess.Popen(
        _train_cmd(run, data),
        cwd=run,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and _ckpt_step(ckpt) < 10 and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _ckpt_step(ckpt)
    assert 10 <= killed_at < 60
    assert not (run / "model" / "model.safetensors").exists()
    out = subprocess.run(
        _train_cmd(run, data), cwd=run, env=env, check=True, capture_output=True, text=True
    )
    assert f'"resumed_from": {killed_at}' in out.stdout
    ref_bytes = (ref / "model" / "model.safetensors").read_bytes()
    assert (run / "model" / "model.safetensors").read_bytes() == ref_bytes
