"""Mean cosine distance to the k nearest rows of a feature bank, searched in two stages.

The anomaly scores that read a network's features as a neighbour space (the GAN's `dknn`, the
ensemble's encoder kNN: docs/anomaly.md) keep the training images' unit-length features as an
fp16 bank saved with the weights. An exhaustive fp16 product of one image with a 54,000-row
bank is too slow to serve on a CPU (18.4 ms for 2,048 dimensions), so the search has two
stages: a coarse index (the bank projected on the leading eigenvectors of its second-moment
matrix, fp16, a deterministic function of the bank: derived at fit and saved with the weights)
hands `candidates` rows to an exact fp32 cosine, each image on its own (so a score never
depends on the batch it came in). A load checks the saved index against its bank
(`index_matches`) and derives it only where it is absent (files from before it was saved) or
does not match: deriving costs 3.9 s per 54,000-row bank on 2 cores, checking 1 ms.

It lives with the GAN, its first user, so that it is a dependency of the GAN's stages alone
(dvc.yaml); the ensemble's encoder-kNN view reuses it.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def coarse_index(bank: Tensor, dims: int) -> tuple[Tensor, Tensor]:
    """(projection (F, dims) fp32, coarse bank (N, dims) fp16) of an (N, F) fp16 `bank`: the
    `dims` leading eigenvectors of the second-moment matrix of every fourth row (fp64, in
    chunks: a load's peak memory), and the bank projected on them."""
    sample = bank[::4]
    moment = torch.zeros(bank.shape[1], bank.shape[1], dtype=torch.float64, device=bank.device)
    for i in range(0, sample.shape[0], 2048):
        chunk = sample[i : i + 2048].double()
        moment += chunk.T @ chunk
    _, vectors = torch.linalg.eigh(moment)  # ascending eigenvalues
    proj = vectors[:, -min(dims, bank.shape[1]) :].flip(1).float().contiguous()
    coarse = [bank[i : i + 8192].float() @ proj for i in range(0, bank.shape[0], 8192)]
    return proj, torch.cat(coarse).half()  # fp16: half the read


@torch.no_grad()
def index_matches(bank: Tensor, proj: Tensor, coarse: Tensor, dims: int, rows: int = 64) -> bool:
    """Whether (`proj`, `coarse`) is a coarse index of `bank` at `dims` dimensions: the shapes
    fit, `proj`'s columns are orthonormal and `rows` evenly spaced rows of `coarse` are those
    rows of the bank projected (to fp16's precision). A stale index (another bank's) or a
    damaged one fails; whether `proj` holds the leading eigenvectors is not re-derived."""
    n, f = bank.shape
    d = min(dims, f)
    if tuple(proj.shape) != (f, d) or tuple(coarse.shape) != (n, d):
        return False
    gram = proj.T.double() @ proj.double()
    if not torch.allclose(gram, torch.eye(d, dtype=torch.float64), atol=1e-4):
        return False
    if n == 0:
        return True
    idx = torch.linspace(0, n - 1, min(rows, n), device=bank.device).long()
    return bool(torch.allclose(coarse[idx].float(), bank[idx].float() @ proj, atol=2e-3, rtol=1e-2))


class IndexedBank:
    """Mixin for a model that keeps a neighbour bank and its coarse index as buffers: the bank
    (`BANK`) and the index (`DERIVED_STATE`: projection, coarse bank) are saved with the
    weights and take their saved shapes at load; a file without the index (saved before it
    was) still loads strictly, and `ensure_index` (run by models.io.load_model, and before any
    search) checks the index against the bank and derives it where it is absent or does not
    fit. The model says whether its bank is on (`_bank_on`), its index's dimensions
    (`_index_dims`), and derives the index (`_derive_index`, which sets `_index_checked`)."""

    BANK: str
    DERIVED_STATE: tuple[str, str]
    _index_checked = True  # the index fits the bank (nothing loaded since it was)

    def _bank_on(self) -> bool:
        raise NotImplementedError

    def _index_dims(self) -> int:
        raise NotImplementedError

    def _derive_index(self) -> None:
        raise NotImplementedError

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        names = (self.BANK, *self.DERIVED_STATE) if self._bank_on() else ()
        for name in names:
            saved = state_dict.get(prefix + name)
            if saved is not None:  # a bank's length is its training set's
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
                self._index_checked = False
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        for name in self.DERIVED_STATE if names else ():
            if prefix + name not in state_dict and prefix + name in missing_keys:
                missing_keys.remove(prefix + name)  # derived instead (ensure_index)

    @torch.no_grad()
    def ensure_index(self) -> None:
        """Derive the coarse index unless the one held fits the bank (`index_matches`)."""
        if not self._bank_on() or self._index_checked:
            return
        bank = getattr(self, self.BANK)
        proj, coarse = (getattr(self, name) for name in self.DERIVED_STATE)
        if bank.shape[0] and not index_matches(bank, proj, coarse, self._index_dims()):
            self._derive_index()
        self._index_checked = True


@torch.no_grad()
def neighbour_search(
    features: Tensor, bank: Tensor, proj: Tensor, coarse: Tensor, k: int, candidates: int
) -> tuple[Tensor, Tensor]:
    """((N,) mean 1 - cos, (N, k) rows): unit-length fp32 `features` (N, F) against their `k`
    nearest rows of the unit-length fp16 `bank`, among the `candidates` nearest by the coarse
    index; the rows nearest first."""
    m = min(candidates, bank.shape[0])
    distances, nearest = [], []
    for start in range(0, features.shape[0], 256):
        f = features[start : start + 256]
        rough = (f @ proj).half() @ coarse.T
        chosen = rough.float().topk(m, dim=1).indices
        for one, rows in zip(f, chosen, strict=True):  # one (m, F) product per image
            sims = (bank[rows].float() * one).sum(dim=1)
            top = sims.topk(k)
            distances.append(1.0 - top.values.mean())
            nearest.append(rows[top.indices])
    if not distances:
        return features.new_zeros(0), features.new_zeros(0, k, dtype=torch.long)
    return torch.stack(distances), torch.stack(nearest)


def nearest_rows(
    features: Tensor, bank: Tensor, proj: Tensor, coarse: Tensor, k: int, candidates: int
) -> Tensor:
    """(N, k) the rows of `neighbour_search`: the same neighbours, nearest first."""
    return neighbour_search(features, bank, proj, coarse, k, candidates)[1]


def mean_cosine_distance(
    features: Tensor, bank: Tensor, proj: Tensor, coarse: Tensor, k: int, candidates: int
) -> Tensor:
    """(N,) mean 1 - cos of unit-length fp32 `features` (N, F) to their `k` nearest rows of the
    unit-length fp16 `bank`, among the `candidates` nearest by the coarse index."""
    return neighbour_search(features, bank, proj, coarse, k, candidates)[0]
