"""Helpers shared by the contract suite and the family tests (configs: tests/profile.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from models import spec
from models.base import Batch, GenerativeModel
from models.io import build_model
from tests.profile import TINY

FAMILIES = spec.FAMILIES  # every registered family goes through the contract suite


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


def make_scoring(family: str, images: torch.Tensor, **overrides: Any) -> GenerativeModel:
    """`make(family)` in eval mode with its scorer fitted on `images` (a GAN's feature bank),
    as the trainer leaves a model: untrained weights that can score."""
    model = make(family, **overrides).eval()
    model.fit_scorer(images)
    return model


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
    """The trainer's loop in miniature: (logs, optimizers, generator) after `steps`, the
    scorer fitted on `images` at the end.

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
    model.fit_scorer(images)  # as the trainer does once training is done
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
