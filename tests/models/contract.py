"""Tiny configs and helpers shared by the contract suite and the family test files."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from models.base import Batch, GenerativeModel
from models.io import build_model

FAMILIES = ("autoencoder", "vae", "gan", "diffusion")

# the smallest configs that still learn something in a few dozen CPU steps
TINY: dict[str, dict[str, Any]] = {
    "autoencoder": {
        "channels": (8, 16),
        "latent_dim": 8,
        "lr": 3e-3,
        "prior_momentum": 0.1,
        "denoise_std": 0.2,  # exercises the generator in training_step (resume test)
        "mask_prob": 0.1,
    },
    "vae": {
        "channels": (8, 16),
        "hidden_dim": 64,
        "latent_dim": 8,
        "lr": 3e-3,
        "kl_warmup_steps": 0,
        "max_iwae_k": 64,
    },
    "gan": {
        "latent_dim": 8,
        "label_embed_dim": 4,
        "g_width": 8,
        "d_width": 8,
        "e_width": 8,
        "lr": 1e-3,
        "monitor_every": 2,
        "monitor_batch": 8,
        "monitor_warmup": 0,  # tiny runs: flag from the first step
        "encoder_start_step": 10,
        "ema_decay": 0.9,
    },
    "diffusion": {
        "base_channels": 8,
        "channel_mults": (1, 2),
        "attention": False,
        "timesteps": 100,
        "sample_steps": 4,
        "score_timesteps": (10, 30),
        "score_draws": 2,
        "score_steps": 2,
        "lr": 1e-2,
        "warmup_steps": 5,
        "ema_decay": 0.5,
        "bf16_autocast": False,
    },
}


def make(
    family: str, seed: int = 0, *, base: Mapping[str, Any] | None = None, **overrides: Any
) -> GenerativeModel:
    """A fresh model of `family`, initialised from `seed` (global RNG forked, not reset).

    Its config is `TINY[family]` with `overrides`; `base={}` starts from the family's defaults.
    """
    config = dict(TINY[family] if base is None else base) | overrides
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(family, config)


def run_steps(
    model: GenerativeModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: range,
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    generator: torch.Generator | None = None,
    batch: int | None = None,
    seed: int = 1,
) -> tuple[list[dict[str, float]], dict[str, torch.optim.Optimizer], torch.Generator]:
    """The trainer's loop in miniature: (logs, optimizers, generator) after `steps`.

    Without `optimizers` / `generator`, fresh ones are made (the generator seeded with `seed`).
    With `batch`, each step draws a minibatch of that size from `generator`; otherwise every
    step sees all of `images`. `logs` holds each step's logged dict.
    """
    optimizers = optimizers or model.configure_optimizers()
    generator = generator or torch.Generator().manual_seed(seed)
    logs = []
    for step in steps:
        x, y = images, labels
        if batch is not None:
            idx = torch.randint(0, images.shape[0], (batch,), generator=generator)
            x, y = images[idx], labels[idx]
        model.train()
        logs.append(model.training_step(Batch(x, y, step, generator), optimizers))
        model.on_train_step_end(step)
    model.eval()
    return logs, optimizers, generator


def assert_resume_bit_identical(
    make_model: Callable[..., GenerativeModel],
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int = 10,
) -> None:
    """Checkpoint halfway (weights, optimizers, generator), resume: same as `steps` straight.

    `make_model(seed=...)` builds a fresh model; the resumed one starts from another seed so
    that only the loaded state can make it match.
    """
    half = steps // 2
    straight = make_model(seed=0)
    run_steps(straight, images, labels, range(steps))
    first = make_model(seed=0)
    _, opts, gen = run_steps(first, images, labels, range(half))
    resumed = make_model(seed=123)
    resumed.load_state_dict(first.state_dict())
    opts2 = resumed.configure_optimizers()
    for name, opt in opts2.items():
        opt.load_state_dict(opts[name].state_dict())
    gen2 = torch.Generator().set_state(gen.get_state())
    run_steps(resumed, images, labels, range(half, steps), opts2, gen2)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
