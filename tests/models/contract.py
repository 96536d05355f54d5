"""Contract checks shared by the family test files."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.base import GenerativeModel


def assert_resume_bit_identical(
    make: Callable[..., GenerativeModel], images: torch.Tensor, labels: torch.Tensor
) -> None:
    """Checkpoint after 5 steps (weights, optimizers, generator), resume: same as 10 straight.

    `make(seed=...)` builds a fresh model; the resumed one starts from another seed so that
    only the loaded state can make it match.
    """

    def run(model: GenerativeModel, steps: range, opts=None, gen=None):
        opts = opts or model.configure_optimizers()
        gen = gen or torch.Generator().manual_seed(1)
        for step in steps:
            model.training_step(images, labels, opts, step, gen)
        return opts, gen

    straight = make()
    run(straight, range(10))
    first = make()
    opts, gen = run(first, range(5))
    resumed = make(seed=123)
    resumed.load_state_dict(first.state_dict())
    opts2 = resumed.configure_optimizers()
    for name, opt in opts2.items():
        opt.load_state_dict(opts[name].state_dict())
    run(resumed, range(5, 10), opts2, torch.Generator().set_state(gen.get_state()))
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
