"""Negative data augmentation for the discriminator (Sinha et al. 2021, *Negative data
augmentation*, ICLR): real digits rearranged into images that keep a digit's strokes, size and
place but not its shape, shown to D as fakes. D then has to learn what makes a digit a digit,
not only what makes a stroke image real, which is the question the discriminator-feature kNN
(`score: dknn`) asks of an unseen glyph.

Two kinds, both made from the real batch itself:
  jigsaw  the four 14 x 14 quadrants of a digit, in a random order other than their own
  stitch  one half of a digit (left or right, top or bottom, at random) joined to the other
          half of the next digit in the batch
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

from models import rng

NEGATIVES = ("jigsaw", "stitch")
_PERMUTATIONS = torch.tensor(list(itertools.permutations(range(4)))[1:])  # 23, not identity


def _quadrants(x: Tensor) -> Tensor:
    """(N, C, 28, 28) -> (N, 4, C, 14, 14): top-left, top-right, bottom-left, bottom-right."""
    n, c, h, w = x.shape
    q = x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 1, 3, 5)
    return q.reshape(n, 4, c, h // 2, w // 2)


def _from_quadrants(q: Tensor) -> Tensor:
    n, _, c, h, w = q.shape
    return q.reshape(n, 2, 2, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, 2 * h, 2 * w)


def jigsaw(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Each image's quadrants in one of the 23 orders that are not its own."""
    pick = rng.randint(len(_PERMUTATIONS), (x.shape[0],), generator, x.device)
    order = _PERMUTATIONS.to(x.device)[pick]  # (N, 4)
    q = _quadrants(x)
    index = order[:, :, None, None, None].expand_as(q)
    return _from_quadrants(torch.gather(q, 1, index))


def stitch(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One half of each image with the other half of the next image in the batch."""
    n, _, h, w = x.shape
    partner = x.roll(1, dims=0)
    vertical = rng.rand((n,), generator, x.device) < 0.5  # split down the middle, else across
    cols = torch.arange(w, device=x.device) >= w // 2
    rows = torch.arange(h, device=x.device) >= h // 2
    other = torch.where(
        vertical[:, None, None],
        cols[None, None, :].expand(n, h, w),
        rows[None, :, None].expand(n, h, w),
    )
    return torch.where(other[:, None], partner, x)


_MAKERS = {"jigsaw": jigsaw, "stitch": stitch}


def negative_batch(x: Tensor, kinds: tuple[str, ...], generator: torch.Generator | None) -> Tensor:
    """One negative per image of `x` (N, C, 28, 28), its kind drawn uniformly from `kinds`."""
    unknown = sorted(set(kinds) - set(_MAKERS))
    if unknown or not kinds:
        raise ValueError(f"unknown negative kind(s) {unknown or kinds}; known: {list(NEGATIVES)}")
    if len(kinds) == 1:
        return _MAKERS[kinds[0]](x, generator)
    which = rng.randint(len(kinds), (x.shape[0],), generator, x.device)
    out = x.clone()
    for i, kind in enumerate(kinds):
        made = _MAKERS[kind](x, generator)
        out = torch.where((which == i)[:, None, None, None], made, out)
    return out
