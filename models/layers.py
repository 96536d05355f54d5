"""Building blocks the autoencoder and the VAE share (pure torch, no objective).

Each helper returns a list of layers in creation order, so a caller that wraps it in
`nn.Sequential(*...)` keeps the same parameter names and the same seeded initialisation
as if it had written the layers itself (weights saved before the helper existed still load).
"""

from __future__ import annotations

from torch import nn


def act() -> nn.Module:
    """The hidden activation of the conv and MLP stacks."""
    return nn.LeakyReLU(0.2)


def down_convs(channels: tuple[int, int]) -> list[nn.Module]:
    """(N, 1, 28, 28) -> (N, c2 * 7 * 7): two stride-2 convolutions, flattened."""
    c1, c2 = channels
    return [
        nn.Conv2d(1, c1, 4, stride=2, padding=1),  # 28 -> 14
        act(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # 14 -> 7
        act(),
        nn.Flatten(),
    ]


def up_convs(channels: tuple[int, int]) -> list[nn.Module]:
    """(N, c2, 7, 7) -> pixel logits (N, 1, 28, 28), mirroring `down_convs`."""
    c1, c2 = channels
    return [
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # 7 -> 14
        act(),
        nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # 14 -> 28
    ]
