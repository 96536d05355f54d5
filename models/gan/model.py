"""The GAN family: DCGAN / WGAN-GP training, then an f-AnoGAN encoder for anomaly scores.

Training has two phases inside one run (one step = one batch):
  steps < encoder_start_step   G and D (D every step, G every `critic_steps` steps), EMA of G
  steps >= encoder_start_step  the encoder E only, izif loss (Schlegl et al. 2019) against the
                               frozen sampling generator (EMA of G when enabled) and frozen D.
Conditional GANs: E also predicts label logits (trained with cross-entropy beside izif) and
feeds G the softmax-weighted label embedding, so scoring and reconstruction need no labels;
D's projection head keeps its penultimate features label-free.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import rng
from models.base import Batch, Capabilities, GenerativeModel, Optimizers
from models.ema import ema_update, warmup_decay
from models.gan.config import GANConfig
from models.gan.monitors import (
    SwingTracker,
    d_collapse_warning,
    diversity_ratio,
    mode_collapse_warning,
    oscillation_warning,
)
from models.gan.negatives import negative_batch
from models.gan.neighbours import (
    IndexedBank,
    coarse_index,
    neighbour_search,
)
from models.gan.networks import Discriminator, Encoder, Generator
from models.gan.objectives import (
    IzifResidual,
    discriminator_loss,
    discriminator_probs,
    generator_loss,
    gradient_penalty,
    izif_residual,
    negative_loss,
)
from models.imaging import to_signed, to_unit
from models.tensors import NUM_CLASSES, bf16_autocast, check_images, check_labels, to_channels_last


@contextmanager
def frozen(*modules: nn.Module, eval_mode: bool = True) -> Iterator[None]:
    """No parameter gradients (and eval mode unless told otherwise), restored on exit."""
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in modules]
    for m in modules:
        m.train(m.training and not eval_mode)
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, training, flags in saved:
            m.train(training)
            for p, flag in zip(m.parameters(), flags, strict=True):
                p.requires_grad_(flag)


class GAN(IndexedBank, GenerativeModel):
    """DCGAN-style G/D at 28x28 with an f-AnoGAN encoder; see the module docstring."""

    family = "gan"
    config_cls = GANConfig
    config: GANConfig

    def __init__(self, config: GANConfig) -> None:
        super().__init__(config)
        classes = NUM_CLASSES if config.conditional else 0
        d_norm = "layer" if config.objective == "wgan-gp" else "batch"
        self.g = Generator(config.latent_dim, config.g_width, classes, config.label_embed_dim)
        self.d = Discriminator(config.d_width, classes, norm=d_norm)
        self.e = Encoder(config.latent_dim, config.e_width, classes)
        if config.ema_decay > 0:
            self.g_ema = copy.deepcopy(self.g).requires_grad_(False)
        noise = torch.Generator().manual_seed(config.seed)
        monitor_z = torch.randn(config.monitor_batch, config.latent_dim, generator=noise)
        self.register_buffer("monitor_z", monitor_z)
        self.register_buffer("monitor_labels", torch.arange(config.monitor_batch) % NUM_CLASSES)
        self.register_buffer("diversity", torch.tensor(1.0))  # last measured diversity ratio
        # oscillation monitor state (SwingTracker): not saved with the weights
        # (weights from before the monitor still load); after a resume it warms up again
        swing = torch.zeros(SwingTracker.STATE_SIZE, dtype=torch.float64)
        self.register_buffer("gap_swing", swing, persistent=False)
        if config.score == "dknn":  # filled by fit_scorer; saved with the weights
            features, dims = self.d.trunk.out_features, config.score_coarse_dims
            self.register_buffer("score_bank", torch.zeros(0, features, dtype=torch.float16))
            # the search's coarse index: derived from the bank at fit, saved with it; a file
            # from before it was saved derives it at load (DERIVED_STATE, ensure_index)
            self.register_buffer("score_proj", torch.zeros(features, dims))
            self.register_buffer("score_coarse", torch.zeros(0, dims).half())
        if config.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(conditional=self.config.conditional, reconstruction=True)

    # ---- helpers --------------------------------------------------------------------
    @property
    def sampler(self) -> Generator:
        """The generator used for sampling and scoring: the EMA copy when enabled."""
        return self.g_ema if self.config.ema_decay > 0 else self.g

    def _autocast(self) -> torch.autocast:
        return bf16_autocast(self.config.bf16_autocast, self.device)

    def _to_net(self, images: Tensor) -> Tensor:
        x = to_signed(check_images(images).to(self.device))
        return to_channels_last(x, self.config.channels_last)

    def _label_input(self, logits: Tensor | None) -> Tensor | None:
        return None if logits is None else logits.float().softmax(dim=1)

    def _izif(self, x: Tensor) -> tuple[IzifResidual, Tensor, Tensor | None]:
        """Residuals of x against G(E(x)); returns (residual, x_hat, label_logits)."""
        enc = self.e(x)
        x_hat = self.sampler(enc.z, self._label_input(enc.label_logits))
        f_x = self.d(x).features.detach()
        f_hat = self.d(x_hat).features
        return izif_residual(x, x_hat, f_x, f_hat, self.config.kappa), x_hat, enc.label_logits

    # the neighbour bank and the buffers a file may lack (saved before the coarse index was),
    # derived at load (models.gan.neighbours.IndexedBank)
    BANK, DERIVED_STATE = "score_bank", ("score_proj", "score_coarse")

    def _bank_on(self) -> bool:
        return self.config.score == "dknn"

    def _index_dims(self) -> int:
        return self.config.score_coarse_dims

    def _derive_index(self) -> None:
        self._index_bank()

    # ---- training -------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {
            "g": torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=cfg.betas),
            "d": torch.optim.Adam(self.d.parameters(), lr=cfg.lr, betas=cfg.betas),
            "e": torch.optim.Adam(self.e.parameters(), lr=cfg.e_lr, betas=(0.9, 0.999)),
        }

    def training_step(self, batch: Batch, optimizers: Optimizers) -> dict[str, float]:
        """A G/D step before `encoder_start_step`, an encoder step from it on."""
        x = self._to_net(batch.images)
        labels = check_labels(batch.labels, x.shape[0])
        if labels is not None:
            labels = labels.to(x.device)
        if batch.step >= self.config.encoder_start_step:
            return self._encoder_step(x, labels, optimizers["e"])
        return self._gan_step(replace(batch, images=x, labels=labels), optimizers)

    def _gan_step(self, batch: Batch, optimizers: Optimizers) -> dict[str, float]:
        """One D step and (every `critic_steps`-th) G step; `batch` holds network-ready tensors."""
        x, labels, step, generator = batch.images, batch.labels, batch.step, batch.generator
        cfg = self.config
        y = labels if cfg.conditional else None
        z = rng.randn((x.shape[0], cfg.latent_dim), generator, x.device)
        with self._autocast():
            fake = self.g(z, y)
            real_out, fake_out = self.d(x, y), self.d(fake.detach(), y)
            d_loss = discriminator_loss(cfg.objective, real_out.logits, fake_out.logits)
            d_total = d_loss
            if cfg.negatives:  # negative data augmentation: rearranged real digits as fakes
                negatives = negative_batch(x, cfg.negatives, generator)
                negatives = to_channels_last(negatives, cfg.channels_last)
                neg_logits = self.d(negatives, y).logits
                neg_loss = negative_loss(cfg.objective, neg_logits)
                d_total = d_total + cfg.negative_weight * neg_loss
            if cfg.objective == "wgan-gp":
                gp = gradient_penalty(lambda v: self.d(v, y).logits, x, fake.detach(), generator)
                d_total = d_total + cfg.gp_weight * gp
        optimizers["d"].zero_grad(set_to_none=True)
        d_total.backward()
        optimizers["d"].step()

        d_real = discriminator_probs(cfg.objective, real_out.logits).item()
        d_fake = discriminator_probs(cfg.objective, fake_out.logits).item()
        logs = {"loss": d_total.item(), "d_loss": d_loss.item(), "d_real": d_real}
        logs |= {"d_fake": d_fake, "d_gap": d_real - d_fake}
        if cfg.objective == "wgan-gp":
            logs["gp"] = gp.item()
        if cfg.negatives:
            logs["d_negative"] = discriminator_probs(cfg.objective, neg_logits).item()
            logs["d_neg_loss"] = neg_loss.item()
        if step % cfg.critic_steps == 0:
            with frozen(self.d, eval_mode=False), self._autocast():  # D keeps batch statistics
                g_loss = generator_loss(cfg.objective, self.d(fake, y).logits)
            optimizers["g"].zero_grad(set_to_none=True)
            g_loss.backward()
            optimizers["g"].step()
            logs["g_loss"] = g_loss.item()
        return logs | self._monitor(x, step, logs)

    def _monitor(self, x: Tensor, step: int, logs: dict[str, float]) -> dict[str, float]:
        """Failure-mode flags; the diversity probe runs every `monitor_every` steps."""
        cfg = self.config
        if step > 0 and step % cfg.monitor_every == 0 and x.shape[0] >= 2:
            labels = self.monitor_labels if cfg.conditional else None
            with torch.no_grad(), frozen(self.g):
                samples = to_unit(self.g(self.monitor_z, labels))
            real = to_unit(x[: cfg.monitor_batch])
            self.diversity.fill_(diversity_ratio(samples, real))
        diversity = float(self.diversity)
        d_warn = d_collapse_warning(
            cfg.objective,
            logs["d_loss"],
            logs["d_real"],
            logs["d_fake"],
            loss_floor=cfg.d_collapse_loss,
            prob_gap=cfg.d_collapse_gap,
            wgan_gap_limit=cfg.wgan_gap_limit,
        )
        m_warn = mode_collapse_warning(diversity, cfg.mode_collapse_ratio)
        scale = cfg.wgan_gap_limit if cfg.objective == "wgan-gp" else 1.0
        swing = SwingTracker.update(self.gap_swing, logs["d_gap"] / scale)
        o_warn = oscillation_warning(swing, cfg.oscillation_swing)
        if step < cfg.monitor_warmup:  # G starts as one blob: early flags would be noise
            d_warn = m_warn = o_warn = False
        return {
            "diversity": diversity,
            "d_gap_swing": swing,
            "warn_d_collapse": float(d_warn),
            "warn_mode_collapse": float(m_warn),
            "warn_oscillation": float(o_warn),
        }

    def _encoder_step(
        self, x: Tensor, labels: Tensor | None, optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        cfg = self.config
        with frozen(self.sampler, self.d), self._autocast():
            residual, _, logits = self._izif(x)
            loss = residual.total.mean()
            logs = {"e_image_residual": residual.image.mean().item()}
            logs["e_feature_residual"] = residual.feature.mean().item()
            if logits is not None and labels is not None:
                ce = F.cross_entropy(logits.float(), labels)
                loss = loss + cfg.label_loss_weight * ce
                logs |= {"e_label_ce": ce.item()}
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "e_loss": residual.total.mean().item()} | logs

    def on_train_step_end(self, step: int) -> None:
        """EMA of G during the G/D phase, with the usual warm-up of the decay."""
        decay = self.config.ema_decay
        if decay > 0 and step < self.config.encoder_start_step:
            ema_update(self.g_ema, self.g, warmup_decay(decay, step))

    def validation_loss(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """Mean f-AnoGAN score of (normal) validation images; meaningful once E trains."""
        with torch.no_grad(), frozen(self.e, self.sampler, self.d):
            residual, _, logits = self._izif(self._to_net(images))
        logs = {"loss": float(residual.total.mean())}
        logs["image_residual"] = float(residual.image.mean())
        logs["feature_residual"] = float(residual.feature.mean())
        labels = check_labels(labels, images.shape[0])
        if logits is not None and labels is not None:
            hits = logits.argmax(dim=1) == labels.to(logits.device)
            logs["label_accuracy"] = float(hits.float().mean())
        return logs

    # ---- generation and scoring -----------------------------------------------------
    @torch.no_grad()
    def _sample(
        self, n: int, generator: torch.Generator | None, labels: Tensor | None, steps: int | None
    ) -> Tensor:
        """`n` images in [0, 1] from z ~ N(0, I) drawn from `generator` (and `labels`)."""
        z = rng.randn((n, self.config.latent_dim), generator, self.device)
        with frozen(self.sampler):
            return to_unit(self.sampler(z, labels))

    @torch.no_grad()
    def _features(self, images: Tensor) -> Tensor:
        """D's penultimate features (N, F) of images in [0, 1], unit length, float32."""
        with frozen(self.d):
            features = self.d(self._to_net(images)).features.float()
        return F.normalize(features, dim=1)

    @torch.no_grad()
    def fit_scorer(self, images: Tensor) -> None:
        """score "dknn": keep the training images' D features (fp16) as the neighbour bank
        (saved with the weights) and index it for the search (`anomaly_score`)."""
        if self.config.score != "dknn":
            return
        chunks = [self._features(images[i : i + 512]) for i in range(0, images.shape[0], 512)]
        self.score_bank = torch.cat(chunks).half().to(self.device)
        self._index_bank()

    @torch.no_grad()
    def _index_bank(self) -> None:
        """The coarse index (models.neighbours.coarse_index), a deterministic function of the
        bank."""
        if self.score_bank.shape[0]:
            self.score_proj, self.score_coarse = coarse_index(
                self.score_bank, self.config.score_coarse_dims
            )
        self._index_checked = True

    @torch.no_grad()
    def anomaly_score(self, images: Tensor) -> Tensor:
        """score "izif": f-AnoGAN ||x - G(E(x))||^2 + kappa ||f_D(x) - f_D(G(E(x)))||^2 (means).
        score "dknn": mean cosine distance 1 - cos to the `score_k` nearest training images in
        D's penultimate features. Two-stage search: the `score_candidates` nearest by the coarse
        index, then exact fp32 cosines with those, each image on its own. On full MNIST it finds
        the exhaustive search's neighbours (docs/anomaly.md)."""
        if self.config.score == "dknn":
            return self.dknn_with_rows(images)[0]
        with frozen(self.e, self.sampler, self.d):
            residual, _, _ = self._izif(self._to_net(images))
        return residual.total

    @torch.no_grad()
    def dknn_with_rows(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(`anomaly_score` of score "dknn", (N, score_k) its neighbours): the feature bank's
        rows (training digits, in the order `fit_scorer` saw them) nearest to each image in
        D's features, found by the same search, so a caller that needs both pays once."""
        if self.config.score != "dknn":
            raise RuntimeError(f"gan: neighbour rows need score 'dknn', not {self.config.score!r}")
        k, bank = self.config.score_k, self.score_bank
        if bank.shape[0] < k:
            raise RuntimeError(
                f"gan: score 'dknn' needs a feature bank of at least score_k={k} training "
                f"images, has {bank.shape[0]}: fit_scorer(train images) first"
            )
        self.ensure_index()
        return neighbour_search(
            self._features(images),
            bank,
            self.score_proj,
            self.score_coarse,
            k,
            self.config.score_candidates,
        )

    def neighbour_rows(self, images: Tensor) -> Tensor:
        """(N, score_k) `anomaly_score`'s neighbours: the bank's rows, nearest first."""
        return self.dknn_with_rows(images)[1]

    @torch.no_grad()
    def class_logits(self, images: Tensor) -> Tensor:
        """(N, 10) float32 the encoder's class logits for images in [0, 1] (a conditional GAN)."""
        if not self.config.conditional:
            raise ValueError("gan: class predictions need a conditional GAN (its classes)")
        with frozen(self.e):
            return self.e(self._to_net(images)).label_logits.float()

    def class_entropy(self, images: Tensor) -> Tensor:
        """(N,) entropy (nats) of the encoder's class prediction for images in [0, 1]: a
        figure that is no digit tends to get a flat prediction (the ensemble's class-entropy
        view, docs/anomaly.md "Seventeenth pass"). A conditional GAN only."""
        return entropy_of_logits(self.class_logits(images))

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """G(E(x)) in [0, 1]."""
        with frozen(self.e, self.sampler, self.d):
            _, x_hat, _ = self._izif(self._to_net(images))
        return to_unit(x_hat)


def entropy_of_logits(logits: Tensor) -> Tensor:
    """(N,) entropy (nats) of the class distributions (N, C) `logits` define."""
    logp = logits.float().log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1)
