"""The generic trainer: determinism, checkpoints, early stopping, devices, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import pipelines.training.loop
from pipelines.data.dataset import build_subset
from pipelines.training.loop import CHECKPOINT_FILE, TrainConfig, train
from tests.models.contract import FAMILIES, TINY
from tests.profile import TINY_MLP_AE

TINY_AE = TINY_MLP_AE


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


def test_rerun_of_a_finished_run_keeps_its_weights_and_throughput(real_digits, tmp_path):
    """`dvc repro` after a code-only change resumes the final checkpoint: same weights, and the
    recorded throughput of the run that did the work (not 0 images/s)."""
    tr, va = _tiny_data(real_digits)
    cfg = TrainConfig(steps=8, batch_size=32, val_every=4, checkpoint_every=4, num_threads=1,
                      progress=False)  # fmt: skip
    first = train("autoencoder", TINY_AE, cfg, tr, va, tmp_path)
    again = train("autoencoder", TINY_AE, cfg, tr, va, tmp_path)
    assert again.resumed_from == 8 and again.steps_done == 8
    assert again.images_per_s > 0
    assert again.images_per_s == pytest.approx(8 * 32 / again.wall_time_s)
    for key, value in _state(first.model).items():
        assert torch.equal(value, again.model.state_dict()[key]), key


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
    with pytest.raises(ValueError, match=r"unknown config key.*stepz"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match=r"train\.device"):
        TrainConfig(device="gpu")
    assert TrainConfig.from_dict({"device": "cuda:1"}).device == "cuda:1"  # checked at train time


def test_device_setting_places_the_model(real_digits, tmp_path):
    tr, va = _tiny_data(real_digits, n=64)
    cfg = TrainConfig(steps=2, batch_size=16, val_size=16, num_threads=1, progress=False)
    assert cfg.device == "auto"
    result = train("vae", TINY["vae"], TrainConfig(**{**cfg.__dict__, "device": "cpu"}), tr, va,
                   tmp_path / "cpu")  # fmt: skip
    assert result.model.device == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            train("vae", TINY["vae"], TrainConfig(**{**cfg.__dict__, "device": "cuda"}), tr, va,
                  tmp_path / "cuda")  # fmt: skip


class _Crash(Exception):
    """Stands in for the process dying right after a checkpoint was written."""


def _crash_after_checkpoint(monkeypatch, at_step: int) -> None:
    write = pipelines.training.loop._write_checkpoint

    def write_then_crash(payload: dict, path: Path) -> None:
        write(payload, path)
        if payload["step"] == at_step:
            raise _Crash

    monkeypatch.setattr(pipelines.training.loop, "_write_checkpoint", write_then_crash)


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_after_a_crash_is_bit_identical_for_every_family(
    family, real_digits, tmp_path, monkeypatch
):
    """Weights, optimizers, EMA, generator and RNG state all come back from the checkpoint
    (the GAN crosses into its encoder phase after the crash)."""
    tr, va = _tiny_data(real_digits, n=64)
    model_cfg = TINY[family] | ({"encoder_start_step": 5} if family == "gan" else {})
    cfg = TrainConfig(steps=8, batch_size=16, val_every=4, val_size=16, checkpoint_every=2,
                      log_every=2, num_threads=1, progress=False)  # fmt: skip
    whole = train(family, model_cfg, cfg, tr, va, tmp_path / "whole")
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, at_step=4)
        with pytest.raises(_Crash):
            train(family, model_cfg, cfg, tr, va, tmp_path / "crashed")
    resumed = train(family, model_cfg, cfg, tr, va, tmp_path / "crashed")
    assert resumed.resumed_from == 4 and resumed.steps_done == 8
    for key, value in _state(whole.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.history[-1] == whole.history[-1]


def _project(tmp_path: Path, data: Path, name: str) -> Path:
    root = tmp_path / name
    root.mkdir()
    params = yaml.safe_load((Path(__file__).resolve().parents[3] / "params.yaml").read_text())
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


# The child trains through the real CLI and SIGKILLs itself right after writing the checkpoint
# of step KILL_AT_STEP: the kill cannot miss, however fast or slow the machine is.
KILL_AT_STEP = 10
_KILLED_CLI = """
import os, signal, sys
import pipelines.training.loop
write = pipelines.training.loop._write_checkpoint

def write_then_die(payload, path):
    write(payload, path)
    if payload["step"] == int(os.environ["GENOPS_TEST_KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)

pipelines.training.loop._write_checkpoint = write_then_die
from pipelines.cli import main
main()
"""


def test_sigkill_midway_then_resume_gives_same_weights(tmp_path):
    data = tmp_path / "data"
    build_subset(data)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    ref = _project(tmp_path, data, "ref")
    subprocess.run(_train_cmd(ref, data), cwd=ref, env=env, check=True, capture_output=True)

    run = _project(tmp_path, data, "killed")
    ckpt = run / ".genops" / "checkpoints" / "autoencoder" / CHECKPOINT_FILE
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_CLI, *_train_cmd(run, data)[3:]],
        cwd=run,
        env={**env, "GENOPS_TEST_KILL_AT_STEP": str(KILL_AT_STEP)},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert int(torch.load(ckpt, weights_only=True)["step"]) == KILL_AT_STEP
    assert not (run / "model" / "model.safetensors").exists()
    out = subprocess.run(
        _train_cmd(run, data), cwd=run, env=env, check=True, capture_output=True, text=True
    )
    assert f'"resumed_from": {KILL_AT_STEP}' in out.stdout
    ref_bytes = (ref / "model" / "model.safetensors").read_bytes()
    assert (run / "model" / "model.safetensors").read_bytes() == ref_bytes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("family", FAMILIES)
def test_training_on_cuda_checkpoints_and_resumes(family, real_digits, tmp_path, monkeypatch):
    tr, va = _tiny_data(real_digits, n=64)
    model_cfg = TINY[family] | ({"encoder_start_step": 3} if family == "gan" else {})
    cfg = TrainConfig(steps=6, batch_size=16, val_every=2, val_size=16, checkpoint_every=2,
                      log_every=2, num_threads=1, progress=False, device="cuda")  # fmt: skip
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, at_step=4)
        with pytest.raises(_Crash):
            train(family, model_cfg, cfg, tr, va, tmp_path)
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    assert ckpt["device_type"] == "cuda" and ckpt["step"] == 4
    resumed = train(family, model_cfg, cfg, tr, va, tmp_path)
    assert resumed.resumed_from == 4 and resumed.model.device.type == "cuda"
    assert all(torch.isfinite(v).all() for v in resumed.model.state_dict().values()
               if v.is_floating_point())  # fmt: skip
    on_cpu = TrainConfig(**{**cfg.__dict__, "device": "cpu"})
    assert train(family, model_cfg, on_cpu, tr, va, tmp_path).resumed_from is None
