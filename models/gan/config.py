"""The GAN family's frozen, validated config."""

from __future__ import annotations

from dataclasses import dataclass

from models.base import ModelConfig, require
from models.gan.negatives import NEGATIVES

OBJECTIVES = ("dcgan", "wgan-gp")
SCORES = ("izif", "dknn")


@dataclass(frozen=True)
class GANConfig(ModelConfig):
    """DCGAN / WGAN-GP at 28x28 with an f-AnoGAN encoder trained in a second phase.

    Steps `< encoder_start_step` train G and D; steps from it on train the encoder E only
    (G and D frozen, in eval mode), so the trainer's `steps` should exceed it.
    """

    objective: str = "dcgan"  # "dcgan" (non-saturating BCE) | "wgan-gp"
    conditional: bool = True  # label embedding into G, projection discriminator
    latent_dim: int = 64
    label_embed_dim: int = 16
    g_width: int = 32  # channels of G's last hidden layer (4x / 2x / 1x at 7 / 14 / 28 px)
    d_width: int = 32  # channels of D's first layer (1x / 2x / 4x at 14 / 7 / 4 px)
    e_width: int = 32  # encoder, same layout as D
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    e_lr: float = 1e-3
    n_critic: int | None = None  # D steps per G step; None -> 1 for dcgan, 5 for wgan-gp
    gp_weight: float = 10.0  # WGAN-GP gradient penalty weight
    encoder_start_step: int = 1500  # first step of the encoder (f-AnoGAN izif) phase
    kappa: float = 1.0  # weight of the discriminator-feature residual (izif)
    # anomaly score: "izif" (f-AnoGAN: ||x - G(E(x))||^2 + kappa * feature residual) or "dknn"
    # (mean cosine distance to the `score_k` nearest training digits in D's penultimate
    # features; the bank of training features is fitted after training and saved in fp16)
    score: str = "izif"
    score_k: int = 10
    score_coarse_dims: int = 128  # dknn search: the coarse index's dimensions
    score_candidates: int = 256  # dknn search: rows the coarse index hands to the exact cosine
    # negative data augmentation (models/gan/negatives.py): real digits rearranged ("jigsaw",
    # "stitch") shown to D as fakes beside G's, their loss weighted by negative_weight; () = off
    negatives: tuple[str, ...] = ()
    negative_weight: float = 1.0
    label_loss_weight: float = 0.1  # conditional only: encoder label cross-entropy weight
    ema_decay: float = 0.999  # EMA of G used for sampling and scoring; 0 disables
    monitor_every: int = 50  # steps between mode-collapse (diversity) checks
    monitor_batch: int = 40  # fixed noise vectors generated for the diversity check
    d_collapse_loss: float = 0.05  # dcgan: warn when D loss falls below this
    d_collapse_gap: float = 0.95  # dcgan: warn when mean D(real) - D(fake) exceeds this
    wgan_gap_limit: float = 10.0  # wgan-gp: warn when the critic gap exceeds this
    mode_collapse_ratio: float = 0.5  # warn when sample/real pairwise distance falls below
    oscillation_swing: float = 0.15  # warn above this swing amplitude of the D gap
    monitor_warmup: int = 100  # steps before any monitor may warn (G starts as one blob)
    seed: int = 0  # seeds the fixed monitoring noise
    bf16_autocast: bool | str = "auto"  # true, false, or "auto": on where bf16 is native
    channels_last: bool = True

    @property
    def critic_steps(self) -> int:
        """D updates per G update (resolves the objective-dependent default)."""
        if self.n_critic is not None:
            return self.n_critic
        return 5 if self.objective == "wgan-gp" else 1

    def validate(self) -> None:
        require(
            self.objective in OBJECTIVES,
            f"objective must be one of {OBJECTIVES}, got {self.objective!r}",
        )
        for name in ("latent_dim", "label_embed_dim", "g_width", "d_width", "e_width"):
            value = getattr(self, name)
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be an int >= 1, got {value!r}",
            )
        require(0.0 < self.lr < 1.0, f"lr must be in (0, 1), got {self.lr!r}")
        require(0.0 < self.e_lr < 1.0, f"e_lr must be in (0, 1), got {self.e_lr!r}")
        require(
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in self.betas),
            f"betas must be two values in [0, 1), got {self.betas!r}",
        )
        require(
            self.n_critic is None or (isinstance(self.n_critic, int) and self.n_critic >= 1),
            f"n_critic must be None or an int >= 1, got {self.n_critic!r}",
        )
        require(self.gp_weight >= 0.0, f"gp_weight must be >= 0, got {self.gp_weight!r}")
        require(
            isinstance(self.encoder_start_step, int) and self.encoder_start_step >= 0,
            f"encoder_start_step must be an int >= 0, got {self.encoder_start_step!r}",
        )
        require(self.kappa >= 0.0, f"kappa must be >= 0, got {self.kappa!r}")
        require(self.score in SCORES, f"score must be one of {SCORES}, got {self.score!r}")
        require(
            isinstance(self.score_k, int) and self.score_k >= 1,
            f"score_k must be an int >= 1, got {self.score_k!r}",
        )
        require(
            isinstance(self.score_coarse_dims, int) and self.score_coarse_dims >= 1,
            f"score_coarse_dims must be an int >= 1, got {self.score_coarse_dims!r}",
        )
        require(
            isinstance(self.score_candidates, int) and self.score_candidates >= self.score_k,
            f"score_candidates must be an int >= score_k ({self.score_k}), "
            f"got {self.score_candidates!r}",
        )
        require(
            isinstance(self.negatives, tuple)
            and all(k in NEGATIVES for k in self.negatives)
            and len(set(self.negatives)) == len(self.negatives),
            f"negatives must be distinct kinds of {NEGATIVES}, got {self.negatives!r}",
        )
        require(
            self.negative_weight > 0.0, f"negative_weight must be > 0, got {self.negative_weight!r}"
        )
        require(
            self.label_loss_weight >= 0.0,
            f"label_loss_weight must be >= 0, got {self.label_loss_weight!r}",
        )
        require(0.0 <= self.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        require(self.monitor_every >= 1, f"monitor_every must be >= 1, got {self.monitor_every!r}")
        require(self.monitor_batch >= 2, f"monitor_batch must be >= 2, got {self.monitor_batch!r}")
        require(
            self.d_collapse_loss >= 0.0,
            f"d_collapse_loss must be >= 0, got {self.d_collapse_loss!r}",
        )
        require(
            0.0 < self.d_collapse_gap <= 1.0,
            f"d_collapse_gap must be in (0, 1], got {self.d_collapse_gap!r}",
        )
        require(
            self.wgan_gap_limit > 0.0, f"wgan_gap_limit must be > 0, got {self.wgan_gap_limit!r}"
        )
        require(
            self.oscillation_swing > 0.0,
            f"oscillation_swing must be > 0, got {self.oscillation_swing!r}",
        )
        require(
            isinstance(self.monitor_warmup, int) and self.monitor_warmup >= 0,
            f"monitor_warmup must be an int >= 0, got {self.monitor_warmup!r}",
        )
        require(
            0.0 <= self.mode_collapse_ratio <= 1.0,
            f"mode_collapse_ratio must be in [0, 1], got {self.mode_collapse_ratio!r}",
        )
