"""The generation gate: a sequential, relative test on fresh samples.

A generator is not a fixed test set: a fresh sample costs a fraction of a millisecond (GAN) to
about 8 ms (diffusion). So instead of resampling one fixed set of samples (the old paired
bootstrap of FD, whose replicates are biased and over-dispersed), the gate draws new samples
from both models in rounds and asks which of the two is closer to the real test digits.

The statistic (docs/gate.md says why this one, with the measurements):
  * Blocks of fresh samples (the B-test idea, Zaremba et al., NeurIPS 2013): each block holds
    `block_size` new samples of each model; blocks are independent given the real test set, so
    their values are i.i.d. and a t interval of their mean is honest.
  * Per block, "fd" (default): the block's FD-judge against the statistics of *all* real test
    digits: with block_size = 1,000 this is exactly the leaderboard's FD-judge (1,000 samples vs
    the test split), so the gate tests the headline metric's expectation over fresh draws.
    "kid": the unbiased MMD² with the cubic polynomial kernel (Bińkowski et al., ICLR 2018)
    against a fresh real block shared by both models; kept as an option, but on the judge's
    features its cubic kernel is dominated by heavy-tailed features (measured: docs/gate.md).
  * The margin is relative: the challenger must be closer by more than `margin` (a fraction of
    the champion's value). Per block, e = (1 - margin)·a - b (a: champion, b: challenger) is
    linear, so "E[e] > 0" is exactly "E[b] < (1 - margin)·E[a]".
  * Sequential looks after every round, valid under repeated looking by alpha spending with a
    union bound (Bonferroni over the planned looks): look k of K spends alpha / K. The gate
    promotes when the one-sided lower bound of E[e] clears 0, stops for futility (keeps the
    champion) when the upper bound at level futility_beta / K falls below 0, and keeps the
    champion, saying so, at the cap. Futility is non-binding: stopping early to keep the
    champion can only lower the false-promotion rate; it costs power, which is measured.
  * The interval shown is Fieller's interval for the relative improvement 1 - E[b] / E[a] at
    the look's level: the same test inverted, in units a person reads ("37 % closer").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.config import Config, require

METHOD = "sequential"
METRIC = "relative_improvement"
STATISTICS = ("fd", "kid")

# draw(n, seed) -> judge features (n, D) of n fresh samples drawn with that seed
FeatureSampler = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class SequentialConfig(Config):
    """params.yaml `registry.sequential`: rounds, blocks, the cap and the error rate."""

    statistic: str = "fd"  # per block: "fd" (FD-judge of the block vs all real items) or "kid"
    round_size: int = 1000  # fresh samples per model per round
    block_size: int = 1000  # samples per block (a round holds round_size / block_size)
    max_per_model: int = 10_000  # the cap: undecided there -> the champion is kept
    min_blocks: int = 4  # the first look waits for this many blocks (a t interval needs df)
    alpha: float = 0.05  # one-sided false-promotion rate, spent evenly over the looks
    futility_beta: float = 0.2  # non-binding futility stop: costs power, never a false promotion
    seed: int = 0

    def validate(self) -> None:
        require(self.statistic in STATISTICS, f"statistic must be one of {STATISTICS}")
        require(self.block_size >= 10, f"block_size must be >= 10, got {self.block_size}")
        require(
            self.round_size >= self.block_size and self.round_size % self.block_size == 0,
            f"round_size must be a multiple of block_size, got {self.round_size}",
        )
        require(
            self.max_per_model >= self.round_size and self.max_per_model % self.round_size == 0,
            f"max_per_model must be a multiple of round_size, got {self.max_per_model}",
        )
        require(self.min_blocks >= 3, f"min_blocks must be >= 3, got {self.min_blocks}")
        require(
            self.min_blocks <= self.max_per_model // self.block_size,
            "min_blocks exceeds the blocks the cap allows",
        )
        require(0 < self.alpha < 0.5, f"alpha must be in (0, 0.5), got {self.alpha}")
        require(
            self.alpha <= self.futility_beta < 0.5,
            f"futility_beta must be in [alpha, 0.5), got {self.futility_beta}",
        )

    @property
    def rounds(self) -> int:
        return self.max_per_model // self.round_size

    @property
    def looks(self) -> int:
        """Rounds at which the gate looks (from the one that reaches min_blocks)."""
        per_round = self.round_size // self.block_size
        first = math.ceil(self.min_blocks / per_round)
        return self.rounds - first + 1


# ---- the kernel statistic -------------------------------------------------------------------
def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² (KID) of feature sets x (m, D) and y (n, D), cubic polynomial kernel."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"kid needs at least 2 items per set, got {m} and {n}")
    kxx, kyy = _kernel(x, x), _kernel(y, y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * _kernel(x, y).mean())


def fd_to_reference(x: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FD-judge of feature set x (m, D) against fixed real statistics (mu, sigma): the very
    computation the leaderboard's FD-judge uses (pipelines.evaluation.metrics)."""
    from pipelines.evaluation import metrics as M

    return M.frechet_distance_from_stats(*M.feature_stats(x), mu, sigma)


class BlockStatistic:
    """A model's distance to the real items, one block of fresh samples at a time; both models
    are scored against the same real items (the same reference, or the same real block)."""

    def __init__(self, kind: str, real: np.ndarray, block: int, rng: np.random.Generator):
        self.kind, self.real, self.block, self.rng = kind, real, block, rng
        if kind == "fd":
            self.mu, self.sigma = real.mean(0), np.cov(real, rowvar=False)

    def __call__(
        self, champion: np.ndarray, candidate: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n_blocks = len(champion) // self.block
        if len(candidate) != len(champion) or n_blocks < 1:
            raise ValueError("block statistics need equal sample counts and >= one block")
        a, b = np.empty(n_blocks), np.empty(n_blocks)
        for j in range(n_blocks):
            part = slice(j * self.block, (j + 1) * self.block)
            if self.kind == "fd":
                a[j] = fd_to_reference(champion[part], self.mu, self.sigma)
                b[j] = fd_to_reference(candidate[part], self.mu, self.sigma)
            else:  # kid: a fresh real block, shared by both models
                r = self.real[self.rng.choice(len(self.real), size=self.block, replace=False)]
                a[j], b[j] = kid(champion[part], r), kid(candidate[part], r)
        return a, b


# ---- inference on the block values ------------------------------------------------------------
@dataclass(frozen=True)
class Look:
    """The state of the test after one round."""

    round: int
    n_per_model: int
    blocks: int
    champion_value: float  # mean block distance (FD-judge of a block, or its KID)
    candidate_value: float
    improvement: float  # relative: 1 - candidate_value / champion_value
    ci_low: float  # Fieller interval of the relative improvement at the look's level
    ci_high: float
    statistic: float  # t of E[(1 - margin) a - b] (> 0 favours the candidate)
    p_value: float  # one-sided, nominal (compare with alpha_look)
    alpha_look: float
    seconds: float


def _t_crit(alpha: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(1.0 - alpha, df))


def _p_value(t: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.sf(t, df))


def fieller(a: np.ndarray, b: np.ndarray, crit: float) -> tuple[float, float]:
    """{r : |t of mean((1 - r) a - b)| <= crit}: the interval of the relative improvement
    1 - E[b] / E[a]; (-inf, inf) when E[a] itself is not clear of zero."""
    n = len(a)
    d = a - b
    abar, dbar = a.mean(), d.mean()
    saa, sdd = a.var(ddof=1) / n, d.var(ddof=1) / n
    sda = np.cov(d, a, ddof=1)[0, 1] / n
    c2 = crit * crit
    qa, qb, qc = abar * abar - c2 * saa, dbar * abar - c2 * sda, dbar * dbar - c2 * sdd
    disc = qb * qb - qa * qc
    if qa <= 0 or disc < 0:
        return -math.inf, math.inf
    root = math.sqrt(disc)
    return float((qb - root) / qa), float((qb + root) / qa)


def _look(a, b, margin, alpha_look, round_no, n_per_model, seconds) -> Look:
    e = (1.0 - margin) * a - b
    n = len(e)
    se = e.std(ddof=1) / math.sqrt(n)
    t = float(e.mean() / se) if se > 0 else (math.inf if e.mean() > 0 else -math.inf)
    crit = _t_crit(alpha_look, n - 1)
    low, high = fieller(a, b, crit)
    ka, kb = float(a.mean()), float(b.mean())
    return Look(round_no, n_per_model, n, ka, kb, 1.0 - kb / ka if ka != 0 else math.nan,
                low, high, t, _p_value(t, n - 1), alpha_look, seconds)  # fmt: skip


@dataclass
class SequentialResult:
    """A finished sequential gate: its decision, why, and every look."""

    decision: str  # "promote", "keep" (ruled out), "cap" (undecided at the cap: kept)
    reason: str
    margin: float
    alpha: float
    looks: list[Look] = field(default_factory=list)
    seconds: float = 0.0
    statistic: str = "fd"
    metric: str = METRIC
    method: str = METHOD

    @property
    def final(self) -> Look:
        return self.looks[-1]

    # the fields the registry records for any interval-based decision
    @property
    def candidate(self) -> float:
        return self.final.candidate_value

    @property
    def champion(self) -> float:
        return self.final.champion_value

    @property
    def improvement(self) -> float:
        return self.final.improvement

    @property
    def ci_low(self) -> float:
        return self.final.ci_low

    @property
    def ci_high(self) -> float:
        return self.final.ci_high

    @property
    def confidence(self) -> float:
        """The Fieller interval's two-sided level (each end is a one-sided alpha_look bound)."""
        return 1.0 - 2.0 * self.final.alpha_look

    def clears(self, margin: float) -> bool:  # the test ran with its own margin
        return self.decision == "promote"

    def summary(self, margin: float | None = None) -> str:
        f = self.final
        return (
            f"block {self.statistic.upper()} {f.candidate_value:.4g} vs champion "
            f"{f.champion_value:.4g}: relative improvement "
            f"{f.improvement:+.1%}, {self.confidence:.2%} CI [{f.ci_low:+.1%}, {f.ci_high:+.1%}] "
            f"vs margin {self.margin:.0%}; {len(self.looks)} look(s), {f.n_per_model:,} fresh "
            f"samples per model, {self.seconds:.1f} s: {self.reason}"
        )

    def to_dict(self) -> dict[str, Any]:
        f = self.final
        return {
            "metric": self.metric,
            "method": self.method,
            "statistic": self.statistic,
            "decision": self.decision,
            "reason": self.reason,
            "candidate": f.candidate_value,
            "champion": f.champion_value,
            "improvement": f.improvement,
            "ci_low": f.ci_low,
            "ci_high": f.ci_high,
            "confidence": self.confidence,
            "margin": self.margin,
            "alpha": self.alpha,
            "rounds": f.round,
            "n_per_model": f.n_per_model,
            "p_value": f.p_value,
            "seconds": self.seconds,
            "looks": [asdict(look) for look in self.looks],
        }


def sequential_test(
    candidate: FeatureSampler,
    champion: FeatureSampler,
    real: np.ndarray,
    margin: float,
    cfg: SequentialConfig | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> SequentialResult:
    """Is the candidate closer to `real` than the champion by more than `margin` (relative)?

    Draws `cfg.round_size` fresh samples of each model per round (seeds derived from
    `cfg.seed` and the round, different for the two models), scores blocks, and looks after
    every round once `cfg.min_blocks` blocks are in. See the module docstring.
    """
    cfg = cfg or SequentialConfig()
    require(0 <= margin < 1, f"the generation margin is relative, in [0, 1), got {margin}")
    real = np.asarray(real, dtype=np.float64)
    need = cfg.block_size if cfg.statistic == "kid" else 2
    require(len(real) >= need, f"need >= {need} real items, got {len(real)}")
    score = BlockStatistic(
        cfg.statistic, real, cfg.block_size, np.random.default_rng([cfg.seed, 7])
    )
    alpha_look, beta_look = cfg.alpha / cfg.looks, cfg.futility_beta / cfg.looks
    a_all: list[np.ndarray] = []
    b_all: list[np.ndarray] = []
    looks: list[Look] = []
    start = clock()

    def finish(decision: str, reason: str) -> SequentialResult:
        return SequentialResult(decision, reason, margin, cfg.alpha, looks, clock() - start,
                                cfg.statistic)  # fmt: skip

    for r in range(1, cfg.rounds + 1):
        champ = np.asarray(champion(cfg.round_size, _seed(cfg.seed, r, 0)), dtype=np.float64)
        cand = np.asarray(candidate(cfg.round_size, _seed(cfg.seed, r, 1)), dtype=np.float64)
        a, b = score(champ, cand)
        a_all.append(a)
        b_all.append(b)
        a_cat, b_cat = np.concatenate(a_all), np.concatenate(b_all)
        if len(a_cat) < cfg.min_blocks:
            continue
        look = _look(a_cat, b_cat, margin, alpha_look, r, r * cfg.round_size, clock() - start)
        looks.append(look)
        if look.statistic > _t_crit(alpha_look, look.blocks - 1):
            return finish(
                "promote", f"the challenger is closer by more than the {margin:.0%} margin"
            )
        if look.statistic < -_t_crit(beta_look, look.blocks - 1):
            return finish(
                "keep", f"ruled out: not closer by the {margin:.0%} margin (futility stop)"
            )
    return finish(
        "cap",
        f"undecided at the cap of {cfg.max_per_model:,} samples per model: the champion is kept",
    )


def _seed(base: int, round_no: int, who: int) -> int:
    """A distinct, reproducible sampling seed per (gate seed, round, model)."""
    return int(np.random.SeedSequence([base, round_no, who]).generate_state(1)[0])
