"""Textbook reference configs of the diffusion family, for the baselines leaderboard rows.

`DDPM_BASELINE` is a plain DDPM (Ho et al. 2020) on our UNet, sampled by a 50-step DDIM
(Song et al. 2021), so the leaderboard can show what our recipe adds over the textbook one:
eps-prediction, the linear beta schedule (1e-4 .. 0.02 over 1,000 levels), plain unweighted
MSE (no min-SNR weighting), unconditional (no labels, hence no classifier-free guidance), and
DDIM with 50 deterministic steps (eta = 0) on evenly spaced levels. The network is the same
UNet as ours (the comparison isolates the process and sampler, not the architecture). Kept
from the paper: an EMA of the weights (Ho et al. use one; the decay is scaled to a CPU-minutes
run, 0.999 instead of 0.9999, with the project's warm-up), Adam-style optimisation with
gradient clipping at 1 and a short learning-rate warm-up. The learning rate is the paper's
2e-4 times 5 (1e-3): at a few thousand steps 2e-4 leaves the model visibly undertrained, which
would make the row a straw man rather than a baseline.

The harness builds it like any config (`models.io.build_model("diffusion", DDPM_BASELINE)`);
it trains through the same contract (`training_step`) and samples with `sample()`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

DDPM_BASELINE: MappingProxyType[str, Any] = MappingProxyType(
    {
        "objective": "eps",
        "schedule": "linear",
        "timesteps": 1000,
        "min_snr_gamma": 0.0,  # plain MSE on eps
        "conditional": False,
        "p_uncond": 0.0,
        "guidance_scale": 1.0,  # ignored by an unconditional model
        "sampler": "ddim",
        "timestep_spacing": "trailing",
        "sample_steps": 50,
        "ddim_eta": 0.0,
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "weight_decay": 0.0,
        "warmup_steps": 100,
        "grad_clip": 1.0,
        "ema_decay": 0.999,
    }
)

BASELINES: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {"ddpm": DDPM_BASELINE}
)
