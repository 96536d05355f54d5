"""The Gaussian diffusion process: forward noising, the training target, the samplers.

Network-agnostic (lucidrains' `GaussianDiffusion` without the network): every method takes
the denoiser's output or a denoise function. Images live in [-1, 1] here.

Samplers (all deterministic given x_T, each makes exactly `steps` denoiser calls):
  ddim     DDIM (Song et al. 2021), first order; eta > 0 adds fresh noise.
  dpmpp2m  DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in the data (x0)
           prediction, reusing the previous step's x0 instead of a second evaluation.
  unipc    UniPC-2 bh2 (Zhao et al. 2023): the same predictor (UniP-2 with B(h) = e^-h - 1
           equals DPM-Solver++(2M)) plus the UniC corrector, which re-solves each step with
           the x0 just computed at its end point, at no extra network evaluation.
Whatever the parametrisation (v or eps), the solvers see the clipped x0 prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from models import rng
from models.diffusion.schedule import alphas_cumprod, ddim_timesteps, sampling_timesteps

# (x_t, t) -> the network's raw output (v or eps), already classifier-free guided
Denoiser = Callable[[Tensor, Tensor], Tensor]
SAMPLERS = ("ddim", "dpmpp2m", "unipc")


def _at(values: Tensor, t: Tensor) -> Tensor:
    """Gather per-sample schedule values for int timesteps t as (N, 1, 1, 1)."""
    return values[t].reshape(-1, 1, 1, 1)


class GaussianDiffusion(nn.Module):
    """DDPM forward process on `timesteps` levels; eps- or v-prediction; DDIM sampler."""

    def __init__(self, timesteps: int, schedule: str, objective: str, min_snr_gamma: float) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.objective = objective
        self.min_snr_gamma = min_snr_gamma
        ab = alphas_cumprod(schedule, timesteps)
        # derived from the config, so not part of the saved state
        self.register_buffer("alphas_cumprod", ab.float(), persistent=False)
        self.register_buffer("sqrt_ab", ab.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1m_ab", (1 - ab).sqrt().float(), persistent=False)
        self.register_buffer("snr", (ab / (1 - ab)).float(), persistent=False)
        # the multistep solvers' step coefficients, in float64 (python floats)
        self._alpha = ab.sqrt().tolist()
        self._sigma = (1 - ab).sqrt().tolist()
        self._lambda = (0.5 * (ab / (1 - ab)).log()).tolist()  # log(alpha / sigma)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise."""
        return _at(self.sqrt_ab, t) * x0 + _at(self.sqrt_1m_ab, t) * noise

    def target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """What the network regresses: eps, or v = sqrt(ab) eps - sqrt(1 - ab) x0."""
        if self.objective == "eps":
            return noise
        return _at(self.sqrt_ab, t) * noise - _at(self.sqrt_1m_ab, t) * x0

    def loss_weight(self, t: Tensor) -> Tensor:
        """Min-SNR-gamma weights (Hang et al. 2023), expressed for the chosen target.

        The x0-space weight min(SNR, gamma) becomes min(SNR, gamma)/SNR for eps and
        min(SNR, gamma)/(SNR + 1) for v. gamma = 0 means plain (unweighted) MSE.
        """
        snr = self.snr[t]
        if self.min_snr_gamma <= 0:
            return torch.ones_like(snr)
        clipped = snr.clamp(max=self.min_snr_gamma)
        return clipped / snr if self.objective == "eps" else clipped / (snr + 1)

    def loss(self, output: Tensor, x0: Tensor, t: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """(weighted loss, unweighted MSE), both means over the batch."""
        mse = (output.float() - self.target(x0, t, noise)).pow(2).mean(dim=(1, 2, 3))
        return (self.loss_weight(t) * mse).mean(), mse.mean()

    def predict_x0_eps(self, x_t: Tensor, t: Tensor, output: Tensor) -> tuple[Tensor, Tensor]:
        """Recover (x0, eps) from the network output at level t, x0 clipped to [-1, 1]."""
        a, s = _at(self.sqrt_ab, t), _at(self.sqrt_1m_ab, t)
        output = output.float()
        x0 = (x_t - s * output) / a if self.objective == "eps" else a * x_t - s * output
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - a * x0) / s  # consistent with the clipped x0
        return x0, eps

    def ddim(
        self,
        denoise: Denoiser,
        x_t: Tensor,
        start: int,
        steps: int,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        timesteps: list[int] | None = None,
    ) -> Tensor:
        """DDIM (Song et al. 2021) from level `start` to x0 in `steps` network evaluations.

        eta = 0 is deterministic; eta > 0 draws its extra noise from `generator`. The levels
        are `timesteps` when given (from `sampling_timesteps`), else trailing spacing.
        """
        x = x_t
        ts = ddim_timesteps(start, steps) if timesteps is None else timesteps
        for i, t_now in enumerate(ts):
            t = torch.full((x.shape[0],), t_now, dtype=torch.long, device=x.device)
            x0, eps = self.predict_x0_eps(x, t, denoise(x, t))
            if i == len(ts) - 1:
                return x0
            ab_now, ab_next = self.alphas_cumprod[t_now], self.alphas_cumprod[ts[i + 1]]
            sigma = eta * ((1 - ab_next) / (1 - ab_now) * (1 - ab_now / ab_next)).sqrt()
            x = ab_next.sqrt() * x0 + (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps
            if eta > 0:
                x = x + sigma * rng.randn(x.shape, generator, x.device)
        return x

    def sample(
        self,
        sampler: str,
        denoise: Denoiser,
        x_t: Tensor,
        start: int,
        steps: int,
        spacing: str = "trailing",
        eta: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """x0 from x_t at level `start` with the named sampler in `steps` evaluations.

        `spacing` places the evaluations (`sampling_timesteps`); `eta` (and `generator`) only
        matter for DDIM; the multistep solvers are deterministic.
        """
        ts = sampling_timesteps(start, steps, spacing)
        if sampler == "ddim":
            return self.ddim(denoise, x_t, start, steps, eta, generator, timesteps=ts)
        if sampler in ("dpmpp2m", "unipc"):
            return self.multistep(denoise, x_t, ts, corrector=sampler == "unipc")
        raise ValueError(f"unknown sampler {sampler!r}; known: {SAMPLERS}")

    def multistep(self, denoise: Denoiser, x_t: Tensor, ts: list[int], corrector: bool) -> Tensor:
        """DPM-Solver++(2M), with the UniC corrector when `corrector` (UniPC), to x0.

        Evaluates the denoiser once at each level of `ts` (decreasing, x_t at ts[0]); the
        first step is first order (no history yet) and the last evaluation's x0 prediction is
        the result, as in DDIM ("denoise to zero"): len(ts) evaluations exactly.
        """
        x, base = x_t, x_t
        preds: list[Tensor] = []  # x0 predictions at ts[: i + 1], newest last (two kept)
        for i, t_now in enumerate(ts):
            t = torch.full((x.shape[0],), t_now, dtype=torch.long, device=x.device)
            x0, _ = self.predict_x0_eps(x, t, denoise(x, t))
            if corrector and preds:  # re-solve the step that led here with its end-point x0
                x = self._multistep_update(base, ts[i - 1 :: -1][:2], t_now, preds, x0)
            preds = [*preds[-1:], x0]
            if i == len(ts) - 1:
                return x0
            base = x
            x = self._multistep_update(x, ts[i::-1][:2], ts[i + 1], preds)
        return x

    def _multistep_update(
        self,
        x: Tensor,
        history: list[int],
        t_next: int,
        preds: list[Tensor],
        x0_next: Tensor | None = None,
    ) -> Tensor:
        """One UniP (x0_next None) or UniC step from level history[0] to `t_next`.

        `history` = [s0, s1, ...] the levels of `preds[-1], preds[-2], ...` (newest first).
        In log-SNR lambda with h = lambda_next - lambda_s0 the exact solution is
        x_next = sigma_next/sigma_s0 x + alpha_next * integral of e^-(lambda_next - l) x0(l) dl;
        the x0 history (and, for the corrector, x0 at the end point) interpolates x0(l).
        """
        s0 = history[0]
        a_t, s_t, lam_t = self._alpha[t_next], self._sigma[t_next], self._lambda[t_next]
        h = lam_t - self._lambda[s0]
        hh = -h
        phi1 = math.expm1(hh)  # e^-h - 1 (= B(h) for the bh2 variant)
        m0 = preds[-1]
        x_new = (s_t / self._sigma[s0]) * x - (a_t * phi1) * m0  # DDIM: x0 held constant
        order = min(len(history), len(preds))
        rk = (self._lambda[history[1]] - self._lambda[s0]) / h if order >= 2 else 0.0
        d1 = (preds[-2] - m0) / rk if order >= 2 else None
        if x0_next is None:  # predictor: UniP-2 (= DPM-Solver++(2M)); first order without history
            return x_new if d1 is None else x_new - (a_t * phi1 * 0.5) * d1
        d1_t = x0_next - m0
        if d1 is None:  # corrector of order 1: trapezoid in x0
            return x_new - (a_t * phi1 * 0.5) * d1_t
        # corrector of order 2: solve [[1, 1], [rk, 1]] rho = b (UniPC's R rho = b)
        phi_k = phi1 / hh - 1.0
        b1 = phi_k / phi1
        b2 = (phi_k / hh - 0.5) * 2.0 / phi1
        rho0, rho1 = (b1 - b2) / (1.0 - rk), (b2 - rk * b1) / (1.0 - rk)
        return x_new - a_t * phi1 * (rho0 * d1 + rho1 * d1_t)
