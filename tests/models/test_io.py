"""models.io's streamed load: exactly load_state_dict(strict=True) of the file, one tensor at a
time, and a clear ValueError for a file that is not this model's weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from models.io import WEIGHTS_FILE, build_model, load_model, read_config, save_model
from tests.models.contract import make


def test_a_streamed_load_equals_the_whole_file_load_tensor_for_tensor(tmp_path) -> None:
    model = make("gan").eval()
    model.fit_scorer(torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    save_model(model, tmp_path)
    streamed = load_model(tmp_path)
    whole = build_model("gan", read_config(tmp_path)["config"])
    whole.load_state_dict(load_file(tmp_path / WEIGHTS_FILE), strict=True)
    assert streamed.state_dict().keys() == whole.state_dict().keys()
    for (key, a), b in zip(streamed.state_dict().items(), whole.state_dict().values(), strict=True):
        assert torch.equal(a, b) and a.stride() == b.stride() and a.dtype == b.dtype, key
    assert streamed.score_bank.shape[0] == 40  # the load hook sized the bank from the file


def test_a_file_that_is_not_this_models_weights_is_refused(tmp_path) -> None:
    save_model(make("autoencoder").eval(), tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated: a tensor's bytes run past the end
    with pytest.raises(ValueError, match=r"bad dtype or offsets|bytes for"):
        load_model(tmp_path)
    weights.write_bytes(b"\xff" * 64)  # no header
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_model(tmp_path)
    other = tmp_path / "other"
    save_model(make("autoencoder", latent_dim=3).eval(), other)  # another shape, same keys
    weights.write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_model(tmp_path)
    vae = tmp_path / "vae"
    save_model(make("vae").eval(), vae)  # other keys
    weights.write_bytes((vae / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="does not match the Autoencoder"):
        load_model(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["family"] == "autoencoder"
