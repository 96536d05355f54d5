"""Exponential moving average of a network's weights, kept in the state dict."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """A frozen copy of `network` pulled towards it after every optimisation step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates, so short
    runs are not dominated by the random initial weights. The update count is a buffer, so a
    resumed run continues the same decay sequence bit for bit.
    """

    def __init__(self, network: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(network)
        self.shadow.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        decay = self.current_decay()
        for s, p in zip(self.shadow.parameters(), network.parameters(), strict=True):
            s.lerp_(p.detach(), 1.0 - decay)
        for s, b in zip(self.shadow.buffers(), network.buffers(), strict=True):
            s.copy_(b)
        self.num_updates += 1
