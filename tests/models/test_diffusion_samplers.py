"""The diffusion samplers (DDIM, DPM-Solver++(2M), UniPC), their config keys and the baseline.

Tiny CPU configs only; the quality sweep on the trained model is benchmarks/bench_diffusion.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest
import torch

from models.diffusion import Diffusion, DiffusionConfig
from models.diffusion.baselines import BASELINES, DDPM_BASELINE
from models.diffusion.config import LEGACY_VALUES, SAMPLERS, SPACINGS
from models.diffusion.process import GaussianDiffusion
from models.diffusion.schedule import ddim_timesteps, sampling_timesteps
from models.io import build_model, load_model, save_model
from models.spec import CONFIG_FILE
from tests.models.contract import TINY, make

SETTINGS = [(s, sp) for s in SAMPLERS for sp in SPACINGS]


def tiny(**overrides) -> Diffusion:
    model = make("diffusion", **overrides)
    assert isinstance(model, Diffusion)
    return model.eval()


def rows_per_image(model: Diffusion, n: int, **kwargs) -> float:
    """Network evaluations per image of one `guided_sample`/`sample` call (rows through the
    EMA UNet, whatever the chunking), and the images."""
    rows = []
    hook = model.ema.shadow.register_forward_hook(lambda mod, args, out: rows.append(len(out)))
    try:
        guidance = kwargs.pop("guidance_scale", None)
        gen = torch.Generator().manual_seed(0)
        if guidance is None:
            model.sample(n, gen, **kwargs)
        else:
            model.guided_sample(n, gen, guidance_scale=guidance, **kwargs)
    finally:
        hook.remove()
    return sum(rows) / n


# ---- network evaluations -------------------------------------------------------------------
@pytest.mark.parametrize(("sampler", "spacing"), SETTINGS)
@pytest.mark.parametrize("steps", [1, 2, 6])
def test_steps_are_network_evaluations_doubled_by_guidance(sampler, spacing, steps) -> None:
    model = tiny(sampler=sampler, timestep_spacing=spacing)
    labels = torch.arange(3)
    # guidance 0 (null label) and 1 (conditional only): one evaluation per step
    assert rows_per_image(model, 3, labels=labels, steps=steps, guidance_scale=0.0) == steps
    assert rows_per_image(model, 3, labels=labels, steps=steps, guidance_scale=1.0) == steps
    # classifier-free guidance runs the conditional and the null-label prediction: x2
    assert rows_per_image(model, 3, labels=labels, steps=steps, guidance_scale=2.0) == 2 * steps
    uncond = tiny(sampler=sampler, timestep_spacing=spacing, conditional=False)
    assert rows_per_image(uncond, 3, steps=steps) == steps


def test_default_step_count_comes_from_the_config() -> None:
    model = tiny(sample_steps=5, guidance_scale=1.0)
    assert rows_per_image(model, 2) == 5


# ---- determinism, shape, range -------------------------------------------------------------
@pytest.mark.parametrize(("sampler", "spacing"), SETTINGS)
def test_same_seed_same_samples_in_unit_range(sampler: str, spacing: str) -> None:
    model = tiny(sampler=sampler, timestep_spacing=spacing, sample_steps=5)
    a = model.sample(6, torch.Generator().manual_seed(7))
    b = model.sample(6, torch.Generator().manual_seed(7))
    c = model.sample(6, torch.Generator().manual_seed(8))
    assert a.shape == (6, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and torch.isfinite(a).all()


def test_samplers_share_the_first_step_and_then_differ() -> None:
    """One step is the x0 prediction at the start level for every sampler; more steps differ."""
    gens = {s: torch.Generator().manual_seed(1) for s in SAMPLERS}
    outs = {s: tiny(sampler=s, timestep_spacing="trailing").sample(4, gens[s], steps=1)
            for s in SAMPLERS}  # fmt: skip
    assert torch.equal(outs["ddim"], outs["dpmpp2m"]) and torch.equal(outs["ddim"], outs["unipc"])
    model = tiny(sampler="ddim", timestep_spacing="trailing")
    ddim = model.sample(4, torch.Generator().manual_seed(1), steps=6)
    dpm = tiny(sampler="dpmpp2m", timestep_spacing="trailing")
    assert not torch.equal(ddim, dpm.sample(4, torch.Generator().manual_seed(1), steps=6))


# ---- solver accuracy on a process with a known answer --------------------------------------
def _gaussian_problem(objective: str, mu: float = 0.1, s: float = 0.15):
    """Data N(mu, s^2) per pixel: the exact denoiser and the exact probability-flow endpoint.

    Along the deterministic (DDIM / probability-flow) ODE, (x_t - a_t mu) / sqrt(a_t^2 s^2 +
    sigma_t^2) is constant, so x_T maps to x0 = mu + s (x_T - a_T mu) / sqrt(a_T^2 s^2 + s_T^2).
    """
    proc = GaussianDiffusion(1000, "cosine", objective, 0.0).double()
    x_t = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0)).double()
    a_T, s_T = proc.sqrt_ab[999].item(), proc.sqrt_1m_ab[999].item()
    exact = mu + s * (x_t - a_T * mu) / math.sqrt(a_T**2 * s**2 + s_T**2)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, sig = proc.sqrt_ab[t].reshape(-1, 1, 1, 1), proc.sqrt_1m_ab[t].reshape(-1, 1, 1, 1)
        x0 = mu + a * s * s / (a * a * s * s + sig * sig) * (x - a * mu)
        return (x - a * x0) / sig if objective == "eps" else (a * x - x0) / sig

    return proc, denoise, x_t, exact


@pytest.mark.parametrize("objective", ["v", "eps"])
def test_higher_order_solvers_are_closer_to_the_exact_flow(objective: str) -> None:
    proc, denoise, x_t, exact = _gaussian_problem(objective)

    def err(sampler: str, steps: int) -> float:
        out = proc.sample(sampler, denoise, x_t, 999, steps, spacing="quadratic")
        return float((out - exact).abs().mean())

    for steps in (6, 8, 15):
        assert err("dpmpp2m", steps) < 0.6 * err("ddim", steps)
        assert err("unipc", steps) < 0.6 * err("ddim", steps)
    # the error shrinks with the step count (convergence), fastest for the 2nd-order solvers
    assert err("dpmpp2m", 50) < err("dpmpp2m", 6) / 5 and err("ddim", 50) < err("ddim", 6)


def test_sampler_names_are_checked_by_the_process() -> None:
    proc, denoise, x_t, _ = _gaussian_problem("v")
    with pytest.raises(ValueError, match="sampler"):
        proc.sample("euler", denoise, x_t, 999, 4)
    with pytest.raises(ValueError, match="spacing"):
        proc.sample("ddim", denoise, x_t, 999, 4, spacing="karras")


# ---- timestep spacing ----------------------------------------------------------------------
@pytest.mark.parametrize("spacing", SPACINGS)
def test_spacings_give_distinct_decreasing_levels_from_start(spacing: str) -> None:
    for start in range(0, 120, 7):
        for steps in range(1, start + 3):
            ts = sampling_timesteps(start, steps, spacing)
            assert ts[0] == start and len(ts) == min(steps, start + 1) and ts[-1] >= 0
            assert all(a > b for a, b in itertools.pairwise(ts))
    assert sampling_timesteps(999, 8, "trailing") == ddim_timesteps(999, 8)
    quad = sampling_timesteps(999, 8, "quadratic")
    assert quad[-1] < ddim_timesteps(999, 8)[-1] / 4  # denser near the data end


# ---- config --------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [("sampler", "euler"), ("timestep_spacing", "x")])
def test_invalid_sampler_or_spacing_raises_naming_the_field(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**(TINY["diffusion"] | {field: value}))
    with pytest.raises(ValueError, match=field):
        DiffusionConfig.from_dict({field: value})


def test_a_config_saved_before_the_sampler_keys_loads_with_ddim(tmp_path) -> None:
    """A config.json written by the DDIM-only code (no sampler keys) keeps sampling with DDIM on
    trailing levels, bit for bit; a params override without them gets today's defaults."""
    new = DiffusionConfig()
    model = tiny(sampler="unipc", timestep_spacing="quadratic")  # saved with other values
    save_model(model, tmp_path)
    payload = json.loads((tmp_path / CONFIG_FILE).read_text())
    for key in LEGACY_VALUES:
        del payload["config"][key]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    old = load_model(tmp_path)
    assert isinstance(old, Diffusion)
    assert (old.config.sampler, old.config.timestep_spacing) == ("ddim", "trailing")
    explicit = tiny(sampler="ddim", timestep_spacing="trailing")
    explicit.load_state_dict(model.state_dict())
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(old.sample(4, gen_a), explicit.eval().sample(4, gen_b))
    # partial dicts (params.yaml overrides) are not "saved before": today's defaults apply
    for partial in ({}, {"sample_steps": 8}, TINY["diffusion"]):
        cfg = DiffusionConfig.from_dict(partial)
        assert (cfg.sampler, cfg.timestep_spacing) == (new.sampler, new.timestep_spacing)
    # a saved config that names the keys keeps them
    full = dataclasses.asdict(DiffusionConfig(sampler="dpmpp2m"))
    assert DiffusionConfig.from_dict(full).sampler == "dpmpp2m"


# ---- the textbook baseline ------------------------------------------------------------------
def test_ddpm_baseline_is_a_plain_unconditional_eps_ddpm_with_50_ddim_steps() -> None:
    assert BASELINES["ddpm"] is DDPM_BASELINE
    model = build_model("diffusion", dict(DDPM_BASELINE))
    assert isinstance(model, Diffusion)
    c = model.config
    assert (c.objective, c.schedule, c.min_snr_gamma, c.conditional) == ("eps", "linear", 0, False)
    assert (c.sampler, c.timestep_spacing, c.sample_steps, c.ddim_eta) == (
        "ddim",
        "trailing",
        50,
        0,
    )
    assert not model.conditional and model.process.loss_weight(torch.tensor([1, 500])).eq(1).all()
    model.eval()
    assert rows_per_image(model, 2) == 50
    out = model.sample(2, torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
    with pytest.raises(TypeError):
        DDPM_BASELINE["sample_steps"] = 10  # type: ignore[index]  # read-only
