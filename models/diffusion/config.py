"""The frozen, validated configuration of the diffusion family."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Self

from models.base import ModelConfig, require

SCHEDULES = ("cosine", "linear")
OBJECTIVES = ("v", "eps")
SAMPLERS = ("ddim", "dpmpp2m", "unipc")  # models.diffusion.process
SPACINGS = ("trailing", "quadratic")  # models.diffusion.schedule.sampling_timesteps
# Keys added after models had been saved without them, with the value that keeps such a saved
# model sampling exactly as it did (DDIM on trailing levels). Applied only to a config.json
# written before the key existed (every other field present), never to params.yaml overrides.
LEGACY_VALUES: dict[str, Any] = {"sampler": "ddim", "timestep_spacing": "trailing"}


@dataclass(frozen=True)
class DiffusionConfig(ModelConfig):
    """DDPM training, sampling (DDIM / DPM-Solver++ / UniPC) and the scoring rule, typed.

    Network: a small UNet (28 -> 14 -> 7 for three `channel_mults`), optional attention
    at the lowest resolution. Process: `timesteps` discrete noise levels on a `schedule`,
    trained to predict `objective` ("v" or "eps") with min-SNR-gamma loss weighting
    (`min_snr_gamma` = 0 turns the weighting off).
    """

    # network
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention: bool = True
    # process
    timesteps: int = 1000
    schedule: str = "cosine"
    objective: str = "v"
    min_snr_gamma: float = 5.0
    # class conditioning with classifier-free guidance: label dropout p_uncond trains the
    # null label (the anomaly score uses it); guidance 1 = the conditional prediction alone
    # (one network call per step), > 1 sharpens at two calls per step
    conditional: bool = True
    p_uncond: float = 0.1
    guidance_scale: float = 1.25
    # sampling: `sampler` in SAMPLERS makes `sample_steps` network evaluations (x2 with
    # guidance, see Diffusion) on levels spaced by `timestep_spacing`; `sample(steps=...)`
    # overrides sample_steps; ddim_eta applies to DDIM only. Defaults chosen by the sweep in
    # docs/diffusion.md (benchmarks/bench_diffusion.py): UniPC, 6 steps, guidance 1.25
    sample_steps: int = 6
    ddim_eta: float = 0.0
    sampler: str = "unipc"
    timestep_spacing: str = "trailing"
    # optimisation
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # anomaly score: noise to each level with `score_draws` fixed noise images, DDIM back to
    # x0 in `score_steps` steps (1 = the model's one-shot x0 estimate), mean squared error
    score_timesteps: tuple[int, ...] = (500, 600, 700)
    score_draws: int = 2
    score_steps: int = 1
    score_seed: int = 0
    # CPU speed options
    bf16_autocast: bool | str = "auto"  # true, false, or "auto": on where bf16 is native
    channels_last: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Self:
        """As `ModelConfig.from_dict`; a saved config from before a LEGACY_VALUES key loads
        with that key's legacy value (its old behaviour), not today's default."""
        values = dict(values or {})
        added = set(LEGACY_VALUES)
        saved_before = {f.name for f in fields(cls)} - added <= set(values)
        if saved_before and not added <= set(values):
            values = {k: v for k, v in LEGACY_VALUES.items() if k not in values} | values
        return super().from_dict(values)

    def validate(self) -> None:
        name = type(self).__name__
        require(
            self.base_channels >= 8, f"{name}.base_channels must be >= 8, got {self.base_channels}"
        )
        require(
            self.base_channels % 8 == 0,
            f"{name}.base_channels must be a multiple of 8 (GroupNorm), got {self.base_channels}",
        )
        require(
            1 <= len(self.channel_mults) <= 3 and all(int(m) >= 1 for m in self.channel_mults),
            f"{name}.channel_mults must be 1 to 3 positive ints (28 -> 14 -> 7), "
            f"got {self.channel_mults}",
        )
        require(
            not self.attention or len(self.channel_mults) == 3,
            f"{name}.attention applies at 7x7 only and needs 3 channel_mults, "
            f"got {self.channel_mults}",
        )
        require(
            self.num_res_blocks >= 1,
            f"{name}.num_res_blocks must be >= 1, got {self.num_res_blocks}",
        )
        require(self.timesteps >= 2, f"{name}.timesteps must be >= 2, got {self.timesteps}")
        require(
            self.schedule in SCHEDULES,
            f"{name}.schedule must be one of {SCHEDULES}, got {self.schedule!r}",
        )
        require(
            self.objective in OBJECTIVES,
            f"{name}.objective must be one of {OBJECTIVES}, got {self.objective!r}",
        )
        require(
            self.min_snr_gamma >= 0, f"{name}.min_snr_gamma must be >= 0, got {self.min_snr_gamma}"
        )
        require(
            0.0 <= self.p_uncond < 1.0, f"{name}.p_uncond must be in [0, 1), got {self.p_uncond}"
        )
        require(
            self.guidance_scale >= 0,
            f"{name}.guidance_scale must be >= 0, got {self.guidance_scale}",
        )
        require(
            1 <= self.sample_steps <= self.timesteps,
            f"{name}.sample_steps must be in 1..{self.timesteps}, got {self.sample_steps}",
        )
        require(self.ddim_eta >= 0, f"{name}.ddim_eta must be >= 0, got {self.ddim_eta}")
        require(
            self.sampler in SAMPLERS,
            f"{name}.sampler must be one of {SAMPLERS}, got {self.sampler!r}",
        )
        require(
            self.timestep_spacing in SPACINGS,
            f"{name}.timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}",
        )
        require(self.lr > 0, f"{name}.lr must be > 0, got {self.lr}")
        require(
            len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
            f"{name}.betas must be two floats in [0, 1), got {self.betas}",
        )
        require(
            self.weight_decay >= 0, f"{name}.weight_decay must be >= 0, got {self.weight_decay}"
        )
        require(
            self.warmup_steps >= 0, f"{name}.warmup_steps must be >= 0, got {self.warmup_steps}"
        )
        require(
            self.grad_clip >= 0, f"{name}.grad_clip must be >= 0 (0 = off), got {self.grad_clip}"
        )
        require(
            0.0 <= self.ema_decay < 1.0, f"{name}.ema_decay must be in [0, 1), got {self.ema_decay}"
        )
        require(
            len(self.score_timesteps) >= 1
            and all(0 <= int(t) < self.timesteps for t in self.score_timesteps),
            f"{name}.score_timesteps must be one or more levels in 0..{self.timesteps - 1}, "
            f"got {self.score_timesteps}",
        )
        require(self.score_draws >= 1, f"{name}.score_draws must be >= 1, got {self.score_draws}")
        require(self.score_steps >= 1, f"{name}.score_steps must be >= 1, got {self.score_steps}")
        require(self.score_seed >= 0, f"{name}.score_seed must be >= 0, got {self.score_seed}")
