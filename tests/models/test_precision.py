"""`bf16_autocast`: true, false or "auto", which turns bf16 on only where the device computes in
bf16 natively (models.tensors.native_bf16). On a CPU without AVX512-BF16 or AMX torch emulates
bf16, and a GAN training step measured 16x slower than in fp32 (docs/models.md)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models import tensors
from models.base import Batch
from models.io import build_model
from models.spec import FAMILIES
from tests.profile import TINY


def tiny(family: str, **overrides) -> dict:
    """The family's tiny profile with the precision setting left at its default."""
    return {k: v for k, v in TINY[family].items() if k != "bf16_autocast"} | overrides


@pytest.fixture
def native(monkeypatch):
    """Set what the CPU probe answers: native(True) or native(False)."""

    def set_native(value: bool) -> None:
        tensors.native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: value)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    yield set_native
    tensors.native_bf16.cache_clear()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_defaults_to_auto(family: str) -> None:
    assert build_model(family, tiny(family)).config.bf16_autocast == "auto"


@pytest.mark.parametrize("value", ["yes", "on", 1, None, "Auto"])
def test_other_settings_are_refused_with_the_field_named(value) -> None:
    with pytest.raises(ValueError, match="bf16_autocast must be true, false or 'auto'"):
        build_model("gan", tiny("gan", bf16_autocast=value))


def test_auto_follows_the_devices_native_bf16_and_explicit_settings_win(native) -> None:
    native(False)
    assert not tensors.use_bf16("auto", "cpu")
    assert tensors.use_bf16(True, "cpu") and not tensors.use_bf16(False, "cpu")
    with tensors.bf16_autocast("auto", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    native(True)
    assert tensors.use_bf16("auto", "cpu")
    assert not tensors.use_bf16(False, "cpu")
    with tensors.bf16_autocast("auto", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_a_models_training_precision_is_what_its_steps_run_in(family: str, native) -> None:
    native(False)
    assert build_model(family, tiny(family)).training_precision == "fp32"
    assert build_model(family, tiny(family, bf16_autocast=True)).training_precision == "bf16"
    native(True)
    assert build_model(family, tiny(family)).training_precision == "bf16"
    assert build_model(family, tiny(family, bf16_autocast=False)).training_precision == "fp32"


def _steps(model, n: int = 3) -> dict[str, torch.Tensor]:
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(16) % 10
    gen = torch.Generator().manual_seed(1)
    optimizers = model.configure_optimizers()
    for step in range(n):
        model.training_step(Batch(images, labels, step, gen), optimizers)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family", ["gan", "autoencoder"])
def test_auto_on_a_cpu_without_native_bf16_trains_exactly_as_fp32(family: str, native) -> None:
    native(False)
    states = []
    for setting in ("auto", False):
        torch.manual_seed(0)
        states.append(_steps(build_model(family, tiny(family, bf16_autocast=setting))))
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        torch.testing.assert_close(value, states[1][key], rtol=0, atol=0, msg=key)
    # and bf16 forced on is a different computation (the test can fail)
    torch.manual_seed(0)
    forced = _steps(build_model(family, tiny(family, bf16_autocast=True)))
    assert any(not torch.equal(forced[k], v) for k, v in states[0].items())


def test_a_config_saved_with_a_boolean_still_loads() -> None:
    model = build_model("vae", tiny("vae", bf16_autocast=True))
    again = type(model.config).from_dict(dataclasses.asdict(model.config))
    assert again.bf16_autocast is True


def test_a_checkpoint_resumes_only_where_the_arithmetic_is_the_same(native) -> None:
    """A checkpoint written under `true` (every one before "auto") resumes under "auto" on a
    CPU with native bf16, and is a different job where "auto" means fp32."""
    from pipelines.training.loop import TrainConfig, fingerprint, job_config

    cfg = TrainConfig.from_dict({"steps": 4})

    def job(setting) -> str:
        model = build_model("gan", tiny("gan", bf16_autocast=setting))
        return fingerprint("gan", job_config(model), cfg, "data-v1")

    native(True)
    assert job("auto") == job(True) != job(False)
    native(False)
    assert job("auto") == job(False) != job(True)
