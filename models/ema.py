"""Exponential moving averages of network weights: one rule for every family.

The decay warms up as min(decay, (1 + n) / (10 + n)) over the first n updates, so short runs
are not dominated by the random initial weights. Parameters and float buffers (e.g. BatchNorm
running statistics) are averaged; integer buffers are copied.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def warmup_decay(decay: float, num_updates: int) -> float:
    """The decay of update number `num_updates` (0-based)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, over parameters and float buffers."""
    pairs = zip(target.state_dict().values(), source.state_dict().values(), strict=True)
    for t, s in pairs:
        if t.is_floating_point():
            t.lerp_(s.detach(), 1.0 - decay)
        else:
            t.copy_(s)


class EMA(nn.Module):
    """A frozen copy of `network` (`shadow`) pulled towards it after every optimisation step.

    The update count is a buffer, so a resumed run continues the same decay sequence bit
    for bit.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(network)
        self.shadow.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        return warmup_decay(self.decay, int(self.num_updates))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        ema_update(self.shadow, network, self.current_decay())
        self.num_updates += 1
